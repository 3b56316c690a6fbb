"""The grid agent without its transport: each cycle steps, assesses, plans, acts and records."""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import openai

from agents.common.errors import FeederBusyError, PeerUnavailableError
from agents.common.metrics import GridMetrics
from agents.common.scenario import Scenario, load_scenario
from agents.common.settings import GridSettings, openai_settings_from_env
from agents.cycle.calls import AgentCalls
from agents.cycle.history import CycleHistory
from agents.cycle.peers import PeerClient
from agents.cycle.recorder import CycleRecorder
from agents.cycle.registry import Registry, now
from agents.planners import PLANNERS, Command, Plan, Planner, Snapshot, SyncPlanner, plan_optimal, plan_rule
from agents.planners.ai import AiPlanner
from agents.planners.mpc import MpcPlanner
from agents.planners.snapshot import build_snapshot, feeder_loadings
from models.grid import classify_loading, violation_kw
from models.schemas import (
    ActionReport,
    AgentRecord,
    AgentStatus,
    AgentType,
    CoordinationResult,
    FeederClock,
    GridStatus,
    StartedFrom,
    TransformerReport,
)

if TYPE_CHECKING:
    from agents.cycle.network import NetworkMonitor
    from agents.openadr3.feeder import FeederBridge

logger = logging.getLogger(__name__)


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
    from agents.planners.weather import CloudForecast  # pvlib loads only when a weather forecast is wanted

    return MpcPlanner(sky=CloudForecast(key))


def make_ai_planner(settings: GridSettings) -> AiPlanner:
    """The ai planner with an OpenAI client from the environment (none, and so always falling back, without a key)."""
    api_key, model, base_url = openai_settings_from_env()
    client = (
        openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=settings.ai_timeout_s, max_retries=0)
        if api_key
        else None
    )
    return AiPlanner(client, model=model, timeout_s=settings.ai_timeout_s)


def make_planner(name: str, settings: GridSettings) -> Planner:
    """The planner a (resolved) name stands for, as the cycle awaits it."""
    if name == "ai":
        return make_ai_planner(settings)
    return SyncPlanner(make_mpc_planner() if name == "mpc" else PLANNERS[name]())


def make_network_monitor(settings: GridSettings) -> NetworkMonitor | None:
    """The network's power flow with ``--network``; pandapower and power-grid-model load only then."""
    if not settings.network:
        return None
    from agents.cycle.network import NetworkMonitor

    return NetworkMonitor(settings)


@dataclass(frozen=True)
class PhaseClock:
    """perf_counter() readings at the start of the cycle and at the end of its step, plan and act phases."""

    started: float
    stepped: float
    planned: float
    acted: float

    def phase_ms(self) -> dict[str, float]:
        return {
            "step": (self.stepped - self.started) * 1000,
            "plan": (self.planned - self.stepped) * 1000,
            "act": (self.acted - self.planned) * 1000,
        }


