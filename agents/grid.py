"""The grid agent's app: registration, coordination cycles, status, metrics and the dashboard over HTTP."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Query, Response

from agents.common.auth import require_token_dependency
from agents.common.errors import NotFoundError, error_responses, install_error_handlers
from agents.common.metrics import mount_metrics
from agents.common.server import TELEMETRY_OFF, json_response
from agents.common.settings import GridSettings, StartupError, openai_settings_from_env
from agents.common.tls import client_ssl_context
from agents.cycle.dashboard import dashboard_router
from agents.cycle.grid_agent import GridAgent, resolve_planner
from agents.cycle.peers import make_peers
from agents.cycle.runs import RESULTS_KEPT, Runs, RunStore
from agents.openadr3.clients import ClientsError, Tokens, load_clients
from agents.openadr3.feeder import FeederBridge
from agents.openadr3.routes import mount_vtn
from agents.openadr3.store import ObjectStore
from agents.openadr3.vtn import BASE_PATH
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
    RegistrationResult,
    Registrations,
    RegistrationsResult,
    RunInfo,
    RunResults,
    RunStart,
)

GRID_ENDPOINTS = [
    "GET /",
    "GET /health",
    "GET /status",
    "GET /agents",
    "GET /network",
    "POST /agents/{agent_id}/status",
    "POST /coordinate",
    "POST /coordinate/batch",
    "POST /runs",
    "GET /runs",
    "GET /runs/{run_id}",
    "GET /runs/{run_id}/results",
    "DELETE /runs/{run_id}",
    "GET /metrics",
    "GET /dashboard",
    "GET /docs",
]


def create_app(settings: GridSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the grid agent's app; ``transport`` lets tests route its calls to in-process agents."""
    known = sorted({*PLANNERS, "ai"})
    if resolve_planner(settings.planner, openai_settings_from_env()[0]) not in known:
        raise StartupError(f"planner {settings.planner!r} is not available here (known: {', '.join(known)})")
    ssl_context = client_ssl_context(settings)
    tokens = _openadr3_tokens(settings)
    vtn_stores: list[ObjectStore] = []  # closed by the lifespan
    agent = GridAgent(settings)
    store = RunStore(settings.state_dir, agent.agent_id)
    if settings.resume_cycles:  # a restarted grid agent: its numbers go on, and a cycle cut short keeps its own
        agent.cycle = store.last_cycle()
        agent.run_id = store.run_id(agent.run_id)
        agent.history.restore(store.history(agent.history.limit))  # and the dashboard draws on from where it was
    else:
        store.save_run_id(agent.run_id)
        store.clear_history()
    agent.history.keep = lambda row: store.save_history_row(row, agent.history.limit)
    agent.on_cycle_start = store.save_cycle  # a commit a cycle (tens of us): a restart must know the last cycle
    runs = Runs(agent, store, settings.coordinate_wait_s)
    app = FastAPI(
        title="grid agent",
        description="Watches transformers and coordinates curtailment.",
        lifespan=_lifespan(agent, runs, settings, transport, ssl_context, vtn_stores),
        telemetry=TELEMETRY_OFF,
    )
    app.state.agent = agent
    app.state.runs = runs
    if tokens is not None:
        app.state.openadr3 = mount_vtn(app, settings.state_dir, tokens)
        vtn_stores.append(app.state.openadr3.store)
        scheme = "https" if settings.tls_on else "http"
        vtn_url = f"{scheme}://{settings.host}:{settings.port}{BASE_PATH}"
        agent.vens = FeederBridge(app.state.openadr3, agent.registry, agent.calls, vtn_url, agent.agent_id)
    install_error_handlers(app, agent.agent_id)
    mount_metrics(app, agent.metrics.registry)
    app.include_router(dashboard_router(agent))
    authorized = Depends(require_token_dependency(agent.agent_id))
    _add_read_routes(app, agent)
    _add_network_routes(app, agent)
    _add_registration_routes(app, agent, authorized)
    _add_coordination_routes(app, agent, authorized)
    _add_run_routes(app, runs, authorized)
    return app


def _openadr3_tokens(settings: GridSettings) -> Tokens | None:
    """With ``--openadr3``, the VTN's clients and tokens (a StartupError without clients); else None."""
    if not settings.openadr3:
        return None
    try:
        return Tokens(load_clients(settings.openadr3_clients))
    except (ClientsError, OSError) as exc:
        raise StartupError(str(exc)) from exc


