"""The grid agent: registers agents, and each cycle steps them, assesses, plans, acts and records."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import httpx
import openai
from pydantic import ValidationError
from fastapi import Depends, FastAPI

from agents.csvlog import CsvLogWriter
from agents.dashboard import CycleHistory, dashboard_router
from agents.device import _auth_headers, require_token_dependency
from agents.errors import BadRequestError, PeerUnavailableError, error_responses, install_error_handlers
from agents.metrics import GridMetrics, mount_metrics
from agents.peers import PeerCallError, PeerClient, make_peers
from agents.planners import PLANNERS, AgentFlex, Command, Snapshot, TransformerSnapshot
from agents.scenario import Scenario, load_scenario
from agents.planners.ai import AiPlanner
from agents.planners.mpc import MpcPlanner
from agents.settings import GridSettings, StartupError, openai_settings_from_env
from models.grid import classify_loading, transformer_loading_kw, violation_kw
from models.schemas import (
    ActionReport,
    AgentInfo,
    AgentRecord,
    AgentReport,
    AgentStatus,
    AgentType,
    BatchCurtailResult,
    BatchSimulateResult,
    Registrations,
    RegistrationsResult,
    CoordinateBatch,
    CoordinationBatch,
    CoordinationResult,
    CurtailAction,
    CurtailResult,
    GridStatus,
    Health,
    TransformerReport,
)

logger = logging.getLogger(__name__)

GRID_LOG_COLUMNS = (
    "cycle",
    "timestamp",
    "transformer_id",
    "rating_kw",
    "reverse_limit_kw",
    "loading_before_kw",
    "loading_after_kw",
    "state_before",
    "state_after",
    "unfixed_kw",
    "agents_reporting",
    "agents_unreachable",
    "planner",
    "fallback_reason",
    "commands",
    "requested_kw",
    "applied_kw",
    "unreachable",
    "step_ms",
    "plan_ms",
    "act_ms",
    "duration_ms",
)


def resolve_planner(name: str, api_key: str | None) -> str:
    """The planner a setting names; ``auto`` is ``ai`` when an OpenAI key is set, else ``optimal``."""
    if name == "auto":
        return "ai" if api_key else "optimal"
    return name


def make_mpc_planner() -> MpcPlanner:
    """The mpc planner; with OPENWEATHERMAP_API_KEY set, its solar forecast follows OpenWeatherMap's cloud cover."""
    key = os.environ.get("OPENWEATHERMAP_API_KEY")
    if not key:
        return MpcPlanner()
    from agents.weather import CloudForecast  # pvlib loads only when a weather forecast is wanted

    return MpcPlanner(sky=CloudForecast(key))


def make_ai_planner(settings: GridSettings) -> AiPlanner:
    """The ai planner with an OpenAI client from the environment (none, and so always falling back, without a key)."""
    api_key, model, base_url = openai_settings_from_env()
    client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=settings.ai_timeout_s, max_retries=0) if api_key else None
    return AiPlanner(client, model=model, timeout_s=settings.ai_timeout_s)


