"""Tests of the mpc planner (agents/planners/mpc.py) and the horizon program it shares with the bound."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agents.common.settings import HomeSettings
from agents.device.home import HomeAgent
from agents.planners import PLANNERS, AgentFlex, Plan, Snapshot, TransformerSnapshot, plan_optimal
from agents.planners.horizon import HorizonBattery, HorizonFlex, HorizonNetwork, HorizonProblem, solve_horizon
from agents.planners.mpc import MpcPlanner
from agents.planners.snapshot import build_snapshot
from models.schemas import (
    AgentStatus,
    AgentType,
    BatteryStatus,
    CurtailAction,
    CurtailCommand,
    Flexibility,
    LoadStatus,
    SolarStatus,
)

KW_TOL = 1e-6
CHARGE = CurtailAction.charge_battery
DISCHARGE = CurtailAction.discharge_battery

# --- solve_horizon: hand-computed optima --------------------------------------------------------


def battery(
    setpoint_kw, energy_kwh=9.0, energy_max_kwh=10.0, power_kw=5.0, charge_eff=0.9, discharge_eff=0.8, **kwargs
) -> HorizonBattery:
    """One battery over len(setpoint_kw) steps, 0-10 kWh, 5 kW, 90 % / 80 % unless told otherwise."""
    n = len(setpoint_kw)
    return HorizonBattery(
        transformer=0,
        energy_min_kwh=kwargs.pop("energy_min_kwh", 0.0),
        energy_max_kwh=energy_max_kwh,
        charge_efficiency_fraction=charge_eff,
        discharge_efficiency_fraction=discharge_eff,
        setpoint_kw=np.asarray(setpoint_kw, dtype=float),
        max_charge_kw=np.full(n, power_kw),
        max_discharge_kw=np.full(n, power_kw),
        energy_kwh=energy_kwh,
        **kwargs,
    )


def test_solve_horizon_three_steps_pre_discharges_for_the_peak():
    """1-h steps; 14 kW of export at step 1 against a 10 kW limit, a battery at 9 of 10 kWh.

    Absorbing the 4 kW excess stores 0.9 * 4 = 3.6 kWh, so the battery must hold at most 6.4 kWh
    when step 1 begins: discharge 2.6 kWh from the cells at step 0, which at 80 % is 2.08 kW at
    the terminals (export 2.08 kW <= 10). Cost 1 * 2.08 + 1 * 4 = 6.08 against 10 * 4 for
    curtailing, and every cheaper plan leaves some of the excess to curtail.
    """
    problem = HorizonProblem(
        step_s=3600.0,
        loading_kw=np.array([[0.0, -14.0, 0.0]]),
        rating_kw=np.array([10.0]),
        reverse_limit_kw=np.array([10.0]),
        batteries=[battery([0.0, 0.0, 0.0])],
        flex=[HorizonFlex(0, np.full(3, 20.0), np.zeros(3))],
    )
    solution = solve_horizon(problem)
    assert solution.battery_power_kw[0] == pytest.approx([-2.08, 4.0, 0.0], abs=KW_TOL)
    assert solution.energy_kwh[0] == pytest.approx([9.0, 6.4, 10.0, 10.0], abs=KW_TOL)
    assert solution.curtail_kw[0] == pytest.approx([0.0, 0.0, 0.0], abs=KW_TOL)
    assert solution.cost == pytest.approx(6.08, abs=1e-6)


def test_solve_horizon_network_rows_bind_where_the_transformer_does_not():
    """A bus 0.01 p.u. above its limit at step 1 only, -0.001 p.u. per kW of net power at it (the transformer far
    from its rating). The battery there (half full, 5 kW) charges 5 kW first, as driving it is cheaper than
    curtailing; solar curtails the other 5 kW. Step 0's row is inside its limit and stays there; the battery,
    which could not have made room earlier at a lower cost, idles then."""
    network = HorizonNetwork(
        step=np.array([0, 1]),
        value=np.array([1.04, 1.06]),
        lower=np.array([0.9, 0.9]),
        upper=np.array([1.05, 1.05]),
        battery_sensitivity=np.array([[-0.001], [-0.001]]),
        flex_sensitivity=np.array([[-0.001], [-0.001]]),
        slack_cost=np.array([1e7, 1e7]),
    )
    problem = HorizonProblem(
        step_s=3600.0,
        loading_kw=np.array([[-20.0, -20.0]]),
        rating_kw=np.array([100.0]),
        reverse_limit_kw=np.array([100.0]),
        batteries=[battery([0.0, 0.0], energy_kwh=5.0)],
        flex=[HorizonFlex(0, np.full(2, 20.0), np.zeros(2))],
        network=network,
    )
    solution = solve_horizon(problem)
    assert solution.battery_power_kw[0] == pytest.approx([0.0, 5.0], abs=KW_TOL)
    assert solution.curtail_kw[0] == pytest.approx([0.0, 5.0], abs=KW_TOL)
    assert solution.network_outside == pytest.approx([0.0, 0.0], abs=1e-9)
    without = solve_horizon(HorizonProblem(**{**problem.__dict__, "network": None}))
    assert without.curtail_kw.sum() == pytest.approx(0.0, abs=KW_TOL) and without.network_outside is None


def test_solve_horizon_network_rows_left_outside_go_to_slack():
    network = HorizonNetwork(
        step=np.array([0]),
        value=np.array([1.08]),
        lower=np.array([0.9]),
        upper=np.array([1.05]),
        battery_sensitivity=np.zeros((1, 0)),
        flex_sensitivity=np.array([[-0.001]]),
        slack_cost=np.array([1e7]),
    )
    problem = HorizonProblem(
        step_s=3600.0,
        loading_kw=np.array([[-20.0]]),
        rating_kw=np.array([100.0]),
        reverse_limit_kw=np.array([100.0]),
        flex=[HorizonFlex(0, np.array([20.0]), np.zeros(1))],
        network=network,
    )
    solution = solve_horizon(problem)
    assert solution.curtail_kw[0] == pytest.approx([20.0], abs=KW_TOL)  # all it can, and 0.01 p.u. left over
    assert solution.network_outside == pytest.approx([0.01], abs=1e-9)


def test_solve_horizon_following_setpoints_costs_nothing():
    problem = HorizonProblem(
        step_s=3600.0,
        loading_kw=np.array([[2.0, -3.0, 1.0]]),
        rating_kw=np.array([10.0]),
        reverse_limit_kw=np.array([10.0]),
        batteries=[battery([-1.0, 3.0, -2.0], energy_kwh=5.0)],
    )
    solution = solve_horizon(problem)
    assert solution.cost == pytest.approx(0.0, abs=KW_TOL)
    assert solution.battery_power_kw[0] == pytest.approx([-1.0, 3.0, -2.0], abs=KW_TOL)
    assert solution.energy_kwh[0] == pytest.approx(
        [5.0, 5.0 - 1 / 0.8, 5.0 - 1 / 0.8 + 2.7, 5.0 - 1 / 0.8 + 2.7 - 2 / 0.8], abs=KW_TOL
    )


def test_solve_horizon_holds_back_before_driving():
    """A battery charging 4 kW into a 3 kW overload: charging 3 kW less (0.5 a kW) beats all else."""
    problem = HorizonProblem(
        step_s=3600.0,
        loading_kw=np.array([[9.0]]),
        rating_kw=np.array([10.0]),
        reverse_limit_kw=np.array([10.0]),
        batteries=[battery([4.0], energy_kwh=0.0)],
        flex=[HorizonFlex(0, np.zeros(1), np.array([5.0]))],
    )
    solution = solve_horizon(problem)
    assert solution.battery_power_kw[0] == pytest.approx([1.0], abs=KW_TOL)
    assert solution.cost == pytest.approx(1.5, abs=KW_TOL)


@pytest.mark.parametrize("premium", [True, False])
def test_solve_horizon_never_charges_and_discharges_at_once(premium):
    """A full battery (90 % each way) whose policy discharges 2 kW into a reverse flow, and 1 kW to absorb next.

    By hand, for schedules a battery can follow: let it discharge x kW in step 0 (holding back
    2 - x at 0.5) and curtail x there, which leaves x / 0.9 kWh of room, enough for x / 0.81 kW
    in step 1. Cost 0.5 (2 - x) + 10 x + x / 0.81 + 10 (1 - x / 0.81), falling until x = 0.81:
    9.695. Charging and discharging at once would burn energy and make room more cheaply; the
    reversal premium rules that out, and without it the relaxation finds less.
    """
    problem = HorizonProblem(
        step_s=3600.0,
        loading_kw=np.array([[-10.0, -11.0]]),
        rating_kw=np.array([10.0]),
        reverse_limit_kw=np.array([10.0]),
        batteries=[battery([-2.0, 0.0], energy_kwh=10.0, charge_eff=0.9, discharge_eff=0.9)],
        flex=[HorizonFlex(0, np.full(2, 20.0), np.zeros(2))],
        reversal_premium=premium,
    )
    solution = solve_horizon(problem)
    if premium:
        assert solution.cost == pytest.approx(9.695, abs=1e-6)
        assert solution.battery_power_kw[0] == pytest.approx([-0.81, 1.0], abs=KW_TOL)
        assert solution.curtail_kw[0] == pytest.approx([0.81, 0.0], abs=KW_TOL)
        assert solution.energy_kwh[0] == pytest.approx([10.0, 9.1, 10.0], abs=KW_TOL)  # discharging only
    else:
        assert solution.cost < 9.695 - 0.5
        stored = solution.energy_kwh[0, 1] - solution.energy_kwh[0, 0]
        assert stored < solution.battery_power_kw[0, 0] / 0.9 - 0.1  # lost more than discharging alone loses


def test_solve_horizon_pool_takes_over_identical_batteries():
    """Two alike batteries alone for one step, then pooled: the same optimum as one of twice the size."""
    loading = np.array([[0.0, -25.0, -25.0, 0.0]])
    common = {
        "step_s": 3600.0,
        "loading_kw": loading,
        "rating_kw": np.array([10.0]),
        "reverse_limit_kw": np.array([10.0]),
    }
    flex = [HorizonFlex(0, np.full(4, 50.0), np.zeros(4))]
    each = [battery([0.0], energy_kwh=6.0) for _ in range(2)]
    pool = battery(np.zeros(3), energy_kwh=0.0, energy_max_kwh=20.0, power_kw=10.0, first_step=1, takes_over=(0, 1))
    split = solve_horizon(HorizonProblem(batteries=[*each, pool], flex=flex, **common))
    whole = solve_horizon(
        HorizonProblem(
            batteries=[battery(np.zeros(4), energy_kwh=12.0, energy_max_kwh=20.0, power_kw=10.0)], flex=flex, **common
        )
    )
    assert split.cost == pytest.approx(whole.cost, abs=1e-6)
    assert split.curtail_kw.sum() == pytest.approx(whole.curtail_kw.sum(), abs=1e-6)
    assert split.energy_kwh[2, 1] == pytest.approx(split.energy_kwh[0, 1] + split.energy_kwh[1, 1], abs=KW_TOL)


# --- the mpc planner on a synthetic feeder ----------------------------------------------------

#: Hourly steps: a home whose PV (8 kW at noon) surpasses a 1 kW load from 7:00 to 17:00 each day.
SOLAR_KW = [0.0] * 6 + [0.0, 4 / 3, 8 / 3, 4.0, 16 / 3, 20 / 3, 8.0, 20 / 3, 16 / 3, 4.0, 8 / 3, 4 / 3] + [0.0] * 6
DAYS = 4
RATING_KW, REVERSE_LIMIT_KW = 10.0, 4.0


def write_home_csv(path: Path, solar_kw: list[float]) -> Path:
    start = datetime(2025, 6, 1)
    rows = [f"{(start + timedelta(hours=h)).isoformat()},{kw:.6f},1.0,20.0" for h, kw in enumerate(solar_kw)]
    path.write_text("timestamp,solar_kw,load_kw,temp_air_c\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def make_home(tmp_path: Path, name: str, data_file: Path) -> HomeAgent:
    folder = tmp_path / name
    return HomeAgent(
        HomeSettings(
            agent_id="home_1",
            log_dir=folder,
            state_dir=folder,
            fresh=True,
            data_file=data_file,
            pv_kwp=6.0,
            annual_load_kwh=4500.0,
        )
    )


def run_feeder(home: HomeAgent, planner, steps: int) -> tuple[list[float], list[Plan], list[float]]:
    """The grid agent's loop in process: (kW curtailed, plan, SoC at the end) for each step; checks headroom."""

    def limits(_tid: str) -> tuple[float, float]:
        return RATING_KW, REVERSE_LIMIT_KW

    curtailed, plans, socs = [], [], []
    for step in range(steps):
        status = home.simulate()
        snapshot = build_snapshot([status], ["T1"], limits)
        plan = planner(snapshot)
        flex = {a.agent_id: a for a in snapshot.agents}
        for n, command in enumerate(plan.commands):
            assert command.power_kw <= flex[command.agent_id].headroom_kw[command.action] + KW_TOL
            status = home.curtail(
                CurtailCommand(command_id=f"{step}-{n}", action=command.action, power_kw=command.power_kw)
            ).agent_status
        curtailed.append(status.solar.curtailed_kw)
        plans.append(plan)
        socs.append(status.battery.soc_fraction)
    home.close()
    return curtailed, plans, socs


