"""The multi-step linear program that the mpc planner and the perfect-foresight bound share.

One model of the physics, so that what the mpc planner optimises each cycle and what the bound
optimises over the whole year differ only in what they know. Pure: arrays in, arrays out.

Over steps t = 0..T-1 of length dt (h), for each transformer k and each battery b on it:

    minimise   sum_t [ sum_b (h hold_bt + a more_bt + a'_bt rev_bt)
                       + sum_f (c_u u_ft + c_s s_ft) + M (o_kt + r_kt) ]  -  v sum_b E_bT
    subject to E_b,t+1 = E_bt + dt (eta_c ch_bt - dis_bt / eta_d),   E_min <= E_bt <= E_max
              -R_k - r_kt <= L_kt + sum_b p_bt + sum_f (u_ft - s_ft) <= rating_k + o_kt
               0 <= u_ft <= curtail_max_ft,  0 <= s_ft <= shed_max_ft,  o, r >= 0

where L_kt is the loading forecast with every battery at its local-policy setpoint l_bt and no
curtailment or shedding, and the battery's power p_bt = ch_bt - dis_bt is written as a
deviation from l_bt in three parts: ``hold`` (towards idle, at most |l_bt|, cost h =
HOLD_BACK_COST), ``more`` (further the same way, up to the power limit, cost a = the battery's
ACTION_COST) and ``rev`` (the other way, cost a' >= a: see ``reversal_cost_per_kw``), each >= 0.
With l_bt >= 0: ch = l - hold + more, dis = rev; with l_bt < 0: ch = rev, dis = |l| - hold + more.
Following the local setpoint therefore costs nothing, and the costs keep the order of the
optimal planner: holding back, then driving a battery, then curtailing solar (c_u), then
shedding load (c_s), slack (M) last. A pool of batteries (``takes_over``) stands for their sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from agents.planners.lp import LpNotSolved, solve_lp
from agents.planners.optimal import ACTION_COST, HOLD_BACK_COST, SLACK_COST
from models.schemas import CurtailAction
from models.units import seconds_to_hours

BATTERY_COST = ACTION_COST[CurtailAction.charge_battery]
CURTAIL_COST = ACTION_COST[CurtailAction.curtail_solar]
SHED_COST = ACTION_COST[CurtailAction.shed_load]


def reversal_cost_per_kw(charge_efficiency_fraction, discharge_efficiency_fraction):
    """Cost of each kW by which a battery is driven against its own setpoint (its policy charging, told to discharge, or the reverse).

    Charging and discharging in one step burns (1/eta_d - eta_c) kWh per kWh moved, which a linear
    program would use to make room instead of curtailing solar when that is cheaper. Holding back
    less (saving HOLD_BACK_COST) while reversing more is exactly that, so reversing costs at least
    HOLD_BACK_COST plus the curtailment the burnt energy would have saved (and 5 % more): then an
    optimum gains nothing by charging and discharging one battery at once, and its schedules are
    ones a battery can follow. Burning by trading energy between two batteries stays possible
    (real batteries can), at their ordinary costs.
    """
    burnt = 1.0 / np.asarray(discharge_efficiency_fraction) - np.asarray(charge_efficiency_fraction)
    return np.maximum(BATTERY_COST, HOLD_BACK_COST + 1.05 * CURTAIL_COST * burnt)


@dataclass(frozen=True)
class HorizonBattery:
    """One battery (or a pool of alike ones) over its span of steps; arrays have one value per step of it.

    Powers in kW (> 0 charges), energies in kWh. The span starts at ``first_step`` and is as long
    as ``setpoint_kw``. A battery that ``takes_over`` others starts with the energy they hold at
    the end of their spans (which must end at its ``first_step``): so a pool can stand in for
    several batteries after their first steps, which keeps a long horizon small.
    """

    transformer: int  # index into the problem's transformers
    energy_min_kwh: float
    energy_max_kwh: float
    charge_efficiency_fraction: float
    discharge_efficiency_fraction: float
    setpoint_kw: np.ndarray  # the local policy's setpoint; following it costs nothing
    max_charge_kw: np.ndarray  # most charging power allowed in each step (>= 0)
    max_discharge_kw: np.ndarray  # most discharging power allowed in each step (>= 0)
    energy_kwh: float = 0.0  # stored at the start of the span (ignored when it takes over)
    first_step: int = 0
    takes_over: tuple[int, ...] = ()
    terminal_energy_kwh: float | None = None  # floor on the energy stored at the span's end


@dataclass(frozen=True)
class HorizonFlex:
    """Solar that may be curtailed and load that may be shed at one place, per step of its span (kW, >= 0)."""

    transformer: int
    curtail_max_kw: np.ndarray
    shed_max_kw: np.ndarray
    first_step: int = 0


@dataclass(frozen=True)
class HorizonProblem:
    """Everything the program needs; ``loading_kw`` is (transformers, steps) with batteries at their setpoints."""

    step_s: float
    loading_kw: np.ndarray
    rating_kw: np.ndarray  # per transformer (or per transformer and step)
    reverse_limit_kw: np.ndarray  # per transformer (or per transformer and step)
    batteries: list[HorizonBattery] = field(default_factory=list)
    flex: list[HorizonFlex] = field(default_factory=list)
    step_weight: np.ndarray | None = None  # multiplies every cost of a step (default 1)
    terminal_value_per_kwh: float = 0.0  # worth of each kWh left stored at the end of a span reaching the horizon's end
    reversal_premium: bool = (
        True  # False: reversing costs BATTERY_COST, and an optimum may burn energy (see reversal_cost_per_kw)
    )


@dataclass(frozen=True)
class HorizonSolution:
    """The optimum, per step; a battery's entries outside its span are 0 (power) and NaN (energy)."""

    battery_power_kw: np.ndarray  # (batteries, T), > 0 charges
    energy_kwh: np.ndarray  # (batteries, T + 1), stored at each step's start and at the end
    curtail_kw: np.ndarray  # (flex, T), 0 outside a flex's span
    shed_kw: np.ndarray  # (flex, T)
    overload_kw: np.ndarray  # (transformers, T) left above the rating
    reverse_kw: np.ndarray  # (transformers, T) left beyond the reverse limit
    cost: float


