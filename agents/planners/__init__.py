"""Planners: a snapshot of the feeder in, a list of commands out. Pure functions, no I/O."""

from agents.planners.base import AgentFlex, Command, Plan, Snapshot, TransformerSnapshot, apply_plan
from agents.planners.optimal import plan_optimal
from agents.planners.rule import plan_rule

PLANNERS = {"optimal": plan_optimal, "rule": plan_rule}

__all__ = ["PLANNERS", "AgentFlex", "Command", "Plan", "Snapshot", "TransformerSnapshot", "apply_plan", "plan_optimal", "plan_rule"]