class GridAgent:
    """Coordinates the feeder: a registry of agents, calls to them, a planner and a recorder, one cycle at a time."""

    def __init__(self, settings: GridSettings, scenario: Scenario | None = None) -> None:
        self.settings = settings
        self.agent_id = settings.agent_id
        self.planner = resolve_planner(settings.planner, openai_settings_from_env()[0])
        self.planning: Planner = make_planner(self.planner, settings)
        scenario = scenario or (load_scenario(settings.scenario) if settings.scenario else Scenario())
        self.network = make_network_monitor(settings)
        if self.network is not None and not scenario.transformers:  # the network's transformers, at their ratings
            scenario = scenario.model_copy(update={"transformers": self.network.transformer_specs()})
        self.metrics = GridMetrics(self.agents)
        if self.network is not None:
            self.metrics.enable_network()
        self.calls = AgentCalls(settings, self.metrics)
        self.registry = Registry(settings, scenario, probe=self.calls.probe, on_forget=self.metrics.forget_peers)
        self.recorder = CycleRecorder(settings, self.metrics)
        self.vens: FeederBridge | None = None  # with --openadr3: VENs on the feeder through the VTN
        self.cycle = 0
        self.clock: FeederClock | None = None  # the feeder's simulated time as of the latest cycle that stepped
        self.on_cycle_start: Callable[[int], None] | None = None  # commits the cycle's number (see Runs)
        self.run_id = uuid.uuid4().hex[:8]
        self._lock = asyncio.Lock()  # the feeder: cycles run only while it is held
        self._holder: Callable[[], str] = lambda: "nobody"

    @property
    def cycle_id(self) -> str:
        """This cycle as the agents are told it (``X-Cycle-Id``): the grid agent's run id and the cycle number."""
        return f"{self.run_id}:{self.cycle}"

    # -- what others read ----------------------------------------------------------------------
    def agents(self) -> list[AgentRecord]:
        """Every registered agent; one unheard of for ``stale_after_s`` counts as unhealthy."""
        return self.registry.agents()

    @property
    def history(self) -> CycleHistory:
        return self.recorder.history

    @property
    def peers(self) -> PeerClient | None:
        return self.calls.peers

    @peers.setter
    def peers(self, peers: PeerClient | None) -> None:
        self.calls.peers = peers

    def status(self) -> GridStatus:
        """The feeder as of the last cycle."""
        agents = self.agents()
        last = self.recorder.last_result
        return GridStatus(
            agent_id=self.agent_id,
            planner=self.planner,
            cycles=self.cycle,
            agents_registered=len(agents),
            agents_healthy=sum(a.healthy for a in agents),
            transformers=last.transformers if last else [],
            last_cycle=last,
            median_cycle_ms=statistics.median(self.recorder.cycle_ms) if self.recorder.cycle_ms else None,
            ai=self.planning.stats.as_dict() if isinstance(self.planning, AiPlanner) else None,
            network_replans=self.network.replans if self.network is not None else None,
            sensitivity_refreshes=self.network.sensitivity.refreshes if self.network is not None else None,
        )

    def feeder_clock(self) -> FeederClock | None:
        """The feeder's clock for the answer to a registration: as of the latest cycle this process ran; before it
        has run one (a restarted grid agent), the latest time a registered agent reported; None in a new run."""
        if self.clock is not None:
            return self.clock
        if self.registry.latest_reported is None:
            return None
        timestamp, step_s = self.registry.latest_reported
        return FeederClock(run_id=self.run_id, cycle=self.cycle, timestamp=timestamp, step_s=step_s)

    def _tick(self, snapshot: Snapshot) -> None:
        """The feeder's clock after this cycle's step: where its agents now stand (still where they stood, when
        none answered)."""
        if snapshot.timestamp is not None:
            self.clock = FeederClock(
                run_id=self.run_id, cycle=self.cycle, timestamp=snapshot.timestamp, step_s=snapshot.step_s
            )
        elif self.clock is not None:
            self.clock = self.clock.model_copy(update={"cycle": self.cycle})

    # -- who holds the feeder ------------------------------------------------------------------
    async def claim_feeder(self, holder: Callable[[], str], wait_s: float | None) -> None:
        """Hold the feeder for a cycle, a batch or a run; wait at most ``wait_s`` (None: no bound) for its holder.

        ``holder`` says who holds it and how to follow them, for the 409 of whoever waits in vain.
        Whoever claims it calls ``release_feeder`` once, possibly from another task (a run's).
        """
        try:
            async with asyncio.timeout(wait_s):
                await self._lock.acquire()
        except TimeoutError:
            message = f"the feeder is busy after waiting {wait_s:g} s: {self._holder()}"
            raise FeederBusyError(message, self.agent_id) from None
        self._holder = holder

    def release_feeder(self) -> None:
        """Let the next waiting cycle, batch or run have the feeder."""
        self._holder = lambda: "nobody"
        self._lock.release()

    @asynccontextmanager
    async def feeder(self, holder: Callable[[], str], wait_s: float | None) -> AsyncIterator[None]:
        """Hold the feeder inside the block (see ``claim_feeder``)."""
        await self.claim_feeder(holder, wait_s)
        try:
            yield
        finally:
            self.release_feeder()

    # -- the cycle -----------------------------------------------------------------------------
    async def coordinate(self, wait_s: float | None = None) -> CoordinationResult:
        """One coordination cycle, once the feeder is free (waiting at most ``wait_s``). Cycles never overlap."""
        async with self.feeder(lambda: "another POST /coordinate holds it for one cycle", wait_s):
            return await self.run_cycle()

    async def run_cycle(self) -> CoordinationResult:
        """One coordination cycle: step, assess, plan, act, record; only for whoever holds the feeder."""
        started = time.perf_counter()
        self.cycle += 1
        if self.on_cycle_start is not None:
            self.on_cycle_start(self.cycle)
        unreachable: list[str] = []
        if self.vens is not None:
            self.vens.sync()
        statuses = await self._step(self.registry.agents(), unreachable)
        stepped = time.perf_counter()
        snapshot = self._assess(statuses)
        self._tick(snapshot)
        plan = await self._plan(snapshot)
        planned = time.perf_counter()
        actions = await self._act(plan.commands, statuses, unreachable, snapshot)
        replanned = await self._replan(plan, statuses, actions, unreachable)
        if self.vens is not None:
            self.vens.cycle_done(snapshot.timestamp, snapshot.step_s)
        clock = PhaseClock(started, stepped, planned, time.perf_counter())
        return self._record(snapshot, plan, statuses, actions, unreachable, clock, replanned)

    async def _step(self, records: list[AgentRecord], unreachable: list[str]) -> dict[str, AgentStatus]:
        """1. Step every agent in parallel; those that fail are listed in ``unreachable`` and marked unhealthy.

        VENs are not called: their reports to the VTN since the last cycle are their steps (waited for at most
        ``--ven-report-timeout-s``, while the other agents step)."""
        vens = [r for r in records if r.agent_type is AgentType.ven]
        records = [r for r in records if r.agent_type is not AgentType.ven] + vens
        if self.vens is not None and vens:
            timeout_s = self.settings.ven_report_timeout_s or self.settings.step_timeout_s
            stepped, reported = await asyncio.gather(
                self.calls.step_all(records[: len(records) - len(vens)], self.cycle_id),
                self.vens.collect(vens, timeout_s),
            )
            answers = [*stepped, *reported]
        else:
            answers = await self.calls.step_all(records, self.cycle_id)
        statuses: dict[str, AgentStatus] = {}
        moment = now()
        for record, answer in zip(records, answers, strict=True):
            if isinstance(answer, Exception):
                unreachable.append(record.agent_id)
                record.healthy = False
                logger.warning("cycle %d: %s", self.cycle, answer)
                continue
            if answer.started_from is StartedFrom.feeder:
                self.registry.note_start(record.agent_id, answer)
            # the record's own fields, set without pydantic's per-attribute hook (a tenth of this loop at 10,000
            # agents); the values are the answer's, already validated
            record.__dict__.update(
                last_status=answer, healthy=True, last_seen=moment, transformer_id=answer.transformer_id
            )
            statuses[record.agent_id] = answer
        return statuses

    def _assess(self, statuses: dict[str, AgentStatus]) -> Snapshot:
        """2. The feeder as the planners see it: every transformer's loading and every agent's flexibility."""
        view = None
        if self.network is not None:  # the AC power flow before planning, and the network linearised there
            self.network.assess(statuses.values(), self.cycle)
            view = self.network.view(statuses.values())
        return build_snapshot(statuses.values(), self.registry.transformer_ids(), self.registry.limits, view)

    async def _plan(self, snapshot: Snapshot) -> Plan:
        """3. The planner's plan, saying who decided (the ai planner falls back to the optimal plan, and says why)."""
        return await self.planning.plan(snapshot)

    async def _replan(
        self, plan: Plan, statuses: dict[str, AgentStatus], actions: list[ActionReport], unreachable: list[str]
    ) -> bool:
        """4b. With a network: when the AC check after acting still finds a limit broken, plan once more.

        The second plan is made on the network linearised afresh where the first plan left it, and sent when it
        has commands (the planner found, linearised, something that helps). At most one extra round a cycle;
        its commands and answers join the first's (``plan.commands``, ``actions``), its time the act phase's.
        The rule planner plans its own second round; the others' is the optimal LP (mpc's network rows and
        ai's fallback are that LP already, and a second call would record the step twice in mpc's history
        and ask the model twice). True when it ran.
        """
        if self.network is None:
            return False
        check = self.network.check(statuses.values())
        if not self.network.outside(check):
            return False
        view = self.network.view(statuses.values(), check)
        if view is None or not view.rows:
            return False
        snapshot = build_snapshot(statuses.values(), self.registry.transformer_ids(), self.registry.limits, view)
        again = plan_rule(snapshot) if self.planner == "rule" else plan_optimal(snapshot)
        if not again.commands:
            return False
        self.network.replans += 1
        actions += await self._act(again.commands, statuses, unreachable, snapshot, round_=2)
        plan.commands += again.commands
        return True

    async def _act(
        self,
        commands: list[Command],
        statuses: dict[str, AgentStatus],
        unreachable: list[str],
        snapshot: Snapshot,
        round_: int = 1,
    ) -> list[ActionReport]:
        """4. Send the commands; each agent's answer replaces its status, so the record sees the loading after.

        A VEN's command becomes an OpenADR 3 event (``sent``); the loading after counts it as followed."""
        records = self.registry.records
        vens = [c for c in commands if records[c.agent_id].agent_type is AgentType.ven]
        commands = [c for c in commands if records[c.agent_id].agent_type is not AgentType.ven]
        reports = self._send_events(vens, statuses, unreachable, snapshot)
        addressed = [
            (
                records[c.agent_id],
                {
                    "command_id": f"{self.run_id}-{self.cycle}-{c.agent_id}-{c.action.value}"
                    + (f"-r{round_}" if round_ > 1 else ""),
                    "action": c.action.value,
                    "power_kw": c.power_kw,
                },
            )
            for c in commands
        ]
        answers = await self.calls.curtail_all(addressed)
        for command, answer in zip(commands, answers, strict=True):
            transformer_id = statuses[command.agent_id].transformer_id
            if isinstance(answer, Exception):
                unreachable.append(command.agent_id)
                records[command.agent_id].healthy = False
                reports.append(_report(command, transformer_id, 0.0, "unreachable", str(answer)))
                continue
            statuses[command.agent_id] = answer.agent_status
            records[command.agent_id].last_status = answer.agent_status
            reports.append(_report(command, transformer_id, answer.applied_kw, answer.status, answer.reason))
        return reports

    def _send_events(
        self, commands: list[Command], statuses: dict[str, AgentStatus], unreachable: list[str], snapshot: Snapshot
    ) -> list[ActionReport]:
        """4b. Each VEN's command as an event of the feeder's program; its status moves by the shift it is told."""
        reports = []
        for command in commands:
            status = statuses[command.agent_id]
            assert self.vens is not None, "VEN agents exist only with --openadr3"
            try:
                event = self.vens.dispatch(
                    status, command.action, command.power_kw, snapshot.timestamp, snapshot.step_s
                )
            except PeerUnavailableError as exc:
                unreachable.append(command.agent_id)
                reports.append(_report(command, status.transformer_id, 0.0, "unreachable", exc.reason))
                continue
            shifted = status.net_power_kw + command.action.direction * command.power_kw
            statuses[command.agent_id] = status.model_copy(update={"net_power_kw": shifted})
            reason = f"OpenADR 3 event {event['id']}; the VEN reports what it applied (DELTA_USAGE)"
            reports.append(_report(command, status.transformer_id, command.power_kw, "sent", reason))
        return reports

    def _record(
        self,
        snapshot: Snapshot,
        plan: Plan,
        statuses: dict[str, AgentStatus],
        actions: list[ActionReport],
        unreachable: list[str],
        clock: PhaseClock,
        replanned: bool = False,
    ) -> CoordinationResult:
        """5. Loading before and after per transformer, the plan, who answered: logged, measured and answered."""
        after = feeder_loadings(statuses.values(), self.registry.transformer_ids())
        records = self.registry.records
        missing = [records[a].transformer_id for a in set(unreachable) if a in records and a not in statuses]
        reporting = Counter(s.transformer_id for s in statuses.values())
        reports = []
        for t in snapshot.transformers:
            rating, reverse = t.rating_kw, t.reverse_limit_kw
            loading_after = after.get(t.transformer_id, 0.0)
            reports.append(
                TransformerReport(
                    transformer_id=t.transformer_id,
                    rating_kw=rating,
                    reverse_limit_kw=reverse,
                    loading_before_kw=t.loading_kw,
                    loading_after_kw=loading_after,
                    state_before=classify_loading(t.loading_kw, rating, reverse),
                    state_after=classify_loading(loading_after, rating, reverse),
                    unfixed_kw=violation_kw(loading_after, rating, reverse),
                    agents_reporting=reporting[t.transformer_id],
                    agents_unreachable=missing.count(t.transformer_id),
                )
            )
        network = None
        if self.network is not None:  # the AC power flow after acting; where it converged, AC states stand
            network = self.network.record(statuses.values(), self.cycle, snapshot.timestamp)
            network = network.model_copy(
                update={
                    "replanned": replanned,
                    "replans": self.network.replans,
                    "sensitivity_refreshes": self.network.sensitivity.refreshes,
                    "constraint_rows": snapshot.network.rows if snapshot.network is not None else 0,
                }
            )
            reports = self.network.amend(reports)
        result = CoordinationResult(
            cycle=self.cycle,
            timestamp=snapshot.timestamp,
            step_s=snapshot.step_s if statuses else None,
            planner=plan.planner,
            fallback_reason=plan.fallback.reason if plan.fallback else None,
            fallback_kind=plan.fallback.kind if plan.fallback else None,
            transformers=reports,
            actions=actions,
            unreachable=sorted(set(unreachable)),
            agents_stepped=len(statuses),
            duration_ms=(time.perf_counter() - clock.started) * 1000,
            phase_ms=clock.phase_ms(),
            network=network,
        )
        self.recorder.record(result, list(records.values()))
        return result

    def close(self) -> None:
        self.recorder.close()


def _report(command: Command, transformer_id: str, applied_kw: float, status: str, reason: str | None) -> ActionReport:
    """What became of one command, for the cycle's result."""
    return ActionReport(
        agent_id=command.agent_id,
        transformer_id=transformer_id,
        action=command.action,
        requested_kw=command.power_kw,
        applied_kw=applied_kw,
        status=status,
        reason=reason,
    )