class HorizonInfeasible(RuntimeError):
    """HiGHS found no optimum; with slack on every limit this means inconsistent inputs (energy outside its window)."""


@dataclass
class _Builder:
    """Columns and sparse rows of the program as they are added."""

    cost: list[np.ndarray] = field(default_factory=list)
    lower: list[np.ndarray] = field(default_factory=list)
    upper: list[np.ndarray] = field(default_factory=list)
    keep: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    ub: tuple[list, list, list] = field(default_factory=lambda: ([], [], []))
    eq: tuple[list, list, list] = field(default_factory=lambda: ([], [], []))

    def columns(self, cost: np.ndarray, lower: np.ndarray, upper: np.ndarray, always: bool = False) -> np.ndarray:
        """Add len(cost) variables; those fixed at 0 are dropped before solving unless ``always``."""
        index = self.n + np.arange(len(cost))
        self.n += len(cost)
        self.cost.append(np.asarray(cost, dtype=float))
        self.lower.append(np.asarray(lower, dtype=float))
        self.upper.append(np.asarray(upper, dtype=float))
        self.keep.append(np.full(len(cost), True) if always else np.asarray(upper, dtype=float) > 0)
        return index

    @staticmethod
    def add(target: tuple[list, list, list], rows: np.ndarray, cols: np.ndarray, vals: np.ndarray | float) -> None:
        """Add entries ``vals`` at (rows, cols); a scalar value goes to every entry."""
        rows = np.asarray(rows).ravel()
        target[0].append(rows)
        target[1].append(np.asarray(cols).ravel())
        target[2].append(np.full(rows.size, vals, dtype=float) if np.isscalar(vals) else np.asarray(vals, dtype=float).ravel())


