"""The grid agent's app: registration, coordination cycles, status, metrics and the dashboard over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import Depends, FastAPI

from agents.common.auth import require_token_dependency
from agents.common.errors import error_responses, install_error_handlers
from agents.common.metrics import mount_metrics
from agents.common.settings import GridSettings, StartupError, openai_settings_from_env
from agents.cycle.dashboard import dashboard_router
from agents.cycle.grid_agent import GridAgent, resolve_planner
from agents.cycle.peers import make_peers
from agents.planners import PLANNERS
from models.schemas import (
    AgentInfo,
    AgentRecord,
    AgentReport,
    AgentType,
    CoordinateBatch,
    CoordinationBatch,
    CoordinationResult,
    GridStatus,
    Health,
    Registrations,
    RegistrationsResult,
)


def create_app(settings: GridSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the grid agent's app; ``transport`` lets tests route its calls to in-process agents."""
    if resolve_planner(settings.planner, openai_settings_from_env()[0]) not in {*PLANNERS, "ai"}:
        raise StartupError(f"planner {settings.planner!r} is not available here (known: {', '.join(sorted({*PLANNERS, 'ai'}))})")
    agent = GridAgent(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        agent.peers = make_peers(settings.step_timeout_s, settings.max_concurrency, transport)
        try:
            yield
        finally:
            await agent.peers.aclose()
            await agent.planning.aclose()
            agent.close()

    app = FastAPI(title="grid agent", description="Watches transformers and coordinates curtailment.", lifespan=lifespan)
    app.state.agent = agent
    install_error_handlers(app, agent.agent_id)
    mount_metrics(app, agent.metrics.registry)
    app.include_router(dashboard_router(agent))
    Authorized = Depends(require_token_dependency(agent.agent_id))

    @app.get("/", response_model=AgentInfo)
    async def info() -> AgentInfo:
        """What this agent is and what it serves."""
        return AgentInfo(
            agent_id=agent.agent_id,
            agent_type=AgentType.grid,
            description=f"Grid agent; planner {agent.planner}; transformers {', '.join(agent.registry.transformer_ids()) or 'none yet'}",
            endpoints=["GET /", "GET /health", "GET /status", "GET /agents", "POST /agents/{agent_id}/status", "POST /coordinate", "GET /metrics", "GET /dashboard", "GET /docs"],
        )

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness."""
        return Health(agent_id=agent.agent_id, agent_type=AgentType.grid)

    @app.get("/status", response_model=GridStatus)
    async def status() -> GridStatus:
        """Transformers as of the last cycle, registered agents, the planner."""
        return agent.status()

    @app.get("/agents", response_model=list[AgentRecord], response_model_exclude={"__all__": {"last_status"}})
    async def agents() -> list[AgentRecord]:
        """Every registered agent and whether it is healthy."""
        return agent.agents()

    @app.post("/agents/{agent_id}/status", response_model=AgentRecord, dependencies=[Authorized], response_model_exclude={"last_status"}, responses=error_responses(400, 401, 422))
    async def report(agent_id: str, body: AgentReport) -> AgentRecord:
        """Register an agent, or take its heartbeat."""
        return agent.registry.register(agent_id, body)

    @app.post("/registrations", response_model=RegistrationsResult, dependencies=[Authorized], responses=error_responses(400, 401, 422))
    async def registrations(body: Registrations) -> RegistrationsResult:
        """Register, or take the heartbeat of, many agents of one process at once."""
        for report in body.reports:
            agent.registry.register(report.status.agent_id, report)
        return RegistrationsResult(registered=len(body.reports))

    @app.post("/coordinate/batch", response_model=CoordinationBatch, dependencies=[Authorized], responses=error_responses(400, 401, 422))
    async def coordinate_batch(body: CoordinateBatch) -> CoordinationBatch:
        """Run several cycles back to back (as fast as possible) and answer every cycle's record."""
        return CoordinationBatch(results=[await agent.coordinate() for _ in range(body.cycles)])

    @app.post("/coordinate", response_model=CoordinationResult, dependencies=[Authorized], responses=error_responses(401))
    async def coordinate() -> CoordinationResult:
        """Run one coordination cycle: step, assess, plan, act, record."""
        return await agent.coordinate()

    return app
