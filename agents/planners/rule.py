"""The rule planner: a proportional baseline to compare the others with."""

from __future__ import annotations

from agents.planners.base import MIN_COMMAND_KW, Command, Plan, Snapshot
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
    return plan