def _lifespan(
    agent: GridAgent,
    runs: Runs,
    settings: GridSettings,
    transport: httpx.AsyncBaseTransport | None,
    ssl_context: ssl.SSLContext | None,
    vtn_stores: list[ObjectStore],
):
    """The client to other agents (verifying them with ``ssl_context``) opens with the app and closes with it,
    with the log and the VTN's objects; a run in flight ends first."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        agent.peers = make_peers(settings.step_timeout_s, settings.max_concurrency, transport, ssl_context)
        try:
            yield
        finally:
            await runs.close()
            if agent.vens is not None:
                await agent.vens.aclose()
            await agent.peers.aclose()
            await agent.planning.aclose()
            agent.close()
            for store in vtn_stores:
                store.close()

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
        response_model=RegistrationResult,
        dependencies=[authorized],
        response_model_exclude={"last_status"},
        responses=error_responses(400, 401, 422),
    )
    async def report(agent_id: AgentId, body: AgentReport) -> RegistrationResult:
        """Register an agent (its URL checked when new or changed: 422 if unreachable), or take its heartbeat;
        the answer carries the feeder's clock, by which an agent with no saved state starts at the feeder's step."""
        (record,) = await agent.registry.admit([(agent_id, body)])
        return RegistrationResult(**dict(record), feeder_clock=agent.feeder_clock())

    @app.post(
        "/registrations",
        response_model=RegistrationsResult,
        dependencies=[authorized],
        responses=error_responses(400, 401, 422),
    )
    async def registrations(body: Registrations) -> RegistrationsResult:
        """Register, or take the heartbeat of, many agents of one process at once (each new URL probed once); the
        answer carries the feeder's clock, as for one agent."""
        await agent.registry.admit((report.status.agent_id, report) for report in body.reports)
        return RegistrationsResult(registered=len(body.reports), feeder_clock=agent.feeder_clock())


#: What a 409 from the routes that run cycles means.
_FEEDER_BUSY = "A run holds the feeder (or another request held it past --coordinate-wait-s); the message says which"
_RUN_BUSY = "A run holds the feeder already (one at a time), or a request held it past the wait"
RunsLimit = Annotated[int, Query(ge=1, le=1000, description="How many, newest first")]
Since = Annotated[int, Query(ge=0, description="The cycles numbered after this one (a result's `cycle`)")]
ResultsLimit = Annotated[int, Query(ge=1, le=RESULTS_KEPT, description="At most this many, oldest first")]


def _add_coordination_routes(app: FastAPI, agent: GridAgent, authorized: Any) -> None:
    """``POST /coordinate`` (one cycle) and ``POST /coordinate/batch`` (a few back to back).

    Both wait for the feeder at most ``--coordinate-wait-s``, then answer 409 naming who holds it.
    """
    wait_s = agent.settings.coordinate_wait_s

    @app.post(
        "/coordinate/batch",
        response_model=CoordinationBatch,
        dependencies=[authorized],
        responses=error_responses(400, 401, 409, 422, descriptions={409: _FEEDER_BUSY}),
    )
    async def coordinate_batch(body: CoordinateBatch) -> CoordinationBatch:
        """Run up to 100 cycles back to back and answer every cycle's record (longer runs: POST /runs)."""
        results: list[CoordinationResult] = []

        def holder() -> str:
            return f"a POST /coordinate/batch holds it ({len(results)} of {body.cycles} cycles done)"

        async with agent.feeder(holder, wait_s):
            for _ in range(body.cycles):
                results.append(await agent.run_cycle())
        return CoordinationBatch(results=results)

    @app.post(
        "/coordinate",
        response_model=CoordinationResult,
        dependencies=[authorized],
        responses=error_responses(401, 409, descriptions={409: _FEEDER_BUSY}),
    )
    async def coordinate() -> CoordinationResult:
        """Run one coordination cycle: step, assess, plan, act, record."""
        return await agent.coordinate(wait_s)


def _add_run_routes(app: FastAPI, runs: Runs, authorized: Any) -> None:
    """Long runs as jobs: ``POST /runs`` answers at once and the run holds the feeder until it ends."""
    no_run = {404: "No run of this id here (GET /runs lists them)"}

    @app.post(
        "/runs",
        status_code=202,
        response_model=RunInfo,
        dependencies=[authorized],
        responses=error_responses(400, 401, 409, 422, descriptions={409: _RUN_BUSY}),
    )
    async def start_run(body: RunStart, response: Response) -> RunInfo:
        """Start a run of cycles back to back; answers at once, follow it at GET /runs/{run_id}."""
        info = await runs.start(body.cycles)
        response.headers["Location"] = f"/runs/{info.run_id}"
        return info

    @app.get("/runs", response_model=list[RunInfo], responses=error_responses(422))
    async def list_runs(limit: RunsLimit = 100) -> list[RunInfo]:
        """The latest runs, newest first."""
        return runs.list(limit)

    @app.get("/runs/{run_id}", response_model=RunInfo, responses=error_responses(404, descriptions=no_run))
    async def get_run(run_id: str) -> RunInfo:
        """A run's status, cycles done, times and error."""
        return runs.get(run_id)

    @app.get(
        "/runs/{run_id}/results", response_model=RunResults, responses=error_responses(404, 422, descriptions=no_run)
    )
    async def run_results(run_id: str, since: Since = 0, limit: ResultsLimit = RESULTS_KEPT) -> Response:
        """The run's cycle results after cycle ``since`` that are still kept (the latest run's last 1,000)."""
        return json_response(runs.results(run_id, since, limit))

    @app.delete(
        "/runs/{run_id}",
        response_model=RunInfo,
        dependencies=[authorized],
        responses=error_responses(401, 404, descriptions=no_run),
    )
    async def stop_run(run_id: str) -> RunInfo:
        """Stop a run after the cycle in flight; answers the run as it ended (a finished run as it is)."""
        return await runs.stop(run_id)
