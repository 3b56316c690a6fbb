"""The planners' common vocabulary: a feeder snapshot and the commands that answer it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, Field

from models.grid import violation_kw
from models.schemas import AgentStatus, CurtailAction, NonNegativeKw

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
class AgentFlex:
    """One agent: where it is, its net power, its battery's setpoint and the most each action could still apply (kW)."""

    agent_id: str
    transformer_id: str
    net_power_kw: float
    headroom_kw: dict[CurtailAction, float]
    battery_power_kw: float = 0.0  # > 0 charging, as the agent's local policy set it
    status: AgentStatus | None = None  # the whole report, for planners that look ahead


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


@dataclass
class Plan:
    """A planner's answer: its commands and the kW of violation it expects to remain."""

    commands: list[Command] = field(default_factory=list)
    unfixed_kw: dict[str, float] = field(default_factory=dict)


def apply_plan(snapshot: Snapshot, commands: list[Command]) -> dict[str, float]:
    """Loading of each transformer after the commands, assuming each is applied in full."""
    where = {a.agent_id: a.transformer_id for a in snapshot.agents}
    loading = {t.transformer_id: t.loading_kw for t in snapshot.transformers}
    for command in commands:
        loading[where[command.agent_id]] += command.action.direction * command.power_kw
    return loading


class Planner(Protocol):
    """Anything that turns a snapshot into a plan; may keep state across cycles (history, forecasts)."""

    def __call__(self, snapshot: Snapshot) -> Plan: ...