@pytest.fixture
def sunny_days(tmp_path: Path) -> Path:
    return write_home_csv(tmp_path / "sunny.csv", SOLAR_KW * DAYS)


def test_mpc_pre_discharges_before_a_predictable_noon_peak_and_curtails_less_than_optimal(tmp_path, sunny_days):
    steps = 24 * DAYS
    mpc_curtailed, mpc_plans, mpc_soc = run_feeder(
        make_home(tmp_path, "mpc", sunny_days), MpcPlanner(horizon_steps=24, history_days=2, forecast_days=1), steps
    )
    opt_curtailed, _, opt_soc = run_feeder(make_home(tmp_path, "optimal", sunny_days), plan_optimal, steps)
    last_days = slice(24, steps)  # from the second day on, the mpc planner has yesterday to go by
    assert sum(opt_curtailed[last_days]) > 3.0 * (DAYS - 1)  # a full battery at noon: the one-step optimum must curtail
    assert sum(mpc_curtailed[last_days]) < 0.1 * sum(opt_curtailed[last_days])
    day = 24 * (DAYS - 1)
    morning = [c for plan in mpc_plans[day + 7 : day + 12] for c in plan.commands]
    assert any(c.action is DISCHARGE for c in morning)  # the battery is held back (or emptied) ahead of noon
    assert mpc_soc[day + 11] < opt_soc[day + 11] - 0.2  # so it has room when the peak comes


