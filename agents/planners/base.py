"""The planners' common vocabulary: a feeder snapshot and the commands that answer it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, Field

from models.grid import violation_kw
from models.schemas import AgentType, CurtailAction, FallbackKind, NonNegativeKw

#: Commands smaller than this are not worth a network call.
MIN_COMMAND_KW = 1e-4


@dataclass(frozen=True)
class TransformerSnapshot:
    """A transformer's limits and its loading (kW, > 0 = import) before any command."""

    transformer_id: str
    rating_kw: float
    reverse_limit_kw: float
    loading_kw: float

    @property
    def violation_kw(self) -> float:
        return violation_kw(self.loading_kw, self.rating_kw, self.reverse_limit_kw)


@dataclass(frozen=True)
class BatteryView:
    """An agent's battery as the planners see it this step: energies in kWh, powers in kW (> 0 charges).

    Built by ``agents.planners.snapshot.build_snapshot`` from the agent's report. ``reported`` is
    False for an agent that does not send its start-of-step SoC, efficiencies and local setpoint
    (one older than those fields): its figures are then the builder's stated assumptions.
    """

    energy_start_kwh: float  # stored when the step began, before any setpoint of this step acted
    energy_min_kwh: float
    energy_max_kwh: float
    charge_efficiency_fraction: float
    discharge_efficiency_fraction: float
    max_charge_kw: float  # power limits this step (a storage system's derated ones), >= 0
    max_discharge_kw: float
    local_setpoint_kw: float  # what the agent's own policy chose this step, before any command
    reported: bool = True


@dataclass(frozen=True)
class AgentFlex:
    """One agent as the planners see it: where it is, its powers (kW) and the most each action could still apply.

    Powers are as the agent's step left them (its local policy and any command still holding):
    ``net_power_kw`` > 0 imports; ``battery_power_kw`` > 0 charges; ``solar_available_kw`` is the
    PV on offer before curtailment, ``demand_kw`` the load before shedding, ``flexible_kw`` the
    part of it that may be shed; ``solar_capacity_kwp`` its PV's DC rating. An agent without a
    module reports 0 for it, and ``battery`` is None for an agent without a battery report.
    """

    agent_id: str
    transformer_id: str
    net_power_kw: float
    headroom_kw: dict[CurtailAction, float]
    battery_power_kw: float = 0.0
    agent_type: AgentType | None = None  # None: not known (a snapshot built by hand)
    solar_available_kw: float = 0.0
    solar_capacity_kwp: float = 0.0
    demand_kw: float = 0.0
    flexible_kw: float = 0.0
    battery: BatteryView | None = None

    @property
    def net_power_without_battery_kw(self) -> float:
        """The agent's net power were its battery idle (kW, > 0 imports)."""
        return self.net_power_kw - self.battery_power_kw

    @property
    def battery_charge_limit_kw(self) -> float:
        """The most charging power this step allows (kW, >= 0): the setpoint plus its charge headroom."""
        return max(self.battery_power_kw + self.headroom_kw.get(CurtailAction.charge_battery, 0.0), 0.0)

    @property
    def battery_discharge_limit_kw(self) -> float:
        """The most discharging power this step allows (kW, >= 0): the discharge headroom beyond the setpoint."""
        return max(self.headroom_kw.get(CurtailAction.discharge_battery, 0.0) - self.battery_power_kw, 0.0)

    @property
    def can_move_battery(self) -> bool:
        """True when the agent reports a battery or headroom to move one."""
        battery_actions = (CurtailAction.charge_battery, CurtailAction.discharge_battery)
        return self.battery is not None or any(self.headroom_kw.get(action, 0.0) > 0 for action in battery_actions)


@dataclass(frozen=True)
class Snapshot:
    """The feeder as the planner sees it."""

    transformers: tuple[TransformerSnapshot, ...]
    agents: tuple[AgentFlex, ...]
    timestamp: datetime | None = None  # simulated time of the step being planned
    step_s: float = 900.0

    def agents_on(self, transformer_id: str) -> list[AgentFlex]:
        return [a for a in self.agents if a.transformer_id == transformer_id]


class Command(BaseModel):
    """One command of a plan: shift ``agent_id``'s net power by ``power_kw`` through ``action``."""

    agent_id: str
    action: CurtailAction
    power_kw: NonNegativeKw = Field(description="kW, >= 0; the action fixes the direction")


@dataclass(frozen=True)
class Fallback:
    """Why a planner's own plan was not used: a kind from a fixed set, and the reason in words for people."""

    kind: FallbackKind
    reason: str


@dataclass
class Plan:
    """A planner's answer: who decided, the commands, and (when another planner's plan stands in) why.

    What a plan would leave outside the limits, were every command applied in full, is
    ``violations_after(snapshot, plan.commands)``; what it did leave, the cycle measures after acting.
    """

    planner: str  # who decided: "optimal", "rule", "mpc", "ai"...
    commands: list[Command] = field(default_factory=list)
    fallback: Fallback | None = None


def apply_plan(snapshot: Snapshot, commands: list[Command]) -> dict[str, float]:
    """Loading of each transformer after the commands, assuming each is applied in full."""
    where = {a.agent_id: a.transformer_id for a in snapshot.agents}
    loading = {t.transformer_id: t.loading_kw for t in snapshot.transformers}
    for command in commands:
        loading[where[command.agent_id]] += command.action.direction * command.power_kw
    return loading


def violations_after(snapshot: Snapshot, commands: list[Command]) -> dict[str, float]:
    """kW each transformer would still be outside its limits after the commands, each applied in full."""
    after = apply_plan(snapshot, commands)
    return {
        t.transformer_id: violation_kw(after[t.transformer_id], t.rating_kw, t.reverse_limit_kw)
        for t in snapshot.transformers
    }


class PlanFunction(Protocol):
    """A planner that decides at once, with no I/O (``plan_optimal``, ``plan_rule``, an ``MpcPlanner``).

    It may keep state across cycles (history, forecasts).
    """

    def __call__(self, snapshot: Snapshot) -> Plan: ...


class Planner(Protocol):
    """What the grid agent's cycle awaits each step: the ai planner, or any PlanFunction through ``SyncPlanner``."""

    async def plan(self, snapshot: Snapshot) -> Plan: ...

    async def aclose(self) -> None:
        """Release what the planner holds (the ai planner's HTTP client)."""
        ...


@dataclass(frozen=True)
class SyncPlanner:
    """A PlanFunction as a Planner: it answers at once, and holds nothing to release."""

    decide: PlanFunction

    async def plan(self, snapshot: Snapshot) -> Plan:
        return self.decide(snapshot)

    async def aclose(self) -> None:
        return None
