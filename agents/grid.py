"""The grid agent's app: registration, coordination cycles, status, metrics and the dashboard over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import Depends, FastAPI

from agents.common.auth import require_token_dependency
from agents.common.errors import NotFoundError, error_responses, install_error_handlers
from agents.common.metrics import mount_metrics
from agents.common.settings import GridSettings, StartupError, openai_settings_from_env
from agents.cycle.dashboard import dashboard_router
from agents.cycle.grid_agent import GridAgent, resolve_planner
from agents.cycle.peers import make_peers
from agents.planners import PLANNERS
from models.schemas import (
    AgentId,
    AgentInfo,
    AgentRecord,
    AgentReport,
    AgentType,
    CoordinateBatch,
    CoordinationBatch,
    CoordinationResult,
    ErrorBody,
    GridStatus,
    Health,
    NetworkState,
    Registrations,
    RegistrationsResult,
)


GRID_ENDPOINTS = [
    "GET /",
    "GET /health",
    "GET /status",
    "GET /agents",
    "GET /network",
    "POST /agents/{agent_id}/status",
    "POST /coordinate",
    "GET /metrics",
    "GET /dashboard",
    "GET /docs",
]


def create_app(settings: GridSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the grid agent's app; ``transport`` lets tests route its calls to in-process agents."""
    known = sorted({*PLANNERS, "ai"})
    if resolve_planner(settings.planner, openai_settings_from_env()[0]) not in known:
        raise StartupError(f"planner {settings.planner!r} is not available here (known: {', '.join(known)})")
    agent = GridAgent(settings)
    app = FastAPI(
        title="grid agent",
        description="Watches transformers and coordinates curtailment.",
        lifespan=_lifespan(agent, settings, transport),
    )
    app.state.agent = agent
    install_error_handlers(app, agent.agent_id)
    mount_metrics(app, agent.metrics.registry)
    app.include_router(dashboard_router(agent))
    authorized = Depends(require_token_dependency(agent.agent_id))
    _add_read_routes(app, agent)
    _add_network_routes(app, agent)
    _add_registration_routes(app, agent, authorized)
    _add_coordination_routes(app, agent, authorized)
    return app


def _lifespan(agent: GridAgent, settings: GridSettings, transport: httpx.AsyncBaseTransport | None):
    """The client to other agents opens with the app and closes with it, with the log."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        agent.peers = make_peers(settings.step_timeout_s, settings.max_concurrency, transport)
        try:
            yield
        finally:
            await agent.peers.aclose()
            if agent.ai is not None and agent.ai.client is not None:
                await agent.ai.client.close()
            agent.close()

    return lifespan


def _add_read_routes(app: FastAPI, agent: GridAgent) -> None:
    """What anyone may read: what this is, liveness, status and the registered agents."""

    @app.get("/", response_model=AgentInfo)
    async def info() -> AgentInfo:
        """What this agent is and what it serves."""
        transformers = ", ".join(agent.registry.transformer_ids()) or "none yet"
        return AgentInfo(
            agent_id=agent.agent_id,
            agent_type=AgentType.grid,
            description=f"Grid agent; planner {agent.planner}; transformers {transformers}",
            endpoints=GRID_ENDPOINTS,
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


def _add_network_routes(app: FastAPI, agent: GridAgent) -> None:
    """The network's buses, lines and transformers as of the last power flow (with ``--network``)."""
    no_network = {404: {"model": ErrorBody, "description": "The grid agent runs without --network"}}

    @app.get("/network", response_model=NetworkState, responses=no_network)
    async def network() -> NetworkState:
        """Every bus, line and transformer as of the last AC power flow after acting."""
        if agent.network is None:
            raise NotFoundError("no network: start the grid agent with --network CODE_OR_FILE", agent.agent_id)
        return agent.network.state()


def _add_registration_routes(app: FastAPI, agent: GridAgent, authorized: Any) -> None:
    """Agents register themselves and heartbeat, one at a time or a whole process at once."""

    @app.post(
        "/agents/{agent_id}/status",
        response_model=AgentRecord,
        dependencies=[authorized],
        response_model_exclude={"last_status"},
        responses=error_responses(400, 401, 422),
    )
    async def report(agent_id: AgentId, body: AgentReport) -> AgentRecord:
        """Register an agent, or take its heartbeat."""
        return agent.registry.register(agent_id, body)

    @app.post(
        "/registrations",
        response_model=RegistrationsResult,
        dependencies=[authorized],
        responses=error_responses(400, 401, 422),
    )
    async def registrations(body: Registrations) -> RegistrationsResult:
        """Register, or take the heartbeat of, many agents of one process at once."""
        for report in body.reports:
            agent.registry.register(report.status.agent_id, report)
        return RegistrationsResult(registered=len(body.reports))


def _add_coordination_routes(app: FastAPI, agent: GridAgent, authorized: Any) -> None:
    """``POST /coordinate`` (one cycle) and ``POST /coordinate/batch`` (several back to back)."""

    @app.post(
        "/coordinate/batch",
        response_model=CoordinationBatch,
        dependencies=[authorized],
        responses=error_responses(400, 401, 422),
    )
    async def coordinate_batch(body: CoordinateBatch) -> CoordinationBatch:
        """Run several cycles back to back (as fast as possible) and answer every cycle's record."""
        return CoordinationBatch(results=[await agent.coordinate() for _ in range(body.cycles)])

    @app.post("/coordinate", response_model=CoordinationResult, dependencies=[authorized], responses=error_responses(401))
    async def coordinate() -> CoordinationResult:
        """Run one coordination cycle: step, assess, plan, act, record."""
        return await agent.coordinate()
