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

With ``network`` rows (``HorizonNetwork``: the network linearised at each step's operating point, as
``agents.planners.network`` describes), each row r at its step t adds

    lower_r <= v_r + sum_b S_rb (p_bt - l_bt) + sum_f S_rf (u_ft - s_ft) - h_r + m_r <= upper_r,   h, m >= 0

where v_r is the row's value with every battery at its setpoint and nothing curtailed or shed, S the
sensitivities to each battery's and each flexibility's net power (per kW, > 0 imports), and h_r, m_r
its slack at the row's own cost per unit (``slack_cost``), as in the optimal planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    """Cost of each kW by which a battery is driven against its own setpoint.

    That is: its policy charging, told to discharge, or the reverse.

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
class HorizonNetwork:
    """Linearised network limits, each row at one step (see the module docstring); arrays have one value per row.

    Sensitivities are per kW of net power (> 0 imports): a battery charging raises its bus's net power, curtailing
    solar raises it, shedding load lowers it.
    """

    step: np.ndarray  # the step each row holds at
    value: np.ndarray  # with every battery at its setpoint and nothing curtailed or shed (p.u. or percent)
    lower: np.ndarray  # -inf where there is no lower limit
    upper: np.ndarray
    battery_sensitivity: np.ndarray  # (rows, batteries)
    flex_sensitivity: np.ndarray  # (rows, flex)
    slack_cost: np.ndarray  # per unit left outside the row's limits


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
    network: HorizonNetwork | None = None  # linearised network rows (the perfect-foresight bound on a network)


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
    network_outside: np.ndarray | None = None  # per network row: left outside its limits by the linear estimate


class HorizonInfeasible(RuntimeError):
    """HiGHS found no optimum; with slack on every limit this means inconsistent inputs (energy outside its window)."""


@dataclass
class _Entries:
    """Sparse matrix entries as they are added: row indices, column indices and values, in parallel lists."""

    rows: list[np.ndarray] = field(default_factory=list)
    cols: list[np.ndarray] = field(default_factory=list)
    vals: list[np.ndarray] = field(default_factory=list)

    def add(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray | float) -> None:
        """Add entries ``vals`` at (rows, cols); a scalar value goes to every entry."""
        rows = np.asarray(rows).ravel()
        self.rows.append(rows)
        self.cols.append(np.asarray(cols).ravel())
        values = np.full(rows.size, vals, dtype=float) if np.isscalar(vals) else np.asarray(vals, dtype=float).ravel()
        self.vals.append(values)

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.rows)


@dataclass
class _Builder:
    """Columns and sparse rows of the program as they are added.

    Two rows per transformer and step bound its loading (``2 (k T + t)`` the overload side, the
    next the reverse side: ``upper``); then one energy row per battery and step (``energy``,
    with right-hand sides ``energy_rhs``).
    """

    n_t: int  # steps
    cost: list[np.ndarray] = field(default_factory=list)
    lower: list[np.ndarray] = field(default_factory=list)
    upper: list[np.ndarray] = field(default_factory=list)
    keep: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    loading_rows: _Entries = field(default_factory=_Entries)
    energy_rows: _Entries = field(default_factory=_Entries)
    energy_rhs: list[np.ndarray] = field(default_factory=list)
    n_energy: int = 0
    network_rows: _Entries = field(default_factory=_Entries)  # ranged rows after the energy rows
    network_lower: np.ndarray = field(default_factory=lambda: np.empty(0))
    network_upper: np.ndarray = field(default_factory=lambda: np.empty(0))

    def columns(self, cost: np.ndarray, lower: np.ndarray, upper: np.ndarray, always: bool = False) -> np.ndarray:
        """Add len(cost) variables; those fixed at 0 are dropped before solving unless ``always``."""
        index = self.n + np.arange(len(cost))
        self.n += len(cost)
        self.cost.append(np.asarray(cost, dtype=float))
        self.lower.append(np.asarray(lower, dtype=float))
        self.upper.append(np.asarray(upper, dtype=float))
        self.keep.append(np.full(len(cost), True) if always else np.asarray(upper, dtype=float) > 0)
        return index

    def overload_row(self, k: np.ndarray | int, steps: np.ndarray) -> np.ndarray:
        """The row bounding transformer k's loading from above at each step (the reverse side is the next row)."""
        return 2 * (k * self.n_t + steps)

    def loading_terms(self, k: np.ndarray | int, steps: np.ndarray, cols: np.ndarray, coef: np.ndarray | float) -> None:
        """Columns that add ``coef`` kW each to transformer k's loading at ``steps`` (both of its rows)."""
        rows = self.overload_row(k, steps)
        self.loading_rows.add(rows, cols, coef)
        self.loading_rows.add(rows + 1, cols, -np.asarray(coef))

    def energy_row_block(self, shape: tuple[int, int]) -> np.ndarray:
        """New energy rows, one per entry of ``shape`` (batteries, steps)."""
        rows = self.n_energy + np.arange(shape[0] * shape[1]).reshape(shape)
        self.n_energy += rows.size
        return rows