class GridAgent:
    """The grid agent without its transport."""

    def __init__(self, settings: GridSettings, scenario: Scenario | None = None) -> None:
        self.settings = settings
        self.agent_id = settings.agent_id
        self.planner = resolve_planner(settings.planner, openai_settings_from_env()[0])
        self.ai = make_ai_planner(settings) if self.planner == "ai" else None
        self.plan = make_mpc_planner() if self.planner == "mpc" else PLANNERS["optimal" if self.ai else self.planner]()
        self.scenario = scenario or (load_scenario(settings.scenario) if settings.scenario else Scenario())
        self.registry: dict[str, AgentRecord] = {}
        self.cycle = 0
        self.last_result: CoordinationResult | None = None
        self.cycle_ms: list[float] = []
        self.peers: PeerClient | None = None
        self.run_id = uuid.uuid4().hex[:8]
        self.log = CsvLogWriter(settings.log_dir / f"{self.agent_id}_log.csv", GRID_LOG_COLUMNS)
        self._lock = asyncio.Lock()
        self._limits = {t.id: (t.rating_kw, t.reverse_limit_kw or t.rating_kw) for t in self.scenario.transformers}
        self.metrics = GridMetrics(self.agents)
        self.history = CycleHistory()

    # -- registry ----------------------------------------------------------------------------
    def register(self, agent_id: str, report: AgentReport) -> AgentRecord:
        """Record an agent's registration or heartbeat."""
        if report.status.agent_id != agent_id:
            raise BadRequestError(f"status.agent_id {report.status.agent_id!r} does not match the path's {agent_id!r}", self.agent_id)
        known = self.registry.get(agent_id)
        if known is None or not known.healthy or known.url != report.url:
            logger.info("agent %s (%s) registered at %s on %s", agent_id, report.status.agent_type.value, report.url, report.status.transformer_id)
        fields = {
            "agent_type": report.status.agent_type,
            "url": report.url.rstrip("/"),
            "batch_url": report.batch_url.rstrip("/") if report.batch_url else None,
            "transformer_id": report.status.transformer_id,
            "healthy": True,
            "last_seen": _now(),
            "last_status": report.status,
        }
        if known is None:
            self.registry[agent_id] = known = AgentRecord(agent_id=agent_id, **fields)
        else:  # in place, so that a cycle in flight holding this record sees the heartbeat
            for name, value in fields.items():
                setattr(known, name, value)
        return known

    def agents(self) -> list[AgentRecord]:
        """Every registered agent; one unheard of for ``stale_after_s`` counts as unhealthy."""
        now = _now()
        for record in self.registry.values():
            if record.healthy and (now - record.last_seen).total_seconds() > self.settings.stale_after_s:
                record.healthy = False
        return list(self.registry.values())

    def limits(self, transformer_id: str) -> tuple[float, float]:
        """(rating_kw, reverse_limit_kw) of a transformer; unrated ones take the settings'."""
        if transformer_id in self._limits:
            return self._limits[transformer_id]
        rating = self.settings.transformer_rating_kw
        return rating, self.settings.reverse_limit_kw or rating

    def transformer_ids(self) -> list[str]:
        ids = {t.id: None for t in self.scenario.transformers}
        ids.update({r.transformer_id: None for r in self.registry.values()})
        return list(ids)

    # -- talking to agents -------------------------------------------------------------------
    async def _post(self, url: str, body: Any, addressee: str, retry: bool) -> bytes:
        """POST JSON and return the answer's bytes; any failure is a PeerUnavailableError naming ``addressee``.

        A call that is safe to repeat (``retry``: commands carry ids the agents apply once) and
        could not even connect is retried with back-off and jitter. A timeout is not retried, so
        a hung agent costs one timeout; /simulate is never retried, as it is not idempotent.
        """
        assert self.peers is not None, "the grid agent's client opens with its lifespan"
        attempts = 1 + (self.settings.curtail_retries if retry else 0)
        headers = {**_auth_headers(), "X-Agent-Id": addressee}
        for attempt in range(attempts):
            try:
                return await self.peers.post(url, body, headers)
            except PeerCallError as exc:
                if exc.retryable and attempt + 1 < attempts:
                    await asyncio.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))
                    continue
                self.metrics.peer_error(addressee, exc)
                raise PeerUnavailableError(addressee, str(exc), self.agent_id) from exc
        raise AssertionError("unreachable: the loop returns or raises")

    async def _simulate_one(self, record: AgentRecord) -> AgentStatus:
        answer = await self._post(f"{record.url}/simulate", None, record.agent_id, retry=False)
        try:
            status = AgentStatus.model_validate_json(answer)
        except ValidationError as exc:
            self.metrics.peer_error(record.agent_id, exc)
            raise PeerUnavailableError(record.agent_id, _describe(exc), self.agent_id) from exc
        if status.agent_id != record.agent_id:
            raise PeerUnavailableError(record.agent_id, f"answered as {status.agent_id}", self.agent_id)
        return status

    async def _simulate_batch(self, batch_url: str, group: list[AgentRecord]) -> list[AgentStatus | Exception]:
        body = {"agent_ids": [r.agent_id for r in group]}
        try:
            answer = BatchSimulateResult.model_validate_json(await self._post(f"{batch_url}/batch/simulate", body, batch_url, retry=False))
        except (PeerUnavailableError, ValidationError) as exc:
            reason = exc.reason if isinstance(exc, PeerUnavailableError) else _describe(exc)
            return [PeerUnavailableError(r.agent_id, reason, self.agent_id) for r in group]
        by_id = {s.agent_id: s for s in answer.statuses}
        errors = {e.agent_id: e.error for e in answer.errors}
        return [by_id.get(r.agent_id) or PeerUnavailableError(r.agent_id, errors.get(r.agent_id, "missing from the batch answer"), self.agent_id) for r in group]

    async def _per_process(
        self,
        items: list[Any],
        record_of: Callable[[Any], AgentRecord],
        one: Callable[[Any], Awaitable[Any]],
        many: Callable[[str, list[Any]], Awaitable[list[Any]]],
    ) -> list[Any]:
        """Serve every item, in parallel across agents: ``many`` once per hosting process (in chunks
        of BATCH_SIZE), ``one`` per item whose agent has no batch URL. Items for the same agent go
        in order, one after the other, so the last answer carries the agent's final status.
        Answers (or exceptions) come back in item order."""
        groups: dict[str, list[int]] = {}
        singles: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            record = record_of(item)
            if record.batch_url:
                groups.setdefault(record.batch_url, []).append(i)
            else:
                singles.setdefault(record.agent_id, []).append(i)

        async def in_order(indexes: list[int]) -> list[Any]:
            answers = []
            for i in indexes:
                try:
                    answers.append(await one(items[i]))
                except Exception as exc:  # noqa: BLE001 - handed back to the caller like gather's
                    answers.append(exc)
            return answers

        calls: list[Callable[[], Awaitable[Any]]] = []
        slots: list[list[int]] = []
        for indexes in singles.values():
            calls.append(lambda c=indexes: in_order(c))
            slots.append(indexes)
        for batch_url, indexes in groups.items():
            for chunk in _chunks(indexes, BATCH_SIZE):
                calls.append(lambda u=batch_url, c=chunk: many(u, [items[i] for i in c]))
                slots.append(chunk)
        answers: list[Any] = [None] * len(items)
        for indexes, result in zip(slots, await self._fan_out(calls)):
            results = result if isinstance(result, list) else [result] * len(indexes)
            for i, answer in zip(indexes, results):
                answers[i] = answer
        return answers

    async def _step_all(self, records: list[AgentRecord]) -> list[AgentStatus | Exception]:
        """/simulate every agent: one batch request per hosting process, single calls for the rest."""
        return await self._per_process(records, lambda r: r, self._simulate_one, self._simulate_batch)

    async def _curtail_one(self, record: AgentRecord, body: dict) -> CurtailResult:
        answer = await self._post(f"{record.url}/curtail", body, record.agent_id, retry=True)
        try:
            return CurtailResult.model_validate_json(answer)
        except ValidationError as exc:
            raise PeerUnavailableError(record.agent_id, _describe(exc), self.agent_id) from exc

    async def _curtail_batch(self, batch_url: str, items: list[tuple[AgentRecord, dict]]) -> list[CurtailResult | Exception]:
        body = {"commands": [{"agent_id": r.agent_id, "command": b} for r, b in items]}
        try:
            answer = BatchCurtailResult.model_validate_json(await self._post(f"{batch_url}/batch/curtail", body, batch_url, retry=True))
        except (PeerUnavailableError, ValidationError) as exc:
            reason = exc.reason if isinstance(exc, PeerUnavailableError) else _describe(exc)
            return [PeerUnavailableError(r.agent_id, reason, self.agent_id) for r, _ in items]
        by_id = {result.command_id: result for result in answer.results}
        errors = {e.command_id: e.error for e in answer.errors}
        return [
            by_id.get(b["command_id"]) or PeerUnavailableError(r.agent_id, errors.get(b["command_id"], "missing from the batch answer"), self.agent_id)
            for r, b in items
        ]

    async def _fan_out(self, calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
        semaphore = asyncio.Semaphore(self.settings.max_concurrency)

        async def bounded(call: Callable[[], Awaitable[Any]]) -> Any:
            async with semaphore:
                return await call()

        return await asyncio.gather(*(bounded(c) for c in calls), return_exceptions=True)

    # -- the cycle ---------------------------------------------------------------------------
    async def coordinate(self) -> CoordinationResult:
        """One coordination cycle: step, assess, plan, act, record. Cycles never overlap."""
        async with self._lock:
            return await self._coordinate()

    async def _coordinate(self) -> CoordinationResult:
        started = time.perf_counter()
        self.cycle += 1
        records = self.agents()
        unreachable: list[str] = []

        # 1. step every agent in parallel
        answers = await self._step_all(records)
        statuses: dict[str, AgentStatus] = {}
        for record, answer in zip(records, answers):
            if isinstance(answer, Exception):
                unreachable.append(record.agent_id)
                record.healthy = False
                logger.warning("cycle %d: %s", self.cycle, answer)
                continue
            record.last_status, record.healthy, record.last_seen = answer, True, _now()
            record.transformer_id = answer.transformer_id
            statuses[record.agent_id] = answer
        stepped = time.perf_counter()

        # 2. assess
        snapshot = self._snapshot(statuses)
        before = {t.transformer_id: t.loading_kw for t in snapshot.transformers}

        # 3. plan
        decided, fallback_reason = self.planner, None
        if self.ai is not None:
            plan, fallback_reason = await self.ai.plan(snapshot)
            decided = "ai" if fallback_reason is None else "optimal"
        else:
            plan = self.plan(snapshot)
        planned = time.perf_counter()

        # 4. act
        actions = await self._act(plan.commands, statuses, unreachable)
        acted = time.perf_counter()

        # 5. record
        after = self._loadings(statuses)
        reports = []
        missing = [self.registry[a].transformer_id for a in set(unreachable) if a in self.registry and a not in statuses]
        for t in snapshot.transformers:
            rating, reverse = t.rating_kw, t.reverse_limit_kw
            loading_after = after.get(t.transformer_id, 0.0)
            reports.append(
                TransformerReport(
                    transformer_id=t.transformer_id,
                    rating_kw=rating,
                    reverse_limit_kw=reverse,
                    loading_before_kw=before[t.transformer_id],
                    loading_after_kw=loading_after,
                    state_before=classify_loading(before[t.transformer_id], rating, reverse),
                    state_after=classify_loading(loading_after, rating, reverse),
                    unfixed_kw=violation_kw(loading_after, rating, reverse),
                    agents_reporting=sum(1 for s in statuses.values() if s.transformer_id == t.transformer_id),
                    agents_unreachable=missing.count(t.transformer_id),
                )
            )
        phase_ms = {
            "step": (stepped - started) * 1000,
            "plan": (planned - stepped) * 1000,
            "act": (acted - planned) * 1000,
        }
        result = CoordinationResult(
            cycle=self.cycle,
            timestamp=snapshot.timestamp,
            step_s=snapshot.step_s if statuses else None,
            planner=decided,
            fallback_reason=fallback_reason,
            transformers=reports,
            actions=actions,
            unreachable=sorted(set(unreachable)),
            agents_stepped=len(statuses),
            duration_ms=(time.perf_counter() - started) * 1000,
            phase_ms=phase_ms,
        )
        self._record(result)
        return result

    def _loadings(self, statuses: dict[str, AgentStatus]) -> dict[str, float]:
        return feeder_loadings(statuses.values(), self.transformer_ids())

    def _snapshot(self, statuses: dict[str, AgentStatus]) -> Snapshot:
        return build_snapshot(statuses.values(), self.transformer_ids(), self.limits)

    async def _act(self, commands: list[Command], statuses: dict[str, AgentStatus], unreachable: list[str]) -> list[ActionReport]:
        addressed = [
            (
                self.registry[c.agent_id],
                {"command_id": f"{self.run_id}-{self.cycle}-{c.agent_id}-{c.action.value}", "action": c.action.value, "power_kw": c.power_kw},
            )
            for c in commands
        ]
        answers = await self._per_process(addressed, lambda item: item[0], lambda item: self._curtail_one(*item), self._curtail_batch)
        reports = []
        for command, answer in zip(commands, answers):
            transformer_id = statuses[command.agent_id].transformer_id
            if isinstance(answer, Exception):
                unreachable.append(command.agent_id)
                self.registry[command.agent_id].healthy = False
                reports.append(ActionReport(agent_id=command.agent_id, transformer_id=transformer_id, action=command.action, requested_kw=command.power_kw, applied_kw=0.0, status="unreachable", reason=str(answer)))
                continue
            statuses[command.agent_id] = answer.agent_status
            self.registry[command.agent_id].last_status = answer.agent_status
            reports.append(ActionReport(agent_id=command.agent_id, transformer_id=transformer_id, action=command.action, requested_kw=command.power_kw, applied_kw=answer.applied_kw, status=answer.status, reason=answer.reason))
        return reports

    def _record(self, result: CoordinationResult) -> None:
        self.last_result = result
        self.metrics.observe_cycle(result)
        self.history.append(result, self.registry.values())
        self.cycle_ms.append(result.duration_ms)
        del self.cycle_ms[:-1000]
        for t in result.transformers:
            mine = [a for a in result.actions if a.transformer_id == t.transformer_id]
            self.log.write(
                {
                    "cycle": result.cycle,
                    "timestamp": result.timestamp,
                    **t.model_dump(),
                    "planner": result.planner,
                    "fallback_reason": result.fallback_reason,
                    "commands": len(mine),
                    "requested_kw": sum(a.requested_kw for a in mine),
                    "applied_kw": sum(a.applied_kw for a in mine),
                    "unreachable": ";".join(result.unreachable),
                    "step_ms": result.phase_ms["step"],
                    "plan_ms": result.phase_ms["plan"],
                    "act_ms": result.phase_ms["act"],
                    "duration_ms": result.duration_ms,
                }
            )
        states = ", ".join(f"{t.transformer_id} {t.loading_before_kw:.1f}->{t.loading_after_kw:.1f} kW {t.state_after.value}" for t in result.transformers)
        logger.info("cycle %d at %s: %s; %d commands; %.1f ms", result.cycle, result.timestamp, states, len(result.actions), result.duration_ms)

    def status(self) -> GridStatus:
        """The feeder as of the last cycle."""
        agents = self.agents()
        return GridStatus(
            agent_id=self.agent_id,
            planner=self.planner,
            cycles=self.cycle,
            agents_registered=len(agents),
            agents_healthy=sum(a.healthy for a in agents),
            transformers=self.last_result.transformers if self.last_result else [],
            last_cycle=self.last_result,
            median_cycle_ms=statistics.median(self.cycle_ms) if self.cycle_ms else None,
            ai=self.ai.stats.as_dict() if self.ai else None,
        )

    def close(self) -> None:
        self.log.close()


def feeder_loadings(statuses: Iterable[AgentStatus], transformer_ids: Iterable[str] = ()) -> dict[str, float]:
    """Loading of every transformer (kW): the sum of its agents' net powers; listed ones start at 0."""
    by_transformer: dict[str, list[float]] = {tid: [] for tid in transformer_ids}
    for status in statuses:
        by_transformer.setdefault(status.transformer_id, []).append(status.net_power_kw)
    return {tid: transformer_loading_kw(powers) for tid, powers in by_transformer.items()}


def build_snapshot(
    statuses: Iterable[AgentStatus],
    transformer_ids: Iterable[str],
    limits: Callable[[str], tuple[float, float]],
) -> Snapshot:
    """The planners' view of a feeder from its agents' statuses; ``limits(tid)`` gives (rating, reverse limit)."""
    statuses = list(statuses)
    transformers = []
    for tid, loading in feeder_loadings(statuses, transformer_ids).items():
        rating, reverse = limits(tid)
        transformers.append(TransformerSnapshot(transformer_id=tid, rating_kw=rating, reverse_limit_kw=reverse, loading_kw=loading))
    agents = tuple(
        AgentFlex(
            agent_id=s.agent_id,
            transformer_id=s.transformer_id,
            net_power_kw=s.net_power_kw,
            headroom_kw={action: s.flexibility.headroom_kw(action) for action in CurtailAction},
            battery_power_kw=s.battery.power_kw if s.battery else 0.0,
            status=s,
        )
        for s in statuses
    )
    timestamps = [s.timestamp for s in statuses if s.timestamp is not None]
    step_s = next((s.step_s for s in statuses), 900.0)
    return Snapshot(transformers=tuple(transformers), agents=agents, timestamp=max(timestamps) if timestamps else None, step_s=step_s)


#: Agents per batch request: large enough to amortise a request, small enough to step in parallel.
BATCH_SIZE = 500


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _describe(exc: ValidationError) -> str:
    return f"answered with an invalid body ({exc.error_count()} errors)"


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
            if agent.ai is not None and agent.ai.client is not None:
                await agent.ai.client.close()
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
            description=f"Grid agent; planner {agent.planner}; transformers {', '.join(agent.transformer_ids()) or 'none yet'}",
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
        return agent.register(agent_id, body)

    @app.post("/registrations", response_model=RegistrationsResult, dependencies=[Authorized], responses=error_responses(400, 401, 422))
    async def registrations(body: Registrations) -> RegistrationsResult:
        """Register, or take the heartbeat of, many agents of one process at once."""
        for report in body.reports:
            agent.register(report.status.agent_id, report)
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
