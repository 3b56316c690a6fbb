"""The mpc planner: model-predictive control over a horizon, forecast from what it has seen so far.

Each cycle it records every agent's report, forecasts the next ``horizon_steps`` from that
history (solar: the most seen at that time of day over the last days, near clear sky, with each
day not yet seen counted as clear sky for the kWp the agent reports (``models.solar_prior``), so
it is ready for a sunny noon from its first cycle; demand and the rest: the mean of the same
time of day over the last days, persistence while it has none; both pulled towards what it sees
now for the next few hours), solves one linear program over the horizon
(``agents.planners.horizon``: the physics and costs the perfect-foresight bound uses too) and
sends only the first step's commands. So a battery is held back or emptied before a sunny noon,
or kept full before an evening peak, and the plan is made again next cycle with what happened.
It never sees data the agents have not reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from agents.planners.base import MIN_COMMAND_KW, AgentFlex, BatteryView, Command, Plan, Snapshot
from agents.planners.horizon import HorizonBattery, HorizonFlex, HorizonProblem, solve_horizon
from models.devices import step_battery_energy, stored_kwh
from models.grid import LIMIT_TOLERANCE_KW
from models.policies import net_power_kw, self_consumption_setpoint_kw
from models.schemas import AgentType, CurtailAction
from models.solar_prior import DATA_SITE, PvSite, clear_sky_pv_kw_per_kwp

SECONDS_PER_DAY = 86_400.0
_EPOCH = datetime(2000, 1, 1)

#: What the planner remembers of each agent each step (kW), in this order. ``other`` is the agent's
#: net power but for its battery and its solar (a home's demand); all as its local policy left them.
FIELDS = ("other", "solar", "demand", "flexible", "setpoint", "max_charge", "max_discharge")
OTHER, SOLAR, DEMAND, FLEXIBLE, SETPOINT, MAX_CHARGE, MAX_DISCHARGE = range(len(FIELDS))
_NONNEGATIVE = [SOLAR, DEMAND, FLEXIBLE, MAX_CHARGE, MAX_DISCHARGE]


#: The energy window given a battery known only by its headroom (kWh): none to speak of, as it
#: is modelled for this step alone.
UNBOUNDED_KWH = 1e6


@dataclass(frozen=True)
class _Battery:
    """A battery the program models this cycle."""

    row: int  # the agent's position in the snapshot, and so in the forecast
    agent: AgentFlex
    transformer: int  # index into the snapshot's transformers
    view: BatteryView  # as reported, or (``known`` False) what its headroom alone says

    @property
    def known(self) -> bool:
        """False for an agent that reports battery headroom but no battery: it is planned for this step only."""
        return self.agent.battery is not None


@dataclass(frozen=True)
class _PolicySchedule:
    """(batteries, steps) in kW: what the batteries' own policies ask for over the horizon, and their power limits.

    Step 0 is as it stands: the setpoint reported and the physics' headroom around it.
    """

    request_kw: np.ndarray  # > 0 charges
    max_charge_kw: np.ndarray  # >= 0
    max_discharge_kw: np.ndarray  # >= 0


@dataclass(frozen=True)
class _Cells:
    """What a local schedule steps (kWh and efficiencies): one battery, or a pool of alike ones summed."""

    energy_start_kwh: float
    energy_min_kwh: float
    energy_max_kwh: float
    charge_efficiency_fraction: float
    discharge_efficiency_fraction: float

    @classmethod
    def of(cls, view: BatteryView) -> _Cells:
        return cls(
            view.energy_start_kwh,
            view.energy_min_kwh,
            view.energy_max_kwh,
            view.charge_efficiency_fraction,
            view.discharge_efficiency_fraction,
        )


class MpcPlanner:
    """Re-plan every cycle over ``horizon_steps`` and send the first step (``Planner`` protocol).

    horizon_steps: steps looked ahead, this one included (96 = 24 h of 15-minute steps).
    individual_steps: steps in which each battery is modelled on its own; after them the
        batteries of one kind on one transformer are pooled (their sum of energy and power),
        which keeps the program small and changes little: only the first step is sent.
    forecast_days: days of history averaged at the same time of day.
    history_days: days of history kept (for the same weekday last week, the storage's setpoint).
    correction_decay: per step, how fast a forecast goes from what is seen now (the current
        error of the history's forecast) back to the history alone.

    Each battery is modelled with its reported energy at the step's start, SoC window and
    efficiencies (``BatteryView``; see ``agents.planners.snapshot`` for an agent that reports
    less). A home battery's policy ahead is self-consumption on the forecast solar and load
    (``models.policies``); any other battery's is the setpoint history shows.
    terminal_value_per_kwh: worth of each kWh left stored at the horizon's end.
    solar_forecast: ``envelope`` (the most seen at that time of day over ``history_days``) or
        ``mean`` (the mean over ``forecast_days``).
    sky: optional weather forecast, ``sky(n_steps, step_s)`` -> the clear-sky index (0-1) of each
        step ahead, or None when it has none; it scales the solar profile from history
        (``agents.planners.weather.CloudForecast``, when OPENWEATHERMAP_API_KEY is set).
    pv_site: where the agents' PV stands and how it is built (default: the shipped data's), for a
        clear-sky prior (``models.solar_prior``) scaled by each agent's reported ``capacity_kwp``:
        a day not yet seen counts as clear, so the planner is ready for a sunny noon from its
        first cycle. None: history alone (persistence until it has some).
    """

    def __init__(
        self,
        horizon_steps: int = 96,
        *,
        individual_steps: int = 1,
        forecast_days: int = 3,
        history_days: int = 8,
        correction_decay: float = 0.9,
        terminal_value_per_kwh: float = 0.0,
        solar_forecast: str = "envelope",
        sky: Callable[[int, float], np.ndarray | None] | None = None,
        pv_site: PvSite | None = DATA_SITE,
    ) -> None:
        if horizon_steps < 1 or not 1 <= individual_steps <= horizon_steps:
            raise ValueError("need horizon_steps >= 1 and 1 <= individual_steps <= horizon_steps")
        if forecast_days < 1 or history_days < forecast_days:
            raise ValueError("need 1 <= forecast_days <= history_days")
        if solar_forecast not in ("envelope", "mean"):
            raise ValueError("solar_forecast is 'envelope' or 'mean'")
        self.horizon_steps = horizon_steps
        self.individual_steps = individual_steps
        self.forecast_days = forecast_days
        self.history_days = history_days
        self.correction_decay = correction_decay
        self.terminal_value_per_kwh = terminal_value_per_kwh
        self.solar_forecast = solar_forecast
        self.sky = sky
        self.pv_site = pv_site
        self._rows: dict[str, int] = {}
        self._values = np.zeros((0, 0, len(FIELDS)))  # agents x ring x fields
        self._stamps = np.zeros(0, dtype=np.int64)  # step index held in each ring slot (-1: none)
        self._step_s: float | None = None
        self._calls = 0
        self.solves = 0  # cycles that needed the linear program (the others had nothing at stake)

    # -- history -----------------------------------------------------------------------------
    def _step_index(self, snapshot: Snapshot) -> int:
        self._calls += 1
        if snapshot.timestamp is None:
            return self._calls
        stamp = snapshot.timestamp.replace(tzinfo=None)
        return round((stamp - _EPOCH).total_seconds() / snapshot.step_s)

    def _remember(self, snapshot: Snapshot, index: int) -> np.ndarray:
        """Record every agent's report at ``index``; return the agents' rows."""
        if self._step_s != snapshot.step_s:  # a new step length makes the old history meaningless
            self._step_s = snapshot.step_s
            ring = self.history_days * self._steps_per_day
            self._values = np.zeros((len(self._rows), ring, len(FIELDS)))
            self._stamps = np.full(ring, -1, dtype=np.int64)
        new = [a.agent_id for a in snapshot.agents if a.agent_id not in self._rows]
        if new:
            for agent_id in new:
                self._rows[agent_id] = len(self._rows)
            grown = np.zeros((len(self._rows), self._values.shape[1], len(FIELDS)))
            grown[: self._values.shape[0]] = self._values
            self._values = grown
        slot = index % self._values.shape[1]
        if self._stamps[slot] != index:
            self._values[:, slot] = np.nan  # agents absent this step leave gaps, not stale values
            self._stamps[slot] = index
        rows = np.array([self._rows[a.agent_id] for a in snapshot.agents], dtype=int)
        self._values[rows, slot] = [_observe(a) for a in snapshot.agents]
        return rows

    @property
    def _steps_per_day(self) -> int:
        return max(round(SECONDS_PER_DAY / (self._step_s or 900.0)), 1)

    def _past(self, rows: np.ndarray, index: np.ndarray, days_ago: np.ndarray) -> np.ndarray:
        """(days, agents, steps, fields) seen each of ``days_ago`` days before each step index; NaN where unknown."""
        then = index[None, :] - days_ago[:, None] * self._steps_per_day
        slots = then % self._values.shape[1]
        known = (self._stamps[slots] == then) & (then >= 0)
        values = np.take(self._values[rows], slots, axis=1).transpose(1, 0, 2, 3)
        return np.where(known[:, None, :, None], values, np.nan)

    def solar_prior_kw(self, snapshot: Snapshot) -> np.ndarray | None:
        """(agents, horizon): each agent's PV under a clear sky (kW), in the snapshot's order; None without a clock.

        Each agent's reported ``capacity_kwp`` times ``models.solar_prior``'s output per kWp at
        ``pv_site``; 0 for an agent with no PV. None when the planner has no site, the snapshot
        no timestamp, or no agent reports PV.
        """
        if self.pv_site is None or snapshot.timestamp is None:
            return None
        capacity_kwp = np.array([a.solar_capacity_kwp for a in snapshot.agents])
        if not np.any(capacity_kwp > 0):
            return None
        per_kwp = clear_sky_pv_kw_per_kwp(snapshot.timestamp, self.horizon_steps, snapshot.step_s, self.pv_site)
        return capacity_kwp[:, None] * per_kwp[None, :]

    def forecast(self, rows: np.ndarray, index: int, solar_prior_kw: np.ndarray | None = None) -> np.ndarray:
        """(agents, horizon, fields): step 0 as seen now, later steps from history (and the solar prior) only.

        Each field is the mean of the same time of day over the last ``forecast_days`` days;
        solar is, with ``solar_forecast="envelope"``, the most seen at that time over the last
        ``history_days`` (nearly clear sky: the planner readies batteries for a sunny day, and a
        cloudy one costs it only some needless battery moves); the storage's setpoint is that of
        the same time a week ago (its price schedule follows the calendar). The next hours are
        pulled towards what is seen now; with no history yet, persistence.

        ``solar_prior_kw`` (agents, horizon), each agent's PV under a clear sky, stands in for
        history not at hand: in the envelope each day not seen at that time counts as clear (so a
        planner started cold expects the sunniest day; once it has seen ``history_days`` days the
        prior stays only in this step's envelope, from which what is seen now corrects the next
        hours); with ``solar_forecast="mean"`` it is used only where no day is.
        """
        steps = index + np.arange(self.horizon_steps)
        now = self._values[rows, index % self._values.shape[1]]
        past = self._past(rows, steps, np.arange(1, self.history_days + 1))
        profile = _nanmean(past[: self.forecast_days])
        prior = np.broadcast_to(np.nan, profile.shape[:2]) if solar_prior_kw is None else solar_prior_kw
        if self.solar_forecast == "envelope":
            seen = past[..., SOLAR]
            profile[..., SOLAR] = _nanmax(np.where(np.isnan(seen), prior[None], seen))
            # this step always counts clear sky in (the eighth day ago has just left the ring here):
            # what is seen now corrects the next hours from this step's profile, so a cloudy moment
            # pulls them down from clear sky rather than from the days seen. Measured, it curtails
            # less, warm or cold (bench/README.md, cold-start months)
            profile[:, 0, SOLAR] = np.fmax(profile[:, 0, SOLAR], prior[:, 0])
        else:
            profile[..., SOLAR] = np.where(np.isnan(profile[..., SOLAR]), prior, profile[..., SOLAR])
        index_ahead = self.sky(self.horizon_steps, self._step_s or 900.0) if self.sky is not None else None
        if index_ahead is not None:
            profile[..., SOLAR] = profile[..., SOLAR] * np.asarray(index_ahead)[None, :]
        if self.history_days >= 7:
            week = past[6, ..., SETPOINT]
            profile[..., SETPOINT] = np.where(np.isnan(week), profile[..., SETPOINT], week)
        profile = np.where(np.isnan(profile), now[:, None, :], profile)
        error = now - profile[:, 0, :]
        error[:, SETPOINT] = 0.0  # a schedule switches; it does not drift
        decay = self.correction_decay ** np.arange(self.horizon_steps)
        result = profile + error[:, None, :] * decay[None, :, None]
        result[..., _NONNEGATIVE] = np.maximum(result[..., _NONNEGATIVE], 0.0)
        result[:, 0, :] = now
        return result

    # -- the plan ----------------------------------------------------------------------------
    def __call__(self, snapshot: Snapshot) -> Plan:
        """Plan the first step of the best schedule over the horizon."""
        plan = Plan("mpc")
        if not snapshot.agents:
            return plan
        index = self._step_index(snapshot)
        rows = self._remember(snapshot, index)
        forecast = self.forecast(rows, index, self.solar_prior_kw(snapshot))
        problem, batteries = self._problem(snapshot, forecast)
        local = problem.loading_kw + _local_power(problem.batteries, self.horizon_steps, problem.loading_kw.shape[0])
        rating = problem.rating_kw[:, None]
        reverse = problem.reverse_limit_kw[:, None]
        if np.all((local <= rating + LIMIT_TOLERANCE_KW) & (local >= -reverse - LIMIT_TOLERANCE_KW)):
            return plan  # the agents' own schedules stay within limits all horizon: nothing at stake
        self.solves += 1
        solution = solve_horizon(problem)
        for i, battery in enumerate(batteries):
            agent = battery.agent
            shift = float(solution.battery_power_kw[i, 0]) - agent.battery_power_kw
            _command(plan, agent, CurtailAction.battery_shift(shift), abs(shift))
        for k, t in enumerate(snapshot.transformers):
            mine = [a for a in snapshot.agents if a.transformer_id == t.transformer_id]
            for action, pooled in (
                (CurtailAction.curtail_solar, solution.curtail_kw[k, 0]),
                (CurtailAction.shed_load, solution.shed_kw[k, 0]),
            ):
                headroom = sum(a.headroom_kw.get(action, 0.0) for a in mine)
                share = min(float(pooled) / headroom, 1.0) if headroom > 0 else 0.0
                for agent in mine:
                    _command(plan, agent, action, share * agent.headroom_kw.get(action, 0.0))
        return plan

    def _problem(self, snapshot: Snapshot, forecast: np.ndarray) -> tuple[HorizonProblem, list[_Battery]]:
        """The horizon program: each battery alone for the first steps, then pooled by transformer and kind."""
        where = {t.transformer_id: k for k, t in enumerate(snapshot.transformers)}
        transformer = np.array([where[a.transformer_id] for a in snapshot.agents])
        batteries = [
            _Battery(row=i, agent=agent, transformer=int(transformer[i]), view=_view(agent))
            for i, agent in enumerate(snapshot.agents)
            if agent.can_move_battery
        ]
        units: list[HorizonBattery] = []
        if batteries:
            schedule = _policy_schedule(batteries, forecast)
            units, energy_kwh = self._individual_units(batteries, schedule, snapshot.step_s)
            units += self._pooled_units(batteries, schedule, energy_kwh, snapshot.step_s)
        problem = HorizonProblem(
            step_s=snapshot.step_s,
            loading_kw=_loading_without_batteries(snapshot, forecast, transformer, batteries),
            rating_kw=np.array([t.rating_kw for t in snapshot.transformers]),
            reverse_limit_kw=np.array([t.reverse_limit_kw for t in snapshot.transformers]),
            batteries=units,
            flex=_flex(snapshot, forecast, transformer),
            terminal_value_per_kwh=self.terminal_value_per_kwh,
        )
        return problem, batteries

    def _individual_units(
        self, batteries: list[_Battery], schedule: _PolicySchedule, step_s: float
    ) -> tuple[list[HorizonBattery], np.ndarray]:
        """Each battery on its own over the first ``individual_steps`` (this step only when it is not ``known``).

        Also returns the energy (kWh) each would hold after those steps on its own policy, from
        which the pools that take over start.
        """
        first = self.individual_steps
        units, energy_kwh = [], np.empty(len(batteries))
        for j, b in enumerate(batteries):
            steps = first if b.known else 1
            setpoint, energy_kwh[j] = _local_schedule(
                _Cells.of(b.view),
                schedule.request_kw[j, :first],
                schedule.max_charge_kw[j, :first],
                schedule.max_discharge_kw[j, :first],
                step_s,
            )
            units.append(
                HorizonBattery(
                    transformer=b.transformer,
                    energy_min_kwh=b.view.energy_min_kwh,
                    energy_max_kwh=b.view.energy_max_kwh,
                    charge_efficiency_fraction=b.view.charge_efficiency_fraction,
                    discharge_efficiency_fraction=b.view.discharge_efficiency_fraction,
                    setpoint_kw=setpoint[:steps],
                    max_charge_kw=schedule.max_charge_kw[j, :steps],
                    max_discharge_kw=schedule.max_discharge_kw[j, :steps],
                    energy_kwh=b.view.energy_start_kwh,
                )
            )
        return units, energy_kwh

    def _pooled_units(
        self, batteries: list[_Battery], schedule: _PolicySchedule, energy_kwh: np.ndarray, step_s: float
    ) -> list[HorizonBattery]:
        """After the first steps, the known batteries alike in kind and efficiencies on one transformer, as one.

        A pool holds the sum of its members' energy windows and power limits, and its policy asks
        for the sum of what theirs ask (each within its own limits).
        """
        first, n_t = self.individual_steps, self.horizon_steps
        groups: dict[tuple, list[int]] = {}
        for j, b in enumerate(batteries):
            if b.known:
                kind = (b.view.charge_efficiency_fraction, b.view.discharge_efficiency_fraction)
                groups.setdefault((b.transformer, b.agent.agent_type, kind), []).append(j)
        if first >= n_t or not groups:
            return []
        later = slice(first, n_t)
        max_ch, max_dis = schedule.max_charge_kw[:, later], schedule.max_discharge_kw[:, later]
        own = np.minimum(np.maximum(schedule.request_kw[:, later], -max_dis), max_ch)
        units = []
        for members in groups.values():
            like = batteries[members[0]].view
            cells = _Cells(
                energy_start_kwh=float(energy_kwh[members].sum()),
                energy_min_kwh=float(np.array([batteries[m].view.energy_min_kwh for m in members]).sum()),
                energy_max_kwh=float(np.array([batteries[m].view.energy_max_kwh for m in members]).sum()),
                charge_efficiency_fraction=like.charge_efficiency_fraction,
                discharge_efficiency_fraction=like.discharge_efficiency_fraction,
            )
            pool_ch, pool_dis = max_ch[members].sum(axis=0), max_dis[members].sum(axis=0)
            setpoint, _ = _local_schedule(
                cells, own[members].sum(axis=0), pool_ch, pool_dis, step_s, reported_first=False
            )
            units.append(
                HorizonBattery(
                    transformer=batteries[members[0]].transformer,
                    energy_min_kwh=cells.energy_min_kwh,
                    energy_max_kwh=cells.energy_max_kwh,
                    charge_efficiency_fraction=cells.charge_efficiency_fraction,
                    discharge_efficiency_fraction=cells.discharge_efficiency_fraction,
                    setpoint_kw=setpoint,
                    max_charge_kw=pool_ch,
                    max_discharge_kw=pool_dis,
                    first_step=first,
                    takes_over=tuple(members),
                )
            )
        return units


def _view(agent: AgentFlex) -> BatteryView:
    """The agent's battery as reported; for one known only by its headroom, this step's limits and no energy or losses.

    Nothing is known of such a battery's energy, and the program models it for this step alone,
    where its headroom already bounds it: so no energy window and no losses (which would only
    change the cost of reversing it, ``horizon.reversal_cost_per_kw``).
    """
    if agent.battery is not None:
        return agent.battery
    return BatteryView(
        energy_start_kwh=0.0,
        energy_min_kwh=-UNBOUNDED_KWH,
        energy_max_kwh=UNBOUNDED_KWH,
        charge_efficiency_fraction=1.0,
        discharge_efficiency_fraction=1.0,
        max_charge_kw=agent.battery_charge_limit_kw,
        max_discharge_kw=agent.battery_discharge_limit_kw,
        local_setpoint_kw=agent.battery_power_kw,
        reported=False,
    )


def _loading_without_batteries(
    snapshot: Snapshot, forecast: np.ndarray, transformer: np.ndarray, batteries: list[_Battery]
) -> np.ndarray:
    """(transformers, steps) kW: the loading with the modelled batteries idle, which the program adds back.

    Ahead, the agents' forecast net power without their batteries; this step, the loading as
    measured less the modelled batteries' setpoints.
    """
    loading = np.zeros((len(snapshot.transformers), forecast.shape[1]))
    np.add.at(loading, transformer, net_power_kw(forecast[:, :, OTHER], forecast[:, :, SOLAR], 0.0))
    loading[:, 0] = [t.loading_kw for t in snapshot.transformers]
    for b in batteries:
        loading[b.transformer, 0] -= b.agent.battery_power_kw
    return loading


def _flex(snapshot: Snapshot, forecast: np.ndarray, transformer: np.ndarray) -> list[HorizonFlex]:
    """Solar to curtail and load to shed per transformer (kW): this step's headroom, then the forecast.

    Both only count on the transformer, so each is pooled per transformer (exactly) and this
    step's is then shared out in proportion to each agent's headroom.
    """
    curtail_now = np.array([a.headroom_kw.get(CurtailAction.curtail_solar, 0.0) for a in snapshot.agents])
    shed_now = np.array([a.headroom_kw.get(CurtailAction.shed_load, 0.0) for a in snapshot.agents])
    flex = []
    for k in range(len(snapshot.transformers)):
        mine = transformer == k
        curtail, shed = forecast[mine, :, SOLAR].sum(axis=0), forecast[mine, :, FLEXIBLE].sum(axis=0)
        curtail[0], shed[0] = curtail_now[mine].sum(), shed_now[mine].sum()
        flex.append(HorizonFlex(k, curtail, shed))
    return flex


def _policy_schedule(batteries: list[_Battery], forecast: np.ndarray) -> _PolicySchedule:
    """What each battery's own policy would ask over the horizon, within the limits its agent reported."""
    f = forecast[[b.row for b in batteries]]
    is_home = np.array([b.agent.agent_type is AgentType.home for b in batteries], dtype=bool)
    request = np.where(
        is_home[:, None], self_consumption_setpoint_kw(f[:, :, SOLAR], f[:, :, OTHER]), f[:, :, SETPOINT]
    )
    max_ch, max_dis = f[:, :, MAX_CHARGE].copy(), f[:, :, MAX_DISCHARGE].copy()
    for j, b in enumerate(batteries):  # this step: the setpoint as it stands and the physics' headroom
        request[j, 0] = b.agent.battery_power_kw
        max_ch[j, 0] = b.agent.battery_charge_limit_kw
        max_dis[j, 0] = b.agent.battery_discharge_limit_kw
    return _PolicySchedule(request, np.maximum(max_ch, 0.0), np.maximum(max_dis, 0.0))


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the first axis ignoring NaN; NaN where every value is."""
    known = ~np.isnan(values)
    count = known.sum(axis=0)
    return np.where(count > 0, np.where(known, values, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)


def _nanmax(values: np.ndarray) -> np.ndarray:
    """Largest over the first axis ignoring NaN; NaN where every value is."""
    known = ~np.isnan(values)
    return np.where(known.any(axis=0), np.where(known, values, -np.inf).max(axis=0), np.nan)


def _observe(agent: AgentFlex) -> list[float]:
    """One agent's report as the planner remembers it (kW), in FIELDS order."""
    battery = agent.battery
    return [
        agent.net_power_without_battery_kw + agent.solar_available_kw,
        agent.solar_available_kw,
        agent.demand_kw,
        agent.flexible_kw,
        battery.local_setpoint_kw if battery is not None else agent.battery_power_kw,
        battery.max_charge_kw if battery is not None else 0.0,
        battery.max_discharge_kw if battery is not None else 0.0,
    ]


def _local_schedule(
    cells: _Cells,
    request_kw: np.ndarray,
    max_charge_kw: np.ndarray,
    max_discharge_kw: np.ndarray,
    step_s: float,
    reported_first: bool = True,
) -> tuple[np.ndarray, float]:
    """(setpoints kW, energy kWh at the end): a battery's own policy step by step, from ``cells.energy_start_kwh``.

    Each step as the battery's physics would take it (``models.devices.step_battery_energy``)
    within that step's power limits; with ``reported_first`` the first step's setpoint is the
    one reported, which the physics has already clipped.
    """
    setpoint = np.empty(len(request_kw))
    energy = cells.energy_start_kwh
    eta_c, eta_d = cells.charge_efficiency_fraction, cells.discharge_efficiency_fraction
    steps = zip(
        request_kw.tolist(), max_charge_kw.tolist(), max_discharge_kw.tolist(), strict=True
    )  # plain floats: fast
    for t, (request, max_ch, max_dis) in enumerate(steps):
        if t == 0 and reported_first:
            stored = stored_kwh(request, step_s, eta_c, eta_d)
            setpoint[t], energy = request, min(max(energy + stored, cells.energy_min_kwh), cells.energy_max_kwh)
            continue
        step = step_battery_energy(
            energy,
            request,
            step_s,
            energy_min_kwh=cells.energy_min_kwh,
            energy_max_kwh=cells.energy_max_kwh,
            max_charge_kw=max_ch,
            max_discharge_kw=max_dis,
            charge_efficiency_fraction=eta_c,
            discharge_efficiency_fraction=eta_d,
        )
        setpoint[t], energy = step.power_kw, step.energy_kwh
    return setpoint, energy


def _local_power(units: list[HorizonBattery], n_t: int, n_k: int) -> np.ndarray:
    """(transformers, steps): the batteries' setpoints added up, each over its span."""
    total = np.zeros((n_k, n_t))
    for u in units:
        total[u.transformer, u.first_step : u.first_step + len(u.setpoint_kw)] += u.setpoint_kw
    return total


def _command(plan: Plan, agent: AgentFlex, action: CurtailAction, power_kw: float) -> None:
    """Append a command, clipped to the agent's headroom, if it is worth sending."""
    power_kw = min(power_kw, agent.headroom_kw.get(action, 0.0))
    if power_kw > MIN_COMMAND_KW:
        plan.commands.append(Command(agent_id=agent.agent_id, action=action, power_kw=power_kw))