@dataclass(frozen=True)
class _Span:
    """One battery's columns over its span of steps (indices into the program's columns)."""

    steps: np.ndarray
    setpoint_kw: np.ndarray  # the local setpoint, within the power limits
    sign: np.ndarray  # +1 where the setpoint charges (or idles), -1 where it discharges
    hold: np.ndarray
    more: np.ndarray
    rev: np.ndarray
    energy: np.ndarray  # energy stored at the end of each step

    def power_kw(self, x: np.ndarray) -> np.ndarray:
        """The battery's power at each step of the span in solution ``x``."""
        return self.setpoint_kw + self.sign * (x[self.more] - x[self.hold] - x[self.rev])


@dataclass(frozen=True)
class _GroupColumns:
    """The columns of batteries that share a span: (batteries, steps) arrays, a row per battery."""

    steps: np.ndarray
    setpoint_kw: np.ndarray
    sign: np.ndarray
    hold: np.ndarray
    more: np.ndarray
    rev: np.ndarray
    energy: np.ndarray

    def span(self, j: int) -> _Span:
        """Battery j's own columns."""
        return _Span(
            self.steps, self.setpoint_kw[j], self.sign[j], self.hold[j], self.more[j], self.rev[j], self.energy[j]
        )


@dataclass(frozen=True)
class _FlexColumns:
    """One flexibility's curtailment and shedding columns over its steps."""

    steps: np.ndarray
    curtail: np.ndarray
    shed: np.ndarray


@dataclass(frozen=True)
class _SlackColumns:
    """One transformer's slack columns: kW left above its rating and beyond its reverse limit, per step."""

    overload: np.ndarray
    reverse: np.ndarray


def solve_horizon(problem: HorizonProblem) -> HorizonSolution:
    """Build the sparse program described in the module docstring and solve it with HiGHS."""
    loading = np.atleast_2d(np.asarray(problem.loading_kw, dtype=float))
    n_k, n_t = loading.shape
    weight = np.ones(n_t) if problem.step_weight is None else np.asarray(problem.step_weight, dtype=float)
    build = _Builder(n_t=n_t)
    base = loading.copy()  # the loading with every battery at its setpoint, completed as batteries are added
    spans = _add_batteries(build, problem, base, weight)
    flex = [_add_flex(build, f, weight) for f in problem.flex]
    slack = [_add_slack(build, k, weight) for k in range(n_k)]
    network_slack = _add_network(build, problem.network, spans, flex) if problem.network is not None else None
    x, cost = _solve(build, problem, base)
    solution = _solution(problem, x, cost, spans, flex, slack)
    if network_slack is not None:
        solution = replace(solution, network_outside=x[network_slack[0]] + x[network_slack[1]])
    return solution