def test_mpc_depends_only_on_snapshots_seen_so_far(tmp_path):
    """Two feeders whose data differ only from the third day on get the same plans for the first two.

    On the second day the planner looks 24 h ahead into rows where the data differ (a sunny third
    day, or a cloudy one): were it to peek at them, its plans would differ.
    """
    seen = 48
    sunny = write_home_csv(tmp_path / "sunny.csv", SOLAR_KW * 4)
    cloudy_later = write_home_csv(tmp_path / "cloudy.csv", SOLAR_KW * 2 + [0.1 * kw for kw in SOLAR_KW * 2])
    _, plans_a, _ = run_feeder(
        make_home(tmp_path, "a", sunny), MpcPlanner(horizon_steps=24, history_days=2, forecast_days=1), seen
    )
    _, plans_b, _ = run_feeder(
        make_home(tmp_path, "b", cloudy_later), MpcPlanner(horizon_steps=24, history_days=2, forecast_days=1), seen
    )
    assert any(p.commands for p in plans_a[24:])  # it does act on the second day
    assert [p.commands for p in plans_a] == [p.commands for p in plans_b]


# --- the mpc planner on hand-built snapshots ------------------------------------------------


def home_status(
    agent_id: str, step: int, solar_kw: float, demand_kw: float, battery_kw: float, soc: float, stamp: datetime
) -> AgentStatus:
    battery = BatteryStatus(
        soc_fraction=soc,
        power_kw=battery_kw,
        capacity_kwh=13.5,
        max_charge_kw=5.0,
        max_discharge_kw=5.0,
        soc_min_fraction=0.1,
        soc_max_fraction=0.95,
    )
    room = max((0.95 - soc) * 13.5 / (0.95 * 0.25), 0.0)
    left = max((soc - 0.1) * 13.5 * 0.95 / 0.25, 0.0)
    return AgentStatus(
        agent_id=agent_id,
        agent_type=AgentType.home,
        transformer_id="T1",
        step=step,
        timestamp=stamp,
        step_s=900.0,
        net_power_kw=demand_kw - solar_kw + battery_kw,
        solar=SolarStatus(capacity_kwp=6.0, available_kw=solar_kw, output_kw=solar_kw, curtailed_kw=0.0),
        load=LoadStatus(demand_kw=demand_kw, served_kw=demand_kw, shed_kw=0.0, flexible_kw=0.3 * demand_kw),
        battery=battery,
        flexibility=Flexibility(
            curtail_solar_kw=solar_kw,
            shed_load_kw=0.3 * demand_kw,
            charge_battery_kw=max(min(5.0, room) - battery_kw, 0.0),
            discharge_battery_kw=max(battery_kw + min(5.0, left), 0.0),
        ),
    )


