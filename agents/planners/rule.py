"""The rule planner: a proportional baseline to compare the others with."""

from __future__ import annotations

import numpy as np

from agents.planners.base import MIN_COMMAND_KW, Command, Plan, Snapshot
from agents.planners.network import aimed_limits, net_shift_kw
from models.schemas import CurtailAction


def plan_rule(snapshot: Snapshot) -> Plan:
    """Spread each transformer's excess over every resource that can help, in proportion to its headroom.

    No ordering by cost: solar is curtailed and load shed alongside battery dispatch, which is
    what a simple operator rule does and what the optimal planner improves on.
    """
    plan = Plan("rule")
    for transformer in snapshot.transformers:
        if transformer.loading_kw > transformer.rating_kw:
            excess, actions = transformer.loading_kw - transformer.rating_kw, CurtailAction.moving(-1)
        elif transformer.loading_kw < -transformer.reverse_limit_kw:
            excess, actions = -transformer.reverse_limit_kw - transformer.loading_kw, CurtailAction.moving(+1)
        else:
            continue
        resources = [
            (agent.agent_id, action, agent.headroom_kw.get(action, 0.0))
            for agent in snapshot.agents_on(transformer.transformer_id)
            for action in actions
            if agent.headroom_kw.get(action, 0.0) > MIN_COMMAND_KW
        ]
        total = sum(h for _, _, h in resources)
        share = min(excess / total, 1.0) if total > 0 else 0.0
        for agent_id, action, headroom in resources:
            if headroom * share > MIN_COMMAND_KW:
                plan.commands.append(Command(agent_id=agent_id, action=action, power_kw=headroom * share))
    _network_response(snapshot, plan)
    return plan


def _network_response(snapshot: Snapshot, plan: Plan) -> None:
    """With a network: add commands until the linear estimate of every near-limit row is within its aimed limits.

    Row by row, worst first: the agents whose net power moves the row most (the largest |d row / d p|, e.g.
    PV at the end of a feeder for a voltage rise) act first, each as far as its remaining headroom allows,
    until the row's linear estimate is back inside. A simple operator's rule on the sensitivities, no optimum.
    """
    view = snapshot.network
    if view is None or not view.rows:
        return
    lower, upper = aimed_limits(view)
    used: dict[tuple[str, CurtailAction], float] = {}
    for command in plan.commands:
        used[command.agent_id, command.action] = used.get((command.agent_id, command.action), 0.0) + command.power_kw
    estimate = view.estimate(net_shift_kw(plan.commands))
    for r in np.argsort(-(np.maximum(estimate - upper, 0) + np.maximum(lower - estimate, 0))):
        excess = _excess(estimate[r], lower[r], upper[r])
        if excess == 0.0:
            continue
        levers = sorted(
            (
                (effect, agent.agent_id, action)
                for agent in snapshot.agents
                if (column := view.column_of(agent.agent_id)) is not None
                for action in CurtailAction
                if (effect := action.direction * view.sensitivity[r, column]) * excess < 0
            ),
            key=lambda lever: -abs(lever[0]),
        )
        for effect, agent_id, action in levers:
            if abs(excess) < 1e-12:
                break
            agent = next(a for a in snapshot.agents if a.agent_id == agent_id)
            room = agent.headroom_kw.get(action, 0.0) - used.get((agent_id, action), 0.0)
            power_kw = min(room, abs(excess / effect))
            if power_kw <= MIN_COMMAND_KW:
                continue
            plan.commands.append(Command(agent_id=agent_id, action=action, power_kw=power_kw))
            used[agent_id, action] = used.get((agent_id, action), 0.0) + power_kw
            estimate = view.estimate(net_shift_kw(plan.commands))
            excess = _excess(estimate[r], lower[r], upper[r])
    merged: dict[tuple[str, CurtailAction], float] = {}
    for command in plan.commands:  # one command per agent and action: the cycle names commands by both
        key = (command.agent_id, command.action)
        merged[key] = merged.get(key, 0.0) + command.power_kw
    plan.commands = [Command(agent_id=a, action=action, power_kw=kw) for (a, action), kw in merged.items()]


def _excess(value: float, lower: float, upper: float) -> float:
    """How far ``value`` is above ``upper`` (> 0) or below ``lower`` (< 0); 0 inside."""
    return value - upper if value > upper else value - lower if value < lower else 0.0