def _add_network(
    build: _Builder, network: HorizonNetwork, spans: dict[int, _Span], flex: list[_FlexColumns]
) -> tuple[np.ndarray, np.ndarray]:
    """The network rows of the module docstring; answers their slack columns (above the upper, below the lower)."""
    n_r = len(network.step)
    step = np.asarray(network.step, dtype=np.int64)
    rows = np.arange(n_r)
    for b, span in spans.items():
        at = step - span.steps[0]
        inside = (at >= 0) & (at < len(span.steps)) & (network.battery_sensitivity[:, b] != 0)
        r, k = rows[inside], at[inside]
        coef = network.battery_sensitivity[r, b] * span.sign[k]  # p - l = sign (more - hold - rev)
        for cols, factor in ((span.more, 1.0), (span.hold, -1.0), (span.rev, -1.0)):
            build.network_rows.add(r, cols[k], factor * coef)
    for f, columns in enumerate(flex):
        at = step - columns.steps[0]
        inside = (at >= 0) & (at < len(columns.steps)) & (network.flex_sensitivity[:, f] != 0)
        r, k = rows[inside], at[inside]
        coef = network.flex_sensitivity[r, f]
        build.network_rows.add(r, columns.curtail[k], float(CurtailAction.curtail_solar.direction) * coef)
        build.network_rows.add(r, columns.shed[k], float(CurtailAction.shed_load.direction) * coef)
    unbounded = np.full(n_r, np.inf)
    high = build.columns(np.asarray(network.slack_cost, dtype=float), np.zeros(n_r), unbounded, always=True)
    low = build.columns(np.asarray(network.slack_cost, dtype=float), np.zeros(n_r), unbounded, always=True)
    build.network_rows.add(rows, high, -1.0)
    build.network_rows.add(rows, low, 1.0)
    value = np.asarray(network.value, dtype=float)
    build.network_lower = np.asarray(network.lower, dtype=float) - value
    build.network_upper = np.asarray(network.upper, dtype=float) - value
    return high, low