def random_snapshots(seed: int, steps: int, homes: int = 4, rating_kw: float = 6.0):
    rng = np.random.default_rng(seed)
    start = datetime(2025, 6, 1)
    soc = rng.uniform(0.1, 0.95, homes)
    for step in range(steps):
        stamp = start + timedelta(minutes=15 * step)
        statuses = []
        for h in range(homes):
            solar = max(0.0, 6.0 * np.sin(np.pi * ((step % 96) - 24) / 48)) * rng.uniform(0.3, 1.0)
            demand = rng.uniform(0.2, 2.0)
            battery_kw = float(np.clip(solar - demand, -5.0, 5.0))
            soc[h] = float(np.clip(soc[h] + rng.normal(0, 0.05), 0.1, 0.95))
            statuses.append(home_status(f"home_{h}", step + 1, solar, demand, battery_kw, float(soc[h]), stamp))
        yield build_snapshot(statuses, ["T1"], lambda _tid: (rating_kw, rating_kw))


def test_mpc_commands_never_exceed_headroom_on_random_snapshots():
    planner = MpcPlanner(horizon_steps=16)
    for snapshot in random_snapshots(seed=7, steps=60):
        plan = planner(snapshot)
        flex = {a.agent_id: a for a in snapshot.agents}
        pairs = [(c.agent_id, c.action) for c in plan.commands]
        assert len(pairs) == len(set(pairs))
        for command in plan.commands:
            assert 0 < command.power_kw <= flex[command.agent_id].headroom_kw[command.action] + KW_TOL
        assert not {CHARGE, DISCHARGE} <= {c.action for c in plan.commands if c.agent_id == "home_0"}
    assert planner.solves > 0


