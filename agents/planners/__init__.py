"""Planners: a snapshot of the feeder in, a list of commands out. No I/O."""

from collections.abc import Callable

from agents.planners.base import (
    AgentFlex,
    BatteryView,
    Command,
    Plan,
    Planner,
    Snapshot,
    TransformerSnapshot,
    apply_plan,
    violations_after,
)
from agents.planners.mpc import MpcPlanner
from agents.planners.optimal import plan_optimal
from agents.planners.rule import plan_rule

#: Planner factories by name; each call makes a fresh planner (stateful ones keep their own history).
PLANNERS: dict[str, Callable[[], Planner]] = {"optimal": lambda: plan_optimal, "rule": lambda: plan_rule, "mpc": lambda: MpcPlanner()}

__all__ = ["PLANNERS", "AgentFlex", "BatteryView", "Command", "MpcPlanner", "Plan", "Planner", "Snapshot", "TransformerSnapshot", "apply_plan", "plan_optimal", "plan_rule", "violations_after"]
