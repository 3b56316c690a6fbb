"""The optimal planner: a linear program, solved with HiGHS (highspy), over one coordination step."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from agents.planners.base import MIN_COMMAND_KW, AgentFlex, Command, Plan, Snapshot
from agents.planners.lp import LpNotSolved, solve_lp
from models.schemas import CurtailAction

#: Cost of each kW of an action: the battery first, then solar curtailment, then load shedding.
ACTION_COST = {
    CurtailAction.charge_battery: 1.0,
    CurtailAction.discharge_battery: 1.0,
    CurtailAction.curtail_solar: 10.0,
    CurtailAction.shed_load: 100.0,
}
#: Cost of each kW by which a battery's own setpoint is merely held back (less charging or less
#: discharging): cheaper than driving it the other way, which costs a fresh cycle and its losses.
HOLD_BACK_COST = 0.5
#: Cost of each kW left outside a limit: dearer than any action, so slack is the last resort.
SLACK_COST = 10_000.0


def plan_optimal(snapshot: Snapshot) -> Plan:
    """Bring every transformer within its limits at the least weighted cost.

    minimise    sum_a c_a x_a + M sum_t (o_t + r_t)
    subject to  L_t + sum_{a on t} d_a x_a - o_t <= rating_t          (overload)
               -L_t - sum_{a on t} d_a x_a - r_t <= reverse_limit_t    (reverse flow)
                0 <= x_a <= headroom_a,  o_t, r_t >= 0
    where d_a = +1 for actions that raise net power and -1 for those that lower it. The slack
    o_t, r_t keeps the program feasible; what is left in it is reported as unfixed.
    Only agents on transformers outside their limits get variables: others would only add cost.
    A battery's shift is split in two variables: holding back what its local policy is doing
    (cost HOLD_BACK_COST) and going beyond it (full cost), so a charging battery is first told
    to charge less before another is told to discharge into it.
    """
    plan = Plan("optimal")
    troubled = [t for t in snapshot.transformers if t.violation_kw > 0]
    if not troubled:
        return plan
    row_of = {t.transformer_id: i for i, t in enumerate(troubled)}
    variables = [
        (agent.agent_id, row_of[agent.transformer_id], action, headroom, cost)
        for agent in snapshot.agents
        if agent.transformer_id in row_of
        for action, total in agent.headroom_kw.items()
        for headroom, cost in _segments(agent, action, total)
        if headroom > MIN_COMMAND_KW
    ]
    n_actions, n_t = len(variables), len(troubled)
    n = n_actions + 2 * n_t
    cost = np.empty(n)
    upper = np.full(n, np.inf)
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    for j, (_, t, action, headroom, unit_cost) in enumerate(variables):
        cost[j], upper[j] = unit_cost, headroom
        rows += [2 * t, 2 * t + 1]
        cols += [j, j]
        values += [float(action.direction), -float(action.direction)]
    upper_bound = np.empty(2 * n_t)
    for t, transformer in enumerate(troubled):
        over, reverse = n_actions + 2 * t, n_actions + 2 * t + 1
        cost[over] = cost[reverse] = SLACK_COST
        rows += [2 * t, 2 * t + 1]
        cols += [over, reverse]
        values += [-1.0, -1.0]
        upper_bound[2 * t] = transformer.rating_kw - transformer.loading_kw
        upper_bound[2 * t + 1] = transformer.reverse_limit_kw + transformer.loading_kw
    matrix = sp.csc_array((values, (rows, cols)), shape=(2 * n_t, n))
    try:
        x = solve_lp(cost, np.zeros(n), upper, np.full(2 * n_t, -np.inf), upper_bound, matrix)
    except LpNotSolved:  # cannot happen with slack; keep the cycle going with no commands
        return plan
    totals: dict[tuple[str, CurtailAction], float] = {}
    for j, (agent_id, _, action, _, _) in enumerate(variables):
        totals[agent_id, action] = totals.get((agent_id, action), 0.0) + float(x[j])
    for (agent_id, action), power_kw in totals.items():
        if power_kw > MIN_COMMAND_KW:
            plan.commands.append(Command(agent_id=agent_id, action=action, power_kw=power_kw))
    return plan


def _segments(agent: AgentFlex, action: CurtailAction, headroom_kw: float) -> list[tuple[float, float]]:
    """(headroom kW, cost per kW) pieces of one action, cheapest first.

    A battery action against the way the battery's setpoint moves net power holds that setpoint
    back first (towards idle), then drives the battery beyond it.
    """
    if action not in (CurtailAction.charge_battery, CurtailAction.discharge_battery):
        return [(headroom_kw, ACTION_COST[action])]
    held_back = min(max(-action.direction * agent.battery_power_kw, 0.0), headroom_kw)
    return [(held_back, HOLD_BACK_COST), (headroom_kw - held_back, ACTION_COST[action])]