def _add_batteries(build: _Builder, problem: HorizonProblem, base: np.ndarray, weight: np.ndarray) -> dict[int, _Span]:
    """Every battery's columns and rows, by index in ``problem.batteries``; adds their setpoints to ``base``.

    Batteries with the same span are built together, a row per battery; earlier spans first, so
    that a pool finds the energy columns of the batteries it takes over.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, b in enumerate(problem.batteries):
        groups.setdefault((b.first_step, len(b.setpoint_kw)), []).append(i)
    spans: dict[int, _Span] = {}
    for (first, m), members in sorted(groups.items()):
        group = [problem.batteries[i] for i in members]
        new = _add_battery_group(build, problem, group, first + np.arange(m), base, weight, spans)
        spans.update(zip(members, new, strict=True))
    return spans


def _add_battery_group(
    build: _Builder,
    problem: HorizonProblem,
    group: list[HorizonBattery],
    steps: np.ndarray,
    base: np.ndarray,
    weight: np.ndarray,
    spans: dict[int, _Span],
) -> list[_Span]:
    """The columns and rows of batteries sharing one span of ``steps``, a row of each array per battery."""
    g, m = len(group), len(steps)
    max_ch = np.maximum(np.array([b.max_charge_kw for b in group], dtype=float), 0.0)
    max_dis = np.maximum(np.array([b.max_discharge_kw for b in group], dtype=float), 0.0)
    setpoint = np.minimum(np.maximum(np.array([b.setpoint_kw for b in group], dtype=float), -max_dis), max_ch)
    charging = setpoint >= 0
    sign = np.where(charging, 1.0, -1.0)
    magnitude = np.abs(setpoint)
    zeros = np.zeros(g * m)
    step_cost = np.tile(weight[steps], g)
    hold = build.columns(HOLD_BACK_COST * step_cost, zeros, magnitude.ravel()).reshape(g, m)
    more_room = np.where(charging, max_ch, max_dis) - magnitude
    more = build.columns(BATTERY_COST * step_cost, zeros, more_room.ravel()).reshape(g, m)
    eta_c = np.array([[b.charge_efficiency_fraction] for b in group])
    eta_d = np.array([[b.discharge_efficiency_fraction] for b in group])
    # reversing a battery that its policy drives costs more than the energy it could burn is
    # worth: holding back less and reversing more would charge and discharge at once, which
    # the program allows but no battery does (see reversal_cost_per_kw)
    driven = (magnitude > 0) & problem.reversal_premium
    reverse_cost = np.where(driven, reversal_cost_per_kw(eta_c, eta_d), BATTERY_COST)
    rev_room = np.where(charging, max_dis, max_ch)
    rev = build.columns((reverse_cost * weight[steps]).ravel(), zeros, rev_room.ravel()).reshape(g, m)
    energy = build.columns(*_energy_bounds(problem, group, steps), always=True).reshape(g, m)
    k = np.array([b.transformer for b in group])[:, None]
    np.add.at(base, (np.broadcast_to(k, (g, m)), np.broadcast_to(steps, (g, m))), setpoint)
    for cols, coef in ((hold, -sign), (more, sign), (rev, -sign)):
        build.loading_terms(k, steps[None, :], cols, coef)
    columns = _GroupColumns(steps, setpoint, sign, hold, more, rev, energy)
    _add_energy_balance(build, problem, group, columns, spans)
    return [columns.span(j) for j in range(g)]


def _add_energy_balance(
    build: _Builder,
    problem: HorizonProblem,
    group: list[HorizonBattery],
    columns: _GroupColumns,
    spans: dict[int, _Span],
) -> None:
    """Each step's energy row: E_{t+1} - E_t + (kWh stored per kW of each part) x = kWh stored at the setpoint.

    A battery's first step starts from its ``energy_kwh``, a pool's from the energy the batteries
    it takes over hold at the end of their spans (already in ``spans``).
    """
    hours = seconds_to_hours(problem.step_s)
    sign, hold, more, rev, energy = columns.sign, columns.hold, columns.more, columns.rev, columns.energy
    charging = sign > 0
    eta_c = np.array([[b.charge_efficiency_fraction] for b in group])
    eta_d = np.array([[b.discharge_efficiency_fraction] for b in group])
    per_same = np.where(charging, eta_c, 1.0 / eta_d) * hours
    per_other = np.where(charging, 1.0 / eta_d, eta_c) * hours
    rows = build.energy_row_block(energy.shape)
    build.energy_rows.add(rows, energy, 1.0)
    build.energy_rows.add(rows[:, 1:], energy[:, :-1], -1.0)
    build.energy_rows.add(rows, hold, sign * per_same)
    build.energy_rows.add(rows, more, -sign * per_same)
    build.energy_rows.add(rows, rev, sign * per_other)
    rhs = sign * per_same * np.abs(columns.setpoint_kw)
    for j, b in enumerate(group):
        if b.takes_over:
            for other in b.takes_over:
                build.energy_rows.add(rows[j, :1], spans[other].energy[-1:], -1.0)
        else:
            rhs[j, 0] += b.energy_kwh
    build.energy_rhs.append(rhs.ravel())


def _energy_bounds(
    problem: HorizonProblem, group: list[HorizonBattery], steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cost, lower, upper) of the energy columns of a group: the window, a terminal floor, the terminal value."""
    m = len(steps)
    e_low = np.repeat([[b.energy_min_kwh] for b in group], m, axis=1)
    e_high = np.repeat([[b.energy_max_kwh] for b in group], m, axis=1)
    for j, b in enumerate(group):
        if b.terminal_energy_kwh is not None:
            e_low[j, -1] = min(max(b.terminal_energy_kwh, b.energy_min_kwh), b.energy_max_kwh)
    e_cost = np.zeros((len(group), m))
    if steps[-1] == problem.loading_kw.shape[-1] - 1:
        e_cost[:, -1] = -problem.terminal_value_per_kwh
    return e_cost.ravel(), e_low.ravel(), e_high.ravel()


def _add_flex(build: _Builder, f: HorizonFlex, weight: np.ndarray) -> _FlexColumns:
    """A flexibility's curtailment (raising the loading) and shedding (lowering it) columns."""
    steps = f.first_step + np.arange(len(f.curtail_max_kw))
    no_less = np.zeros(len(steps))
    curtail_max = np.maximum(np.asarray(f.curtail_max_kw, dtype=float), 0.0)
    shed_max = np.maximum(np.asarray(f.shed_max_kw, dtype=float), 0.0)
    u = build.columns(CURTAIL_COST * weight[steps], no_less, curtail_max)
    s = build.columns(SHED_COST * weight[steps], no_less, shed_max)
    build.loading_terms(f.transformer, steps, u, float(CurtailAction.curtail_solar.direction))
    build.loading_terms(f.transformer, steps, s, float(CurtailAction.shed_load.direction))
    return _FlexColumns(steps, u, s)