def solve_horizon(problem: HorizonProblem) -> HorizonSolution:
    """Build the sparse program described in the module docstring and solve it with HiGHS."""
    loading = np.atleast_2d(np.asarray(problem.loading_kw, dtype=float))
    n_k, n_t = loading.shape
    hours = seconds_to_hours(problem.step_s)
    weight = np.ones(n_t) if problem.step_weight is None else np.asarray(problem.step_weight, dtype=float)
    build = _Builder()
    base = loading.copy()
    eq_rhs = []
    n_eq = 0

    def loading_terms(k: int, steps: np.ndarray, cols: np.ndarray, coef: np.ndarray | float) -> None:
        # row 2 (k T + t) bounds the overload side of step t, the next row the reverse side
        build.add(build.ub, 2 * (k * n_t + steps), cols, coef)
        build.add(build.ub, 2 * (k * n_t + steps) + 1, cols, -np.asarray(coef))

    # batteries with the same span are built together, a row per battery; earlier spans first, so
    # that a pool finds the energy columns of the batteries it takes over
    groups: dict[tuple[int, int], list[int]] = {}
    for i, b in enumerate(problem.batteries):
        groups.setdefault((b.first_step, len(b.setpoint_kw)), []).append(i)
    spans: dict[int, tuple] = {}
    for (first, m), members in sorted(groups.items()):
        group = [problem.batteries[i] for i in members]
        g = len(group)
        steps = first + np.arange(m)
        max_ch = np.maximum(np.array([b.max_charge_kw for b in group], dtype=float), 0.0)
        max_dis = np.maximum(np.array([b.max_discharge_kw for b in group], dtype=float), 0.0)
        setpoint = np.minimum(np.maximum(np.array([b.setpoint_kw for b in group], dtype=float), -max_dis), max_ch)
        charging = setpoint >= 0
        sign = np.where(charging, 1.0, -1.0)
        magnitude = np.abs(setpoint)
        zeros = np.zeros(g * m)
        step_cost = np.tile(weight[steps], g)
        hold = build.columns(HOLD_BACK_COST * step_cost, zeros, magnitude.ravel()).reshape(g, m)
        more = build.columns(BATTERY_COST * step_cost, zeros, (np.where(charging, max_ch, max_dis) - magnitude).ravel()).reshape(
            g, m
        )
        eta_c = np.array([[b.charge_efficiency_fraction] for b in group])
        eta_d = np.array([[b.discharge_efficiency_fraction] for b in group])
        # reversing a battery that its policy drives costs more than the energy it could burn is
        # worth: holding back less and reversing more would charge and discharge at once, which
        # the program allows but no battery does (see reversal_cost_per_kw)
        reverse_cost = np.where((magnitude > 0) & problem.reversal_premium, reversal_cost_per_kw(eta_c, eta_d), BATTERY_COST)
        rev = build.columns((reverse_cost * weight[steps]).ravel(), zeros, np.where(charging, max_dis, max_ch).ravel()).reshape(
            g, m
        )
        e_low = np.repeat([[b.energy_min_kwh] for b in group], m, axis=1)
        e_high = np.repeat([[b.energy_max_kwh] for b in group], m, axis=1)
        for j, b in enumerate(group):
            if b.terminal_energy_kwh is not None:
                e_low[j, -1] = min(max(b.terminal_energy_kwh, b.energy_min_kwh), b.energy_max_kwh)
        e_cost = np.zeros((g, m))
        if steps[-1] == n_t - 1:
            e_cost[:, -1] = -problem.terminal_value_per_kwh
        energy = build.columns(e_cost.ravel(), e_low.ravel(), e_high.ravel(), always=True).reshape(g, m)
        k = np.array([b.transformer for b in group])[:, None]
        ub_rows = 2 * (k * n_t + steps[None, :])
        np.add.at(base, (np.broadcast_to(k, (g, m)), np.broadcast_to(steps, (g, m))), setpoint)
        for cols, coef in ((hold, -sign), (more, sign), (rev, -sign)):
            build.add(build.ub, ub_rows, cols, coef)
            build.add(build.ub, ub_rows + 1, cols, -coef)
        # E_{t+1} - E_t + (kWh stored per kW of each part) x = kWh stored at the setpoint
        per_same = np.where(charging, eta_c, 1.0 / eta_d) * hours
        per_other = np.where(charging, 1.0 / eta_d, eta_c) * hours
        rows = n_eq + np.arange(g * m).reshape(g, m)
        n_eq += g * m
        build.add(build.eq, rows, energy, 1.0)
        build.add(build.eq, rows[:, 1:], energy[:, :-1], -1.0)
        build.add(build.eq, rows, hold, sign * per_same)
        build.add(build.eq, rows, more, -sign * per_same)
        build.add(build.eq, rows, rev, sign * per_other)
        rhs = sign * per_same * magnitude
        for j, b in enumerate(group):
            if b.takes_over:
                for other in b.takes_over:
                    build.add(build.eq, rows[j, :1], spans[other][6][-1:], -1.0)
            else:
                rhs[j, 0] += b.energy_kwh
        eq_rhs.append(rhs.ravel())
        for j, i in enumerate(members):
            spans[i] = (steps, setpoint[j], sign[j], hold[j], more[j], rev[j], energy[j])
    flex_cols = []
    for f in problem.flex:
        steps = f.first_step + np.arange(len(f.curtail_max_kw))
        u = build.columns(
            CURTAIL_COST * weight[steps], np.zeros(len(steps)), np.maximum(np.asarray(f.curtail_max_kw, dtype=float), 0.0)
        )
        s = build.columns(
            SHED_COST * weight[steps], np.zeros(len(steps)), np.maximum(np.asarray(f.shed_max_kw, dtype=float), 0.0)
        )
        loading_terms(f.transformer, steps, u, float(CurtailAction.curtail_solar.direction))
        loading_terms(f.transformer, steps, s, float(CurtailAction.shed_load.direction))
        flex_cols.append((steps, u, s))
    slack_cols = []
    for k in range(n_k):
        steps = np.arange(n_t)
        o = build.columns(SLACK_COST * weight, np.zeros(n_t), np.full(n_t, np.inf), always=True)
        r = build.columns(SLACK_COST * weight, np.zeros(n_t), np.full(n_t, np.inf), always=True)
        build.add(build.ub, 2 * (k * n_t + steps), o, -1.0)
        build.add(build.ub, 2 * (k * n_t + steps) + 1, r, -1.0)
        slack_cols.append((o, r))
    rating = np.broadcast_to(np.asarray(problem.rating_kw, dtype=float).reshape(n_k, -1), (n_k, n_t))
    reverse = np.broadcast_to(np.asarray(problem.reverse_limit_kw, dtype=float).reshape(n_k, -1), (n_k, n_t))
    b_ub = np.empty(2 * n_k * n_t)
    b_ub[0::2] = (rating - base).ravel()
    b_ub[1::2] = (reverse + base).ravel()

    keep = np.concatenate(build.keep)
    new_index = np.cumsum(keep) - 1
    cost, lower, upper = (np.concatenate(a)[keep] for a in (build.cost, build.lower, build.upper))
    # one matrix: the loading rows (<= b_ub), then the energy rows (= rhs)
    n_ub = 2 * n_k * n_t
    rows, cols, vals = (np.concatenate(ub + eq) for ub, eq in zip(build.ub, build.eq))
    rows[sum(len(r) for r in build.ub[0]) :] += n_ub
    mask = keep[cols]
    matrix = sp.csc_array((vals[mask], (rows[mask], new_index[cols[mask]])), shape=(n_ub + n_eq, int(keep.sum())))
    rhs = np.concatenate(eq_rhs) if n_eq else np.empty(0)
    try:
        solution = solve_lp(cost, lower, upper, np.concatenate((np.full(n_ub, -np.inf), rhs)), np.concatenate((b_ub, rhs)), matrix)
    except LpNotSolved as exc:
        raise HorizonInfeasible(str(exc)) from exc
    x = np.zeros(build.n)
    x[keep] = solution
    n_b = len(problem.batteries)
    power = np.zeros((n_b, n_t))
    energy = np.full((n_b, n_t + 1), np.nan)
    for i, b in enumerate(problem.batteries):
        steps, setpoint, sign, hold, more, rev, stored = spans[i]
        power[i, steps] = setpoint + sign * (x[more] - x[hold] - x[rev])
        energy[i, steps + 1] = x[stored]
        energy[i, steps[0]] = sum(x[spans[j][6][-1]] for j in b.takes_over) if b.takes_over else b.energy_kwh
    curtail = np.zeros((len(flex_cols), n_t))
    shed = np.zeros((len(flex_cols), n_t))
    for i, (steps, u, s) in enumerate(flex_cols):
        curtail[i, steps], shed[i, steps] = x[u], x[s]
    return HorizonSolution(
        battery_power_kw=power,
        energy_kwh=energy,
        curtail_kw=curtail,
        shed_kw=shed,
        overload_kw=np.array([x[o] for o, _ in slack_cols]),
        reverse_kw=np.array([x[r] for _, r in slack_cols]),
        cost=float(cost @ solution),
    )
