"""Planners: a snapshot of the feeder in, a plan out. No I/O but the ai planner's model call."""

from collections.abc import Callable

from agents.planners.base import (
    AgentFlex,
    BatteryView,
    Command,
    Fallback,
    Plan,
    PlanFunction,
    Planner,
    Snapshot,
    SyncPlanner,
    TransformerSnapshot,
    apply_plan,
    violations_after,
)
from agents.planners.mpc import MpcPlanner
from agents.planners.optimal import plan_optimal
from agents.planners.rule import plan_rule

#: The planners that decide at once, by name; each call makes a fresh one (stateful ones keep their own
#: history). The ai planner needs a model client: ``agents.cycle.grid_agent.make_planner`` builds it.
PLANNERS: dict[str, Callable[[], PlanFunction]] = {
    "optimal": lambda: plan_optimal,
    "rule": lambda: plan_rule,
    "mpc": lambda: MpcPlanner(),
}

__all__ = [
    "PLANNERS",
    "AgentFlex",
    "BatteryView",
    "Command",
    "Fallback",
    "MpcPlanner",
    "Plan",
    "PlanFunction",
    "Planner",
    "Snapshot",
    "SyncPlanner",
    "TransformerSnapshot",
    "apply_plan",
    "plan_optimal",
    "plan_rule",
    "violations_after",
]