def _add_slack(build: _Builder, k: int, weight: np.ndarray) -> _SlackColumns:
    """Transformer k's slack: kW left outside each limit at each step, at SLACK_COST."""
    n_t = build.n_t
    steps = np.arange(n_t)
    o = build.columns(SLACK_COST * weight, np.zeros(n_t), np.full(n_t, np.inf), always=True)
    r = build.columns(SLACK_COST * weight, np.zeros(n_t), np.full(n_t, np.inf), always=True)
    build.loading_rows.add(build.overload_row(k, steps), o, -1.0)
    build.loading_rows.add(build.overload_row(k, steps) + 1, r, -1.0)
    return _SlackColumns(o, r)


def _solve(build: _Builder, problem: HorizonProblem, base: np.ndarray) -> tuple[np.ndarray, float]:
    """(every column's value, the optimal cost): the columns fixed at 0 are left out of the program and read 0."""
    n_k, n_t = base.shape
    rating = np.broadcast_to(np.asarray(problem.rating_kw, dtype=float).reshape(n_k, -1), (n_k, n_t))
    reverse = np.broadcast_to(np.asarray(problem.reverse_limit_kw, dtype=float).reshape(n_k, -1), (n_k, n_t))
    b_ub = np.empty(2 * n_k * n_t)
    b_ub[0::2] = (rating - base).ravel()
    b_ub[1::2] = (reverse + base).ravel()

    keep = np.concatenate(build.keep)
    new_index = np.cumsum(keep) - 1
    cost, lower, upper = (np.concatenate(a)[keep] for a in (build.cost, build.lower, build.upper))
    # one matrix: the loading rows (<= b_ub), then the energy rows (= rhs), then the network rows (ranged)
    n_ub = 2 * n_k * n_t
    ub, eq, net = build.loading_rows, build.energy_rows, build.network_rows
    rows = np.concatenate(ub.rows + eq.rows + net.rows)
    cols = np.concatenate(ub.cols + eq.cols + net.cols)
    vals = np.concatenate(ub.vals + eq.vals + net.vals)
    rows[ub.count : ub.count + eq.count] += n_ub
    rows[ub.count + eq.count :] += n_ub + build.n_energy
    mask = keep[cols]
    n_net = len(build.network_lower)
    shape = (n_ub + build.n_energy + n_net, int(keep.sum()))
    matrix = sp.csc_array((vals[mask], (rows[mask], new_index[cols[mask]])), shape=shape)
    rhs = np.concatenate(build.energy_rhs) if build.n_energy else np.empty(0)
    row_lower = np.concatenate((np.full(n_ub, -np.inf), rhs, build.network_lower))
    row_upper = np.concatenate((b_ub, rhs, build.network_upper))
    try:
        solution = solve_lp(cost, lower, upper, row_lower, row_upper, matrix)
    except LpNotSolved as exc:
        raise HorizonInfeasible(str(exc)) from exc
    x = np.zeros(build.n)
    x[keep] = solution
    return x, float(cost @ solution)


def _solution(
    problem: HorizonProblem,
    x: np.ndarray,
    cost: float,
    spans: dict[int, _Span],
    flex: list[_FlexColumns],
    slack: list[_SlackColumns],
) -> HorizonSolution:
    """The optimum ``x`` read back per battery, flexibility and transformer."""
    n_t = problem.loading_kw.shape[-1]
    n_b = len(problem.batteries)
    power = np.zeros((n_b, n_t))
    energy = np.full((n_b, n_t + 1), np.nan)
    for i, b in enumerate(problem.batteries):
        span = spans[i]
        power[i, span.steps] = span.power_kw(x)
        energy[i, span.steps + 1] = x[span.energy]
        start = sum(x[spans[j].energy[-1]] for j in b.takes_over) if b.takes_over else b.energy_kwh
        energy[i, span.steps[0]] = start
    curtail = np.zeros((len(flex), n_t))
    shed = np.zeros((len(flex), n_t))
    for i, f in enumerate(flex):
        curtail[i, f.steps], shed[i, f.steps] = x[f.curtail], x[f.shed]
    return HorizonSolution(
        battery_power_kw=power,
        energy_kwh=energy,
        curtail_kw=curtail,
        shed_kw=shed,
        overload_kw=np.array([x[s.overload] for s in slack]),
        reverse_kw=np.array([x[s.reverse] for s in slack]),
        cost=cost,
    )