def test_mpc_leaves_agents_alone_when_nothing_is_at_stake():
    planner = MpcPlanner(horizon_steps=16)
    for snapshot in random_snapshots(seed=3, steps=20, rating_kw=1000.0):
        assert planner(snapshot).commands == []
    assert planner.solves == 0


def storage_status(soc_start: float, power_kw: float, efficiency: float, stamp: datetime) -> AgentStatus:
    """A 50 kWh, 25 kW storage system that reports its start-of-step SoC and efficiencies."""
    stored_kwh = power_kw * 0.25 * efficiency if power_kw > 0 else power_kw * 0.25 / efficiency
    return AgentStatus(
        agent_id="storage",
        agent_type=AgentType.battery,
        transformer_id="T1",
        step=1,
        timestamp=stamp,
        step_s=900.0,
        net_power_kw=power_kw,
        battery=BatteryStatus(
            soc_fraction=soc_start + stored_kwh / 50.0,
            power_kw=power_kw,
            capacity_kwh=50.0,
            max_charge_kw=25.0,
            max_discharge_kw=25.0,
            soc_min_fraction=0.1,
            soc_max_fraction=0.95,
            soc_start_fraction=soc_start,
            charge_efficiency_fraction=efficiency,
            discharge_efficiency_fraction=efficiency,
            local_setpoint_kw=power_kw,
        ),
        flexibility=Flexibility(charge_battery_kw=25.0 - power_kw, discharge_battery_kw=25.0 + power_kw),
    )


def test_mpc_models_each_battery_with_its_reported_efficiencies_and_start_energy():
    stamp = datetime(2025, 6, 1, 12)
    statuses = [
        home_status("home_0", 1, 5.0, 1.0, 4.0, 0.5, stamp),  # reports no efficiencies: the snapshot's assumption
        storage_status(soc_start=0.3, power_kw=25.0, efficiency=0.96, stamp=stamp),
    ]
    snapshot = build_snapshot(statuses, ["T1"], lambda _tid: (RATING_KW, REVERSE_LIMIT_KW))
    planner = MpcPlanner(horizon_steps=8)
    index = planner._step_index(snapshot)
    problem, batteries = planner._problem(snapshot, planner.forecast(planner._remember(snapshot, index), index))
    home, storage = problem.batteries[:2]  # each alone for the first step; pools follow
    assert [b.agent.agent_id for b in batteries] == ["home_0", "storage"]
    assert (storage.charge_efficiency_fraction, storage.discharge_efficiency_fraction) == (0.96, 0.96)
    assert storage.energy_kwh == pytest.approx(0.3 * 50.0, abs=1e-12)
    assert (home.charge_efficiency_fraction, home.discharge_efficiency_fraction) == (0.95, 0.95)
    assert home.energy_kwh == pytest.approx(0.5 * 13.5 - 4.0 * 0.25 * 0.95, abs=1e-12)
    pools = {b.takes_over: b for b in problem.batteries[2:]}
    assert pools[(1,)].charge_efficiency_fraction == 0.96 and pools[(1,)].first_step == 1


