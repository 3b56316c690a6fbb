"""The HTTP face of device agents: one agent at the root, or many under /agents/{agent_id}, and batch routes."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.common.auth import require_token_dependency
from agents.common.errors import AgentError, NotFoundError, error_responses, install_error_handlers
from agents.common.metrics import mount_metrics
from agents.common.server import TELEMETRY_OFF
from agents.common.settings import DeviceSettings, StartupError, agent_token_from_env
from agents.common.state import StateStore
from agents.device.agent import DeviceAgent
from agents.device.fastpath import BatchFastPath
from agents.device.registration import (
    check_vtn_url,
    register_forever,
    registration_client,
    registration_ssl_context,
    vtn_client,
)
from agents.device.ven import DeviceVen, Vtn, client_secret_from_env
from models.schemas import (
    CYCLE_ID_PATTERN,
    AgentInfo,
    AgentStatus,
    AgentType,
    BatchCurtail,
    BatchCurtailResult,
    BatchError,
    BatchSimulate,
    BatchSimulateResult,
    CurtailCommand,
    CurtailResult,
    Health,
    HostInfo,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hosted:
    """The agents one process hosts, by id; ``single`` when it hosts exactly one (served at the root too)."""

    by_id: dict[str, DeviceAgent]
    host_id: str
    store: StateStore | None  # the one store they share, so a batch commits once

    @classmethod
    def of(cls, agents: list[DeviceAgent], settings: DeviceSettings, store: StateStore | None) -> Hosted:
        single = agents[0] if len(agents) == 1 else None
        host_id = (
            single.agent_id if single else f"{agents[0].agent_type.value}-agents-{settings.shard.replace('/', '-of-')}"
        )
        return cls({a.agent_id: a for a in agents}, host_id, store or (single.store if single else None))

    @property
    def agents(self) -> list[DeviceAgent]:
        return list(self.by_id.values())

    @property
    def single(self) -> DeviceAgent | None:
        return next(iter(self.by_id.values())) if len(self.by_id) == 1 else None

    @property
    def agent_type(self) -> AgentType:
        return next(iter(self.by_id.values())).agent_type

    def agent(self, agent_id: str) -> DeviceAgent:
        """The hosted agent ``agent_id``, or a 404 naming how many this process hosts."""
        agent = self.by_id.get(agent_id)
        if agent is None:
            raise NotFoundError(
                f"no agent {agent_id!r} here; this process hosts {len(self.by_id)} agents", self.host_id
            )
        return agent

    def simulate(self, body: BatchSimulate, cycle_id: str | None = None) -> BatchSimulateResult:
        """Step many hosted agents at once (one state commit for them all); ``cycle_id`` as DeviceAgent.simulate."""
        statuses, errors = [], []
        with _one_transaction(self.store):
            for agent_id in body.agent_ids:
                agent = self.by_id.get(agent_id)
                if agent is None:
                    errors.append(BatchError(agent_id=agent_id, error="not hosted here"))
                    continue
                agent.heard_from_grid()
                statuses.append(agent.simulate(cycle_id))
        return BatchSimulateResult(statuses=statuses, errors=errors)

    def curtail(self, body: BatchCurtail) -> BatchCurtailResult:
        """Command many hosted agents at once; each command as POST /curtail would take it."""
        results, errors = [], []
        with _one_transaction(self.store):
            for item in body.commands:
                command_id = item.command.command_id
                agent = self.by_id.get(item.agent_id)
                if agent is None:
                    errors.append(BatchError(agent_id=item.agent_id, command_id=command_id, error="not hosted here"))
                    continue
                agent.heard_from_grid()
                try:
                    results.append(agent.curtail(item.command))
                except AgentError as exc:
                    errors.append(BatchError(agent_id=item.agent_id, command_id=command_id, error=exc.message))
        return BatchCurtailResult(results=results, errors=errors)


#: ``X-Cycle-Id``, checked against its pattern (a 422 naming the header otherwise). Typed ``str`` with a None
#: default, not ``str | None``: the OpenAPI document then offers a string only, never a literal "null" header.
CycleIdHeader = Annotated[str, Header(pattern=CYCLE_ID_PATTERN, description="run:cycle of the grid agent")]


def build_device_app(
    agents: DeviceAgent | list[DeviceAgent],
    settings: DeviceSettings,
    register: bool = True,
    store: StateStore | None = None,
) -> FastAPI:
    """The HTTP face of one or many home or battery agents in one process.

    Each agent answers every endpoint of the contract under ``/agents/{agent_id}``; a process
    hosting one agent also answers them at the root, as the seed's agents always have. Batch
    endpoints step and command many hosted agents in one request.
    """
    hosted = Hosted.of([agents] if isinstance(agents, DeviceAgent) else list(agents), settings, store)
    ssl_context = registration_ssl_context(settings)
    single, kind = hosted.single, hosted.agent_type.value
    title = f"{kind} agent {hosted.host_id}" if single else f"{len(hosted.by_id)} {kind} agents ({hosted.host_id})"
    app = FastAPI(
        title=title,
        description=hosted.agents[0].description,
        lifespan=_lifespan(hosted, settings, register, owned_store=store, ssl_context=ssl_context),
        telemetry=TELEMETRY_OFF,
    )
    app.state.agent = single
    app.state.agents = hosted.by_id
    install_error_handlers(app, hosted.host_id)
    if single is not None:
        mount_metrics(app, single.metrics.registry)
    authorized = Depends(require_token_dependency(hosted.host_id))
    if single is not None:
        _add_agent_routes(app, "", lambda: single, authorized)
    _add_agent_routes(app, "/agents/{agent_id}", hosted.agent, authorized)
    _add_batch_routes(app, hosted, authorized)
    if single is None:
        _add_host_routes(app, hosted)
    fast = {
        "/batch/simulate": (BatchSimulate, lambda body, cycle_id: hosted.simulate(body, cycle_id)),
        "/batch/curtail": (BatchCurtail, lambda body, _: hosted.curtail(body)),
    }
    app.add_middleware(BatchFastPath, routes=fast, token=agent_token_from_env())
    return app


def _lifespan(
    hosted: Hosted,
    settings: DeviceSettings,
    register: bool,
    owned_store: StateStore | None,
    ssl_context: ssl.SSLContext | None = None,
):
    """Registration with the grid agent while the app runs; every agent's log and state closed after."""

    secret = client_secret_from_env() if settings.protocol == "openadr3" else None
    check_vtn_url(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if secret is not None:  # a VEN of the VTN instead of an agent the grid agent calls
            client = vtn_client(settings, ssl_context)
            assert settings.openadr3_client_id is not None, "the settings require it with --protocol openadr3"
            ven = DeviceVen(hosted.agents[0], settings, Vtn(client, settings.openadr3_client_id, secret))
            task = asyncio.create_task(ven.run()) if register else None
        else:
            client = registration_client(settings, ssl_context)
            app.state.registration = client  # a host whose grid agent moved (a Ray actor restarted) re-points it
            if register:
                task = asyncio.create_task(register_forever(hosted.agents, client, settings, settings.own_url))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # it died earlier; say so, and still close the logs and the state
                    logger.exception("%s: its registration or VEN task had stopped", hosted.host_id)
            await client.aclose()
            for agent in hosted.agents:
                agent.close()
            if owned_store is not None:
                owned_store.close()

    return lifespan


def _add_batch_routes(app: FastAPI, hosted: Hosted, authorized: Any) -> None:
    """``POST /batch/simulate`` and ``POST /batch/curtail``: many hosted agents in one request."""

    @app.post(
        "/batch/simulate",
        response_model=BatchSimulateResult,
        dependencies=[authorized],
        responses=error_responses(400, 401, 422),
    )
    async def batch_simulate(body: BatchSimulate, x_cycle_id: CycleIdHeader = None) -> Response:
        """Step many hosted agents at once (one state commit for them all), at most once a cycle (``X-Cycle-Id``)."""
        return Response(content=hosted.simulate(body, x_cycle_id).to_json(), media_type="application/json")

    @app.post(
        "/batch/curtail",
        response_model=BatchCurtailResult,
        dependencies=[authorized],
        responses=error_responses(400, 401, 422),
    )
    async def batch_curtail(body: BatchCurtail) -> Response:
        """Command many hosted agents at once; each command as POST /curtail would take it."""
        return Response(content=hosted.curtail(body).to_json(), media_type="application/json")


def _add_host_routes(app: FastAPI, hosted: Hosted) -> None:
    """``GET /`` and ``GET /health`` of a process hosting many agents."""

    @app.get("/", response_model=HostInfo)
    async def host_info() -> HostInfo:
        """What this process hosts."""
        return HostInfo(
            host_id=hosted.host_id,
            agent_type=hosted.agent_type,
            agent_ids=list(hosted.by_id),
            endpoints=HOST_ENDPOINTS,
        )

    @app.get("/health", response_model=Health)
    async def host_health() -> Health:
        """Liveness of the process."""
        return Health(agent_id=hosted.host_id, agent_type=hosted.agent_type)


def create_device_app(
    settings: DeviceSettings,
    make_agent: Callable[[DeviceSettings, StateStore | None], DeviceAgent],
    entries: Callable[[Any], list[Any]],
    settings_for: Callable[[DeviceSettings, Any], DeviceSettings],
    kind: str,
    register: bool = True,
) -> FastAPI:
    """One agent from the settings, or, with ``--scenario``, this process's shard of the scenario's agents.

    ``entries(scenario)`` lists the scenario's agents of this kind; ``settings_for(settings, entry)``
    gives one of them its own settings. Bad data or settings raise StartupError.
    """
    if settings.scenario is None:
        try:
            return build_device_app(make_agent(settings, None), settings, register=register)
        except ValueError as exc:
            raise StartupError(f"{kind} agent {settings.agent_id}: {exc}") from exc
    from agents.common.scenario import load_scenario  # the scenario module imports settings; keep start-up light

    i, n = settings.shard_index
    mine = entries(load_scenario(settings.scenario))[i::n] if i < n else []
    if not mine:
        raise StartupError(f"{settings.scenario}: shard {settings.shard} has no {kind} agents")
    if len(mine) > settings.max_agents_per_process:
        raise StartupError(
            f"{settings.scenario}: shard {settings.shard} has {len(mine)} {kind} agents, over "
            f"--max-agents-per-process {settings.max_agents_per_process}"
        )
    try:
        store = StateStore(settings.state_dir, f"{kind}-agents-{i}-of-{n}", fresh=settings.fresh)
    except (OSError, sqlite3.Error) as exc:
        raise StartupError(f"cannot keep state in {settings.state_dir}: {exc}") from exc
    try:
        agents = [make_agent(settings_for(settings, entry), store) for entry in mine]
    except ValueError as exc:
        store.close()
        raise StartupError(f"{kind} agents of {settings.scenario}: {exc}") from exc
    return build_device_app(agents, settings, register=register, store=store)


def own_data(settings: DeviceSettings, entry: Any) -> dict[str, Any]:
    """Settings for a scenario entry that names its own data: its file (relative paths from the scenario's folder)
    and its row in a profile array. Empty when it names none, so the process's data file stands."""
    if entry.data_file is None:
        return {}
    path = Path(entry.data_file)
    if not path.is_absolute() and settings.scenario is not None:
        path = settings.scenario.parent / path
    return {"data_file": path, "data_row": entry.data_row}


AGENT_ENDPOINTS = [
    "GET /",
    "GET /health",
    "GET /status",
    "POST /simulate",
    "POST /curtail",
    "GET /metrics",
    "GET /docs",
]
HOST_ENDPOINTS = [
    "GET /",
    "GET /health",
    "GET /agents/{agent_id}/ (and /health, /status, /metrics, POST /simulate, POST /curtail)",
    "POST /batch/simulate",
    "POST /batch/curtail",
    "GET /docs",
]


def _add_agent_routes(app: FastAPI, prefix: str, resolve: Callable[..., DeviceAgent], authorized: Any) -> None:
    """The contract's endpoints for one agent, under ``prefix``."""
    hosted = Depends(resolve)  # a default, not an Annotated alias: this module's annotations are strings
    tag = ["this agent"] if prefix == "" else ["hosted agents"]
    by_path = (404, 422) if prefix else ()  # /agents/{agent_id}/...: an agent this process does not host

    @app.get(f"{prefix}/", response_model=AgentInfo, tags=tag, responses=error_responses(*by_path))
    async def info(agent: DeviceAgent = hosted) -> AgentInfo:
        """What this agent is and what it serves."""
        return AgentInfo(
            agent_id=agent.agent_id,
            agent_type=agent.agent_type,
            description=agent.description,
            endpoints=AGENT_ENDPOINTS,
        )

    @app.get(f"{prefix}/health", response_model=Health, tags=tag, responses=error_responses(*by_path))
    async def health(agent: DeviceAgent = hosted) -> Health:
        """Liveness."""
        return Health(agent_id=agent.agent_id, agent_type=agent.agent_type)

    @app.get(f"{prefix}/status", response_model=AgentStatus, tags=tag, responses=error_responses(*by_path))
    async def status(agent: DeviceAgent = hosted) -> AgentStatus:
        """The agent's current step, modules, flexibility and who is in control."""
        agent.check_fail_safe()
        return agent.status()

    @app.post(
        f"{prefix}/simulate",
        response_model=AgentStatus,
        dependencies=[authorized],
        tags=tag,
        responses=error_responses(401, *by_path, 409, 422),
    )
    async def simulate(
        agent: DeviceAgent = hosted,
        x_agent_id: Annotated[str | None, Header()] = None,
        x_cycle_id: CycleIdHeader = None,
    ) -> AgentStatus:
        """Advance one step, run the local policy and re-apply commands still holding; at most once a cycle
        when the grid agent says which (``X-Cycle-Id``: a late copy of a call it gave up on steps nothing)."""
        agent.check_addressee(x_agent_id)
        agent.heard_from_grid()
        return agent.simulate(x_cycle_id)

    @app.post(
        f"{prefix}/curtail",
        response_model=CurtailResult,
        dependencies=[authorized],
        tags=tag,
        responses=error_responses(400, 401, *by_path, 409, 422),
    )
    async def curtail(
        command: CurtailCommand, agent: DeviceAgent = hosted, x_agent_id: Annotated[str | None, Header()] = None
    ) -> CurtailResult:
        """Shift the operating point by power_kw through action (for duration_s or until valid_until)."""
        agent.check_addressee(x_agent_id)
        agent.heard_from_grid()
        return agent.curtail(command)

    if prefix:
        # Response, not PlainTextResponse, as the class: the 404 and 422 answers are JSON, only the 200 is text
        @app.get(
            f"{prefix}/metrics",
            tags=tag,
            response_class=Response,
            responses={200: {"content": {"text/plain": {}}}, **error_responses(*by_path)},
        )
        async def metrics(agent: DeviceAgent = hosted) -> PlainTextResponse:
            """Prometheus metrics of one hosted agent."""
            return PlainTextResponse(generate_latest(agent.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@contextmanager
def _one_transaction(store: StateStore | None) -> Iterator[None]:
    if store is None:
        yield
    else:
        with store.batch():
            yield
