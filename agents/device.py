"""What home and battery agents share: the step/curtail state machine and its HTTP app."""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Header
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from agents.csvlog import CsvLogWriter
from agents.data import TimeSeries
from agents.errors import AgentError, ConflictError, NotFoundError, UnauthorizedError, error_responses, install_error_handlers
from agents.metrics import DeviceMetrics, mount_metrics
from agents.settings import DeviceSettings, StartupError, agent_token_from_env
from agents.state import StateStore
from models.devices import POWER_TOLERANCE_KW, BatteryModule
from models.schemas import (
    ActiveCommand,
    AgentInfo,
    AgentReport,
    BatchCurtail,
    BatchCurtailResult,
    BatchError,
    BatchSimulate,
    BatchSimulateResult,
    HostInfo,
    AgentStatus,
    AgentType,
    BatteryStatus,
    CommandStatus,
    CurtailAction,
    CurtailCommand,
    CurtailResult,
    Flexibility,
    Health,
)

logger = logging.getLogger(__name__)

#: How many answered command ids an agent remembers for idempotency.
SEEN_COMMANDS_LIMIT = 10_000

STEP_LOG_COLUMNS = (
    "step",
    "timestamp",
    "net_power_kw",
    "solar_available_kw",
    "solar_output_kw",
    "solar_curtailed_kw",
    "load_demand_kw",
    "load_served_kw",
    "load_shed_kw",
    "battery_power_kw",
    "battery_soc_fraction",
    "price_per_kwh",
    "temp_air_c",
    "commands",
)


