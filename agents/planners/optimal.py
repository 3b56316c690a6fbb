"""The optimal planner: a linear program, solved with HiGHS (highspy), over one coordination step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from agents.planners.base import MIN_COMMAND_KW, AgentFlex, Command, Plan, Snapshot, apply_plan
from agents.planners.lp import LpNotSolved, solve_lp
from agents.planners.network import aimed_limits, net_shift_kw
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
#: Cost of each unit left outside a network row: SLACK_COST per mp.u. of voltage, per percent of loading.
NETWORK_SLACK_COST = {"vm": SLACK_COST * 1000.0, "line": SLACK_COST, "trafo": SLACK_COST}


def plan_optimal(snapshot: Snapshot) -> Plan:
    """Bring every transformer, and with a network every near-limit bus, line and transformer, within its limits.

    minimise    sum_a c_a x_a + M sum_t (o_t + r_t) + sum_r M_r (h_r + l_r)
    subject to  L_t + sum_{a on t} d_a x_a - o_t <= rating_t          (overload)
               -L_t - sum_{a on t} d_a x_a - r_t <= reverse_limit_t    (reverse flow)
                v_r + sum_a S_{r,bus(a)} d_a x_a - h_r <= upper_r - m_r  (network row r, linearised)
                v_r + sum_a S_{r,bus(a)} d_a x_a + l_r >= lower_r + m_r
                0 <= x_a <= headroom_a,  o_t, r_t, h_r, l_r >= 0
    where d_a = +1 for actions that raise net power and -1 for those that lower it. The slack
    o_t, r_t keeps the program feasible; what is left in it is reported as unfixed.
    Network rows (``snapshot.network``, with ``--network``) are the buses, lines and transformers near or past
    their limits: v_r a voltage (p.u.) or an AC loading (percent), S the sensitivities to each bus's net active
    power at the cycle's operating point (reactive power held as each agent's own). A loading is linear in p only
    near the operating point (it is a magnitude, so it kinks where the flow turns), hence the margin m_r
    (``agents.planners.network.LINEAR_MARGIN``; a row inside its limit but within the margin may stay where it
    is, not rise) and the AC check after acting. Their slack costs M_r = ``NETWORK_SLACK_COST``.
    Only agents on transformers outside their limits get variables, and with network rows every placed agent:
    others would only add cost.
    A battery's shift is split in two variables: holding back what its local policy is doing
    (cost HOLD_BACK_COST) and going beyond it (full cost), so a charging battery is first told
    to charge less before another is told to discharge into it.
    """
    plan = Plan("optimal")
    troubled = [t for t in snapshot.transformers if t.violation_kw > 0]
    network = snapshot.network if snapshot.network is not None and snapshot.network.rows else None
    if not troubled and network is None:
        return plan
    row_of = {t.transformer_id: i for i, t in enumerate(troubled)}
    variables = [
        (agent.agent_id, row_of.get(agent.transformer_id), action, headroom, cost)
        for agent in snapshot.agents
        if agent.transformer_id in row_of or (network is not None and network.column_of(agent.agent_id) is not None)
        for action, total in agent.headroom_kw.items()
        for headroom, cost in _segments(agent, action, total)
        if headroom > MIN_COMMAND_KW
    ]
    n_actions, n_t = len(variables), len(troubled)
    n_r = network.rows if network is not None else 0
    n = n_actions + 2 * n_t + 2 * n_r
    n_rows = 2 * n_t + 2 * n_r
    cost = np.empty(n)
    upper = np.full(n, np.inf)
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    for j, (agent_id, t, action, headroom, unit_cost) in enumerate(variables):
        cost[j], upper[j] = unit_cost, headroom
        if t is not None:
            rows += [2 * t, 2 * t + 1]
            cols += [j, j]
            values += [float(action.direction), -float(action.direction)]
        column = network.column_of(agent_id) if network is not None else None
        if column is not None:  # rows 2 n_t + 2 r (at most upper) and 2 n_t + 2 r + 1 (at least lower)
            for r in np.flatnonzero(network.sensitivity[:, column]):
                effect = float(action.direction * network.sensitivity[r, column])
                rows += [2 * n_t + 2 * r, 2 * n_t + 2 * r + 1]
                cols += [j, j]
                values += [effect, effect]
    row_lower = np.full(n_rows, -np.inf)
    row_upper = np.full(n_rows, np.inf)
    for t, transformer in enumerate(troubled):
        over, reverse = n_actions + 2 * t, n_actions + 2 * t + 1
        cost[over] = cost[reverse] = SLACK_COST
        rows += [2 * t, 2 * t + 1]
        cols += [over, reverse]
        values += [-1.0, -1.0]
        row_upper[2 * t] = transformer.rating_kw - transformer.loading_kw
        row_upper[2 * t + 1] = transformer.reverse_limit_kw + transformer.loading_kw
    aimed_lower, aimed_upper = aimed_limits(network) if network is not None else (None, None)
    for r in range(n_r):
        high, low = n_actions + 2 * n_t + 2 * r, n_actions + 2 * n_t + 2 * r + 1
        cost[high] = cost[low] = NETWORK_SLACK_COST[network.kind[r]]
        rows += [2 * n_t + 2 * r, 2 * n_t + 2 * r + 1]
        cols += [high, low]
        values += [-1.0, 1.0]
        row_upper[2 * n_t + 2 * r] = aimed_upper[r] - network.value[r]
        row_lower[2 * n_t + 2 * r + 1] = aimed_lower[r] - network.value[r]
    matrix = sp.csc_array((values, (rows, cols)), shape=(n_rows, n))
    try:
        x = solve_lp(cost, np.zeros(n), upper, row_lower, row_upper, matrix)
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


def residual_snapshot(snapshot: Snapshot, commands: list[Command]) -> Snapshot:
    """The snapshot as it would be after ``commands``, each applied in full: loadings moved, headroom used up,
    and network rows at their linear estimate (their sensitivities kept)."""
    after = apply_plan(snapshot, commands)
    used: dict[tuple[str, CurtailAction], float] = {}
    for c in commands:
        used[c.agent_id, c.action] = used.get((c.agent_id, c.action), 0.0) + c.power_kw
    network = snapshot.network
    if network is not None:
        network = replace(network, value=network.estimate(net_shift_kw(commands)))
    return replace(
        snapshot,
        transformers=tuple(replace(t, loading_kw=after[t.transformer_id]) for t in snapshot.transformers),
        agents=tuple(replace(a, headroom_kw=_headroom_left(a, used)) for a in snapshot.agents),
        network=network,
    )


def _headroom_left(agent: AgentFlex, used: dict[tuple[str, CurtailAction], float]) -> dict[CurtailAction, float]:
    """An agent's headroom less what commands already use of it (kW, >= 0)."""
    return {act: max(kw - used.get((agent.agent_id, act), 0.0), 0.0) for act, kw in agent.headroom_kw.items()}


def complete_plan(snapshot: Snapshot, commands: list[Command]) -> tuple[list[Command], bool]:
    """``commands`` plus what the optimal planner adds, on what they leave, to close the limits they leave open.

    Used where another plan is made without some rows (the mpc planner's horizon has no network rows; the ai
    planner's model rounds): merged per agent and action. True when anything was added.
    """
    residual = residual_snapshot(snapshot, commands)
    extra = plan_optimal(residual).commands
    if not extra:
        return commands, False
    total: dict[tuple[str, CurtailAction], float] = {}
    for c in [*commands, *extra]:
        total[c.agent_id, c.action] = total.get((c.agent_id, c.action), 0.0) + c.power_kw
    return [Command(agent_id=a, action=act, power_kw=kw) for (a, act), kw in total.items()], True