def agent(agent_id: str, battery_power_kw: float = 0.0, **headroom_kw: float) -> AgentFlex:
    return AgentFlex(
        agent_id=agent_id,
        transformer_id="T1",
        net_power_kw=0.0,
        headroom_kw={CurtailAction(k): v for k, v in headroom_kw.items()},
        battery_power_kw=battery_power_kw,
    )


@pytest.mark.parametrize("loading_kw", [13.0, 17.0, -16.0, 5.0])
def test_mpc_without_reports_plans_this_step_like_the_optimal_planner(loading_kw):
    """Agents that report only headroom (no status): nothing to look ahead with, so the one-step optimum."""
    snapshot = Snapshot(
        transformers=(TransformerSnapshot("T1", 10.0, 10.0, loading_kw),),
        agents=(
            agent("b1", battery_power_kw=3.0, discharge_battery=5.0, charge_battery=5.0),
            agent("h1", curtail_solar=3.0, shed_load=4.0),
        ),
    )
    mine = {(c.agent_id, c.action): c.power_kw for c in MpcPlanner()(snapshot).commands}
    best = {(c.agent_id, c.action): c.power_kw for c in plan_optimal(snapshot).commands}
    assert mine == pytest.approx(best, abs=KW_TOL)


def test_mpc_is_registered_and_each_factory_call_starts_afresh():
    first, second = PLANNERS["mpc"](), PLANNERS["mpc"]()
    assert isinstance(first, MpcPlanner) and first is not second
    assert first.horizon_steps == 96


@pytest.mark.parametrize(
    "kwargs",
    [
        {"horizon_steps": 0},
        {"individual_steps": 0},
        {"forecast_days": 5, "history_days": 3},
        {"solar_forecast": "psychic"},
    ],
)
def test_mpc_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        MpcPlanner(**kwargs)


# --- the mpc planner started cold: a clear-sky prior for the PV it has not seen -----------------

COLD_START = datetime(2025, 7, 15, 6, 0)  # a July dawn, local standard time at the shipped data's site


def full_homes_at(stamp: datetime, solar_kw: float, step_s: float = 900.0, homes: int = 4) -> Snapshot:
    """6 kWp homes with full batteries, a 0.5 kW load and ``solar_kw`` of PV; 20 kW rating, 4 kW of reverse flow."""
    statuses = [
        home_status(f"home_{h}", 1, solar_kw, 0.5, min(solar_kw - 0.5, 0.0), 0.95, stamp).model_copy(
            update={"step_s": step_s}
        )
        for h in range(homes)
    ]
    return build_snapshot(statuses, ["T1"], lambda _tid: (20.0, 4.0))


def test_mpc_started_cold_at_a_sunny_dawn_makes_battery_room_for_noon():
    """First cycle, no history: the prior foresees the clear noon's export, so full batteries start emptying now.

    Four 6 kWp homes give some 18 kW of PV at a clear July noon against 2 kW of load and 4 kW
    of reverse flow allowed; their full batteries must hold what the limit cannot pass, and the
    few hours before the surplus begins, at 4 kW of export, cannot empty them: every step counts.
    With history alone (persistence of this dawn's 0.3 kW) it sees nothing at stake.
    """
    snapshot = full_homes_at(COLD_START, solar_kw=0.3)
    discharged_kw = sum(c.power_kw for c in MpcPlanner()(snapshot).commands if c.action is DISCHARGE)
    assert discharged_kw > 1.0
    assert MpcPlanner(pv_site=None)(full_homes_at(COLD_START, solar_kw=0.3)).commands == []


def test_mpc_prior_gives_way_to_the_days_it_has_seen():
    """After ``history_days`` days seen (here one, cloudy) the planner goes by them: no room made at the next dawn."""
    planner = MpcPlanner(horizon_steps=24, history_days=1, forecast_days=1)
    cloudy_kw = [0.3 if 6 <= h < 18 else 0.0 for h in range(24)]
    first = planner(full_homes_at(COLD_START, cloudy_kw[6], step_s=3600.0))
    assert any(c.action is DISCHARGE for c in first.commands)  # cold: the unseen day counts as clear
    for h in range(1, 24):
        stamp = COLD_START + timedelta(hours=h)
        planner(full_homes_at(stamp, cloudy_kw[stamp.hour], step_s=3600.0))
    assert planner(full_homes_at(COLD_START + timedelta(days=1), cloudy_kw[6], step_s=3600.0)).commands == []