class DeviceAgent:
    """A home or storage agent without its transport: steps through data, applies commands.

    Subclasses set ``agent_type`` and implement ``_begin_step`` (the local policy) and
    ``_apply`` (one command's physics). Everything here runs on the event loop without
    awaiting, so each request sees and leaves a consistent state.
    """

    agent_type: AgentType
    description: str = ""

    def __init__(self, settings: DeviceSettings, data: TimeSeries, battery: BatteryModule | None, store: StateStore | None = None) -> None:
        self.settings = settings
        self.agent_id = settings.agent_id
        self.data = data
        self.battery = battery
        self.start_index = _start_index(data, settings.start) if settings.start else 0
        self.step = 0
        self.logged_step = 0
        self.row: dict[str, float] = {}
        self.commands_this_step = 0
        self._status: AgentStatus | None = None
        self.active: dict[str, ActiveCommand] = {}
        self.control_reason: str | None = None
        self.last_grid_contact: float | None = None  # time.monotonic() of the last word from the grid agent
        self._seen: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._unsaved: dict[str, dict[str, Any]] = {}
        self.metrics = DeviceMetrics(self.status)
        try:
            self.own_store = store is None  # a process hosting many agents shares one store
            self.store = store if store is not None else StateStore(settings.state_dir, self.agent_id, fresh=settings.fresh)
            self.log = CsvLogWriter(settings.log_dir / f"{self.agent_id}_log.csv", STEP_LOG_COLUMNS, fresh=settings.fresh)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"agent {self.agent_id}: cannot keep its state in {settings.state_dir} or its log in {settings.log_dir}: {exc}") from exc
        self._restore()
        last_logged = self.log.last_value("step")
        if last_logged and last_logged.isdigit() and int(last_logged) <= self.step:
            # a kill after a row was written but before the next commit: the log, not the state, knows it is written
            self.logged_step = max(self.logged_step, int(last_logged))

    # -- state -------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Resume where the saved state left off: same step, same SoC, same operating point."""
        saved = self.store.load(self.agent_id)
        self._seen.update(self.store.commands(self.agent_id, SEEN_COMMANDS_LIMIT))
        if not saved:
            return
        self.step = int(saved["step"])
        self.logged_step = int(saved.get("logged_step", self.step - 1))
        self.start_index = int(saved.get("start_index", self.start_index))
        self.commands_this_step = int(saved.get("commands_this_step", 0))
        self.active = {c["command_id"]: ActiveCommand.model_validate(c) for c in saved.get("active_commands", [])}
        self.control_reason = saved.get("control_reason")
        if self.battery is not None and saved.get("soc_start_fraction") is not None:
            self.battery.soc_fraction = float(saved["soc_start_fraction"])
            self.battery.begin_step()
        if self.step > 0:
            self.row = self._read_row(self.start_index + self.step - 1)
            self._begin_step(self.row)
            self._restore_operating_point(saved)
        logger.info("%s: resumed at step %d from %s", self.agent_id, self.step, self.store.path)

    def _operating_point(self) -> dict[str, Any]:
        """What commands changed this step, so that a restart restores it."""
        if self.battery is None:
            return {}
        return {"soc_start_fraction": self.battery.soc_start_fraction, "battery_power_kw": self.battery.power_kw}

    def _restore_operating_point(self, saved: dict[str, Any]) -> None:
        if self.battery is not None and saved.get("battery_power_kw") is not None:
            self.battery.set_power(float(saved["battery_power_kw"]))

    def current_status(self) -> AgentStatus:
        """``status()``, built once per change of state: a step is reported, logged and answered from one object."""
        if self._status is None:
            self._status = self.status()
        return self._status

    def _save(self) -> None:
        self._status = None  # every change of state is saved, so here the cached status goes stale
        state = {
            "step": self.step,
            "logged_step": self.logged_step,
            "start_index": self.start_index,
            "commands_this_step": self.commands_this_step,
            "active_commands": [c.model_dump(mode="json") for c in self.active.values()],
            "control_reason": self.control_reason,
            **self._operating_point(),
        }
        self.store.save(self.agent_id, state, self._unsaved)
        self._unsaved = {}

    # -- the step ----------------------------------------------------------------------------
    @property
    def timestamp(self) -> datetime | None:
        """Simulated time of the current step; None before the first."""
        return self.data.timestamp(self.start_index + self.step - 1) if self.step > 0 else None

    def heard_from_grid(self) -> None:
        """The grid agent called, or answered a heartbeat."""
        self.last_grid_contact = time.monotonic()

    def check_fail_safe(self) -> bool:
        """Drop the grid agent's commands and return to local policy if it has been silent too long."""
        if self.last_grid_contact is None or not (self.active or self.commands_this_step):
            return False
        silent_s = time.monotonic() - self.last_grid_contact
        if silent_s <= self.settings.fail_safe_after_s:
            return False
        self._revert(f"fail-safe: no word from the grid agent for {silent_s:.0f} s")
        return True

    def _revert(self, reason: str) -> None:
        """Back to the local policy for this step: active commands dropped, the step re-planned locally."""
        dropped = len(self.active) + self.commands_this_step
        self.active.clear()
        self.commands_this_step = 0
        if self.step > 0:
            self._begin_step(self.row)  # the battery re-plans from the SoC the step began with
        self.control_reason = reason
        self._save()
        logger.warning("%s step %d: %s; dropped %d command(s), back on local policy", self.agent_id, self.step, reason, dropped)

    def simulate(self) -> AgentStatus:
        """Advance one step through the data, run the local policy, then re-apply commands still holding."""
        self._write_log_row()
        self.step += 1
        self.row = self._read_row(self.start_index + self.step - 1)
        self.commands_this_step = 0
        if self.battery is not None:
            self.battery.begin_step()
        self._begin_step(self.row)
        now = self.timestamp
        for command_id, command in list(self.active.items()):
            if command.valid_until <= now:
                del self.active[command_id]
                self.control_reason = f"command {command_id} ended at {command.valid_until.isoformat()}"
                continue
            applied, _ = self._apply(command.action, command.power_kw)
            self.commands_this_step += applied > POWER_TOLERANCE_KW
        self._save()
        return self.current_status()

    def _read_row(self, index: int) -> dict[str, float]:
        """The data this agent sees at row ``index`` (wrapping at the end of the data)."""
        return self.data.row(index)

    def _begin_step(self, row: dict[str, float]) -> None:
        raise NotImplementedError

    def _apply(self, action: CurtailAction, power_kw: float) -> tuple[float, str | None]:
        """Apply one command; return the kW applied and, when short of the request, why."""
        raise NotImplementedError

    def _apply_battery(self, action: CurtailAction, power_kw: float) -> tuple[float, str | None]:
        if self.battery is None:
            return 0.0, "this agent has no battery"
        if self.step == 0:
            return 0.0, "no step simulated yet"
        shift = self.battery.shift(power_kw if action is CurtailAction.charge_battery else -power_kw)
        applied = abs(shift)
        limit = "full or at its charge limit" if action is CurtailAction.charge_battery else "empty or at its discharge limit"
        return applied, None if applied >= power_kw - POWER_TOLERANCE_KW else f"battery {limit}"

    def url(self, base_url: str, at_root: bool) -> str:
        """Where the grid agent reaches this agent's endpoints."""
        return base_url if at_root else f"{base_url}/agents/{self.agent_id}"

    def check_addressee(self, expected: str | None) -> None:
        """A call meant for another agent (a stale or wrong URL) must not step or command this one."""
        if expected is not None and expected != self.agent_id:
            raise ConflictError(f"this is agent {self.agent_id}, not {expected}", self.agent_id)

    def _valid_until(self, command: CurtailCommand) -> datetime | None:
        """When a command ends in simulated time; None before the first step (it cannot apply)."""
        if self.timestamp is None:
            return None
        if command.valid_until is not None:
            return command.valid_until.replace(tzinfo=None)
        return self.timestamp + timedelta(seconds=command.duration_s or self.data.step_s)

    def curtail(self, command: CurtailCommand) -> CurtailResult:
        """Apply a command once; a repeated id answers ``duplicate``, a reused id with another body 409."""
        body = command.model_dump(mode="json", exclude={"command_id"}, exclude_none=True)
        seen = self._seen.get(command.command_id)
        if seen is not None:
            if seen["body"] != body:
                raise ConflictError(f"command_id {command.command_id!r} was already used with another body", self.agent_id)
            first = seen["result"]
            self.metrics.command(command.action, CommandStatus.duplicate)
            return CurtailResult(**{**first, "status": CommandStatus.duplicate, "agent_status": self.current_status()})
        valid_until = self._valid_until(command)
        expired = valid_until is not None and valid_until <= self.timestamp
        if expired:
            applied, reason = 0.0, f"expired: valid until {valid_until.isoformat()}, the agent is at {self.timestamp.isoformat()}"
        else:
            applied, reason = self._apply(command.action, command.power_kw)
            self._status = None  # the operating point moved
            if applied > POWER_TOLERANCE_KW and valid_until > self.timestamp + timedelta(seconds=self.data.step_s):
                self.active[command.command_id] = ActiveCommand(command_id=command.command_id, action=command.action, power_kw=command.power_kw, valid_until=valid_until)
        applied = min(max(applied, 0.0), command.power_kw)
        if applied >= command.power_kw - POWER_TOLERANCE_KW and not expired:  # an expired 0 kW command is rejected too
            status, applied = CommandStatus.applied, command.power_kw
        elif applied > POWER_TOLERANCE_KW:
            status = CommandStatus.partial
        else:
            status, applied = CommandStatus.rejected, 0.0
        if applied > 0:
            self.commands_this_step += 1
        result = CurtailResult(
            command_id=command.command_id,
            action=command.action,
            status=status,
            requested_kw=command.power_kw,
            applied_kw=applied,
            reason=reason if status is not CommandStatus.applied else None,
            agent_status=self.current_status(),
        )
        record = {"body": body, "result": result.model_dump(mode="json", exclude={"agent_status"})}
        self._seen[command.command_id] = record
        self._unsaved[command.command_id] = record
        while len(self._seen) > SEEN_COMMANDS_LIMIT:
            self._seen.popitem(last=False)
        self._save()
        logger.debug("%s step %d: %s %.3f kW -> %s %.3f kW", self.agent_id, self.step, command.action.value, command.power_kw, status.value, applied)
        self.metrics.command(command.action, status)
        return result

    # -- reporting ---------------------------------------------------------------------------
    def _battery_status(self) -> BatteryStatus | None:
        b = self.battery
        if b is None:
            return None
        return BatteryStatus(
            soc_fraction=b.soc_fraction,
            power_kw=b.power_kw,
            capacity_kwh=b.spec.capacity_kwh,
            max_charge_kw=b.spec.max_charge_kw,
            max_discharge_kw=b.spec.max_discharge_kw,
            soc_min_fraction=b.spec.soc_min_fraction,
            soc_max_fraction=b.spec.soc_max_fraction,
        )

    def _flexibility(self) -> Flexibility:
        if self.battery is None or self.step == 0:
            return Flexibility()
        return Flexibility(
            charge_battery_kw=self.battery.charge_headroom_kw,
            discharge_battery_kw=self.battery.discharge_headroom_kw,
        )

    def status(self) -> AgentStatus:
        raise NotImplementedError

    def _common_status(self) -> dict[str, Any]:
        """The status fields every kind of agent reports: who and where it is, its step, its battery, who is in charge."""
        in_charge = "grid" if (self.active or self.commands_this_step) else "local"
        return {
            "agent_id": self.agent_id,
            "agent_type": self.agent_type,
            "transformer_id": self.settings.transformer_id,
            "step": self.step,
            "timestamp": self.timestamp,
            "step_s": self.data.step_s,
            "battery": self._battery_status(),
            "temp_air_c": self.row.get("temp_air_c"),
            "control": in_charge,
            "control_reason": self.control_reason,
            "active_commands": list(self.active.values()),
        }

    def _write_log_row(self) -> None:
        """Log the current step once it is final (when the next begins, or at shutdown)."""
        if self.step <= self.logged_step:
            return
        self.logged_step = self.step
        s = self.current_status()
        self.log.write(
            {
                "step": s.step,
                "timestamp": s.timestamp,
                "net_power_kw": s.net_power_kw,
                "solar_available_kw": s.solar.available_kw if s.solar else None,
                "solar_output_kw": s.solar.output_kw if s.solar else None,
                "solar_curtailed_kw": s.solar.curtailed_kw if s.solar else None,
                "load_demand_kw": s.load.demand_kw if s.load else None,
                "load_served_kw": s.load.served_kw if s.load else None,
                "load_shed_kw": s.load.shed_kw if s.load else None,
                "battery_power_kw": s.battery.power_kw if s.battery else None,
                "battery_soc_fraction": s.battery.soc_fraction if s.battery else None,
                "price_per_kwh": s.price_per_kwh,
                "temp_air_c": s.temp_air_c,
                "commands": self.commands_this_step,
            }
        )

    def close(self) -> None:
        """Write the last step's row, save the state and close the files."""
        self._write_log_row()
        self._save()
        self.log.close()
        if self.own_store:
            self.store.close()


def _start_index(data: TimeSeries, text: str) -> int:
    """The data row a ``--start`` time names; a clear StartupError otherwise."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise StartupError(f"--start {text!r}: not an ISO 8601 time such as 2025-07-15T17:00") from None
    if when.tzinfo is not None:
        raise StartupError(f"--start {text!r}: give the data's local time without a UTC offset")
    try:
        return data.index_of(when)
    except ValueError as exc:
        raise StartupError(f"--start {text!r}: {exc}") from None


async def register_forever(
    agents: DeviceAgent | list[DeviceAgent], client: httpx.AsyncClient, settings: DeviceSettings, base_url: str | None = None
) -> None:
    """Register with the grid agent, then heartbeat; retry with back-off and jitter while it is away.

    One agent registers through the contract's ``POST /agents/{agent_id}/status``; a process
    hosting many sends them all in one ``POST /registrations``. Either way the grid agent learns
    the per-agent URL and the process's batch URL.
    """
    agents = [agents] if isinstance(agents, DeviceAgent) else agents
    base_url = base_url or settings.own_url
    delay_s = 0.25
    registered = False
    last_refusal = None
    headers = _auth_headers()
    who = agents[0].agent_id if len(agents) == 1 else f"{len(agents)} agents at {base_url}"
    while True:
        try:
            reports = [
                AgentReport(url=agent.url(base_url, len(agents) == 1), batch_url=base_url, status=agent.status()).model_dump(mode="json")
                for agent in agents
            ]
            if len(agents) == 1:
                response = await client.post(f"/agents/{agents[0].agent_id}/status", json=reports[0], headers=headers)
            else:
                response = await client.post("/registrations", json={"reports": reports}, headers=headers)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            for agent in agents:
                agent.metrics.peer_error(settings.grid_url, exc)
            refusal = f"HTTP {exc.response.status_code}: {exc.response.text[:200]}"
            if refusal != last_refusal:  # say why once, not every retry
                logger.warning("%s: the grid agent at %s refused registration (%s); retrying", who, settings.grid_url, refusal)
            last_refusal, registered = refusal, False
            await asyncio.sleep(delay_s * random.uniform(0.8, 1.2))
            delay_s = min(delay_s * 2, settings.heartbeat_s)
            continue
        except httpx.HTTPError as exc:
            for agent in agents:
                agent.metrics.peer_error(settings.grid_url, exc)
                agent.check_fail_safe()
            if registered:
                logger.warning("%s: lost the grid agent at %s (%s); retrying", who, settings.grid_url, exc)
            registered = False
            await asyncio.sleep(delay_s * random.uniform(0.8, 1.2))
            delay_s = min(delay_s * 2, settings.heartbeat_s)
            continue
        for agent in agents:
            agent.heard_from_grid()
        if not registered:
            logger.info("%s: registered with the grid agent at %s", who, settings.grid_url)
        registered, delay_s, last_refusal = True, 0.25, None
        await asyncio.sleep(settings.heartbeat_s)


def _auth_headers() -> dict[str, str]:
    token = agent_token_from_env()
    return {"Authorization": f"Bearer {token}"} if token else {}


def require_token_dependency(agent_id: str):
    """A dependency that enforces ``Authorization: Bearer $AGENT_TOKEN`` when the token is set."""
    token = agent_token_from_env()

    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise UnauthorizedError("missing or wrong bearer token", agent_id)

    return check


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
    hosted = [agents] if isinstance(agents, DeviceAgent) else list(agents)
    by_id = {agent.agent_id: agent for agent in hosted}
    single = hosted[0] if len(hosted) == 1 else None
    host_id = single.agent_id if single else f"{hosted[0].agent_type.value}-agents-{settings.shard.replace('/', '-of-')}"
    shared_store = store or (single.store if single else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = None
        client = httpx.AsyncClient(base_url=settings.grid_url, timeout=settings.request_timeout_s)
        if register:
            task = asyncio.create_task(register_forever(hosted, client, settings, settings.own_url))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await client.aclose()
            for agent in hosted:
                agent.close()
            if store is not None:
                store.close()

    title = f"{hosted[0].agent_type.value} agent {host_id}" if single else f"{len(hosted)} {hosted[0].agent_type.value} agents ({host_id})"
    app = FastAPI(title=title, description=hosted[0].description, lifespan=lifespan)
    app.state.agent = single
    app.state.agents = by_id
    install_error_handlers(app, host_id)
    if single is not None:
        mount_metrics(app, single.metrics.registry)
    Authorized = Depends(require_token_dependency(host_id))

    def hosted_agent(agent_id: str) -> DeviceAgent:
        agent = by_id.get(agent_id)
        if agent is None:
            raise NotFoundError(f"no agent {agent_id!r} here; this process hosts {len(by_id)} agents", host_id)
        return agent

    routes = [("/agents/{agent_id}", hosted_agent)]
    if single is not None:
        routes.insert(0, ("", lambda: single))
    for prefix, resolve in routes:
        _add_agent_routes(app, prefix, resolve, Authorized)

    @app.post("/batch/simulate", response_model=BatchSimulateResult, dependencies=[Authorized], responses=error_responses(400, 401, 422))
    async def batch_simulate(body: BatchSimulate) -> Response:
        """Step many hosted agents at once (one state commit for them all)."""
        statuses, errors = [], []
        with _one_transaction(shared_store):
            for agent_id in body.agent_ids:
                agent = by_id.get(agent_id)
                if agent is None:
                    errors.append(BatchError(agent_id=agent_id, error="not hosted here"))
                    continue
                agent.heard_from_grid()
                statuses.append(agent.simulate())
        return _json(BatchSimulateResult(statuses=statuses, errors=errors))

    @app.post("/batch/curtail", response_model=BatchCurtailResult, dependencies=[Authorized], responses=error_responses(400, 401, 422))
    async def batch_curtail(body: BatchCurtail) -> Response:
        """Command many hosted agents at once; each command as POST /curtail would take it."""
        results, errors = [], []
        with _one_transaction(shared_store):
            for item in body.commands:
                agent = by_id.get(item.agent_id)
                if agent is None:
                    errors.append(BatchError(agent_id=item.agent_id, command_id=item.command.command_id, error="not hosted here"))
                    continue
                agent.heard_from_grid()
                try:
                    results.append(agent.curtail(item.command))
                except AgentError as exc:
                    errors.append(BatchError(agent_id=item.agent_id, command_id=item.command.command_id, error=exc.message))
        return _json(BatchCurtailResult(results=results, errors=errors))

    if single is None:

        @app.get("/", response_model=HostInfo)
        async def host_info() -> HostInfo:
            """What this process hosts."""
            return HostInfo(host_id=host_id, agent_type=hosted[0].agent_type, agent_ids=list(by_id), endpoints=HOST_ENDPOINTS)

        @app.get("/health", response_model=Health)
        async def host_health() -> Health:
            """Liveness of the process."""
            return Health(agent_id=host_id, agent_type=hosted[0].agent_type)

    return app


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
    from agents.scenario import load_scenario  # the scenario module imports settings; keep start-up light

    i, n = settings.shard_index
    mine = entries(load_scenario(settings.scenario))[i::n] if i < n else []
    if not mine:
        raise StartupError(f"{settings.scenario}: shard {settings.shard} has no {kind} agents")
    if len(mine) > settings.max_agents_per_process:
        raise StartupError(f"{settings.scenario}: shard {settings.shard} has {len(mine)} {kind} agents, over --max-agents-per-process {settings.max_agents_per_process}")
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


AGENT_ENDPOINTS = ["GET /", "GET /health", "GET /status", "POST /simulate", "POST /curtail", "GET /metrics", "GET /docs"]
HOST_ENDPOINTS = [
    "GET /",
    "GET /health",
    "GET /agents/{agent_id}/ (and /health, /status, /metrics, POST /simulate, POST /curtail)",
    "POST /batch/simulate",
    "POST /batch/curtail",
    "GET /docs",
]


def _add_agent_routes(app: FastAPI, prefix: str, resolve: Callable[..., DeviceAgent], Authorized: Any) -> None:
    """The contract's endpoints for one agent, under ``prefix``."""
    hosted = Depends(resolve)  # a default, not an Annotated alias: this module's annotations are strings
    tag = ["this agent"] if prefix == "" else ["hosted agents"]
    by_path = (404, 422) if prefix else ()  # /agents/{agent_id}/...: an agent this process does not host

    @app.get(f"{prefix}/", response_model=AgentInfo, tags=tag, responses=error_responses(*by_path))
    async def info(agent: DeviceAgent = hosted) -> AgentInfo:
        """What this agent is and what it serves."""
        return AgentInfo(agent_id=agent.agent_id, agent_type=agent.agent_type, description=agent.description, endpoints=AGENT_ENDPOINTS)

    @app.get(f"{prefix}/health", response_model=Health, tags=tag, responses=error_responses(*by_path))
    async def health(agent: DeviceAgent = hosted) -> Health:
        """Liveness."""
        return Health(agent_id=agent.agent_id, agent_type=agent.agent_type)

    @app.get(f"{prefix}/status", response_model=AgentStatus, tags=tag, responses=error_responses(*by_path))
    async def status(agent: DeviceAgent = hosted) -> AgentStatus:
        """The agent's current step, modules, flexibility and who is in control."""
        agent.check_fail_safe()
        return agent.status()

    @app.post(f"{prefix}/simulate", response_model=AgentStatus, dependencies=[Authorized], tags=tag, responses=error_responses(401, *by_path, 409, 422))
    async def simulate(agent: DeviceAgent = hosted, x_agent_id: Annotated[str | None, Header()] = None) -> AgentStatus:
        """Advance one step, run the local policy and re-apply commands still holding."""
        agent.check_addressee(x_agent_id)
        agent.heard_from_grid()
        return agent.simulate()

    @app.post(f"{prefix}/curtail", response_model=CurtailResult, dependencies=[Authorized], tags=tag, responses=error_responses(400, 401, *by_path, 409, 422))
    async def curtail(command: CurtailCommand, agent: DeviceAgent = hosted, x_agent_id: Annotated[str | None, Header()] = None) -> CurtailResult:
        """Shift the operating point by power_kw through action (for duration_s or until valid_until); answers what was applied."""
        agent.check_addressee(x_agent_id)
        agent.heard_from_grid()
        return agent.curtail(command)

    if prefix:

        # Response, not PlainTextResponse, as the class: the 404 and 422 answers are JSON, only the 200 is text
        @app.get(f"{prefix}/metrics", tags=tag, response_class=Response, responses={200: {"content": {"text/plain": {}}}, **error_responses(*by_path)})
        async def metrics(agent: DeviceAgent = hosted) -> PlainTextResponse:
            """Prometheus metrics of one hosted agent."""
            return PlainTextResponse(generate_latest(agent.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _json(model: BaseModel) -> Response:
    """A model as a JSON answer, serialised once by pydantic: the batch routes are the hot path,
    and FastAPI would validate the model again before serialising it (response_model still documents it)."""
    return Response(content=model.model_dump_json(), media_type="application/json")


@contextmanager
def _one_transaction(store: StateStore | None) -> Iterator[None]:
    if store is None:
        yield
    else:
        with store.batch():
            yield
