"""Tests of the planners' snapshot (agents/planners/snapshot.py): built from agent reports, in one place."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from agents.device.battery import BatteryAgent
from agents.device.home import HomeAgent
from agents.planners.snapshot import UNREPORTED_EFFICIENCY_FRACTION, battery_view, build_snapshot
from models.schemas import AgentStatus, AgentType, BatteryStatus, CurtailAction, Flexibility, LoadStatus, SolarStatus
from tests.conftest import BATTERY_CHEAP_START, HOME_DAY_START, make_battery_settings, make_home_settings

STAMP = datetime(2025, 6, 1, 12, 0)


def battery_status(**overrides) -> BatteryStatus:
    """A 20 kWh battery, 10-90 %, ending the step at 0.6 after charging 4 kW; overrides win."""
    fields = {
        "soc_fraction": 0.6,
        "power_kw": 4.0,
        "capacity_kwh": 20.0,
        "max_charge_kw": 5.0,
        "max_discharge_kw": 6.0,
        "soc_min_fraction": 0.1,
        "soc_max_fraction": 0.9,
        "soc_start_fraction": 0.553,
        "charge_efficiency_fraction": 0.94,
        "discharge_efficiency_fraction": 0.92,
        "local_setpoint_kw": 4.5,
    }
    return BatteryStatus(**{**fields, **overrides})


def status(agent_id: str, battery: BatteryStatus | None, agent_type: AgentType = AgentType.home) -> AgentStatus:
    return AgentStatus(
        agent_id=agent_id,
        agent_type=agent_type,
        transformer_id="T1",
        step=1,
        timestamp=STAMP,
        step_s=900.0,
        net_power_kw=1.5 - 3.0 + (battery.power_kw if battery else 0.0),
        solar=SolarStatus(capacity_kwp=5.0, available_kw=3.5, output_kw=3.0, curtailed_kw=0.5),
        load=LoadStatus(demand_kw=2.0, served_kw=1.5, shed_kw=0.5, flexible_kw=0.6),
        battery=battery,
        flexibility=Flexibility(
            curtail_solar_kw=3.0, shed_load_kw=0.1, charge_battery_kw=1.0, discharge_battery_kw=10.0
        ),
    )


def limits(_transformer_id: str) -> tuple[float, float]:
    return 10.0, 8.0


def test_build_snapshot_carries_each_batterys_reported_efficiencies_and_start_energy():
    other = battery_status(soc_start_fraction=0.25, charge_efficiency_fraction=0.97, discharge_efficiency_fraction=0.9)
    snapshot = build_snapshot([status("h1", battery_status()), status("h2", other)], ["T1"], limits)
    first, second = (a.battery for a in snapshot.agents)
    assert first.energy_start_kwh == pytest.approx(0.553 * 20.0, abs=1e-12)
    assert (first.charge_efficiency_fraction, first.discharge_efficiency_fraction) == pytest.approx((0.94, 0.92))
    assert second.energy_start_kwh == pytest.approx(0.25 * 20.0, abs=1e-12)
    assert (second.charge_efficiency_fraction, second.discharge_efficiency_fraction) == pytest.approx((0.97, 0.9))
    assert (first.energy_min_kwh, first.energy_max_kwh) == pytest.approx((2.0, 18.0))
    assert (first.max_charge_kw, first.max_discharge_kw) == (5.0, 6.0)
    assert first.local_setpoint_kw == 4.5
    assert first.reported and second.reported


def test_build_snapshot_carries_what_planners_use_of_each_agent():
    snapshot = build_snapshot([status("h1", battery_status())], ["T1", "T2"], limits)
    (agent,) = snapshot.agents
    assert (agent.agent_type, agent.transformer_id) == (AgentType.home, "T1")
    assert (agent.solar_available_kw, agent.demand_kw, agent.flexible_kw) == (3.5, 2.0, 0.6)
    assert agent.battery_power_kw == 4.0
    assert agent.net_power_kw == pytest.approx(2.5)
    assert agent.net_power_without_battery_kw == pytest.approx(-1.5)
    assert agent.headroom_kw[CurtailAction.discharge_battery] == 10.0
    assert (agent.battery_charge_limit_kw, agent.battery_discharge_limit_kw) == pytest.approx((5.0, 6.0))
    assert [(t.transformer_id, t.loading_kw, t.rating_kw, t.reverse_limit_kw) for t in snapshot.transformers] == [
        ("T1", pytest.approx(2.5), 10.0, 8.0),
        ("T2", 0.0, 10.0, 8.0),
    ]
    assert (snapshot.timestamp, snapshot.step_s) == (STAMP, 900.0)


def test_battery_view_of_an_older_agent_assumes_efficiencies_and_works_back_the_start():
    """No start SoC, efficiencies or local setpoint: charging 4 kW for 15 min stored 4 x 0.25 x 0.95 kWh."""
    old = battery_status(
        soc_start_fraction=None,
        charge_efficiency_fraction=None,
        discharge_efficiency_fraction=None,
        local_setpoint_kw=None,
    )
    view = battery_view(old, 900.0)
    assert UNREPORTED_EFFICIENCY_FRACTION == 0.95
    assert (view.charge_efficiency_fraction, view.discharge_efficiency_fraction) == (0.95, 0.95)
    assert view.energy_start_kwh == pytest.approx(0.6 * 20.0 - 4.0 * 0.25 * 0.95, abs=1e-12)
    assert view.local_setpoint_kw == 4.0  # the power as reported
    assert not view.reported


def test_battery_view_of_an_older_agent_discharging_takes_back_the_losses():
    old = battery_status(power_kw=-2.0, soc_start_fraction=None, discharge_efficiency_fraction=None)
    view = battery_view(old, 900.0)
    assert view.energy_start_kwh == pytest.approx(0.6 * 20.0 + 2.0 * 0.25 / 0.95, abs=1e-12)
    assert view.charge_efficiency_fraction == 0.94  # what it does report is used


def test_build_snapshot_agent_without_battery_has_no_battery_view():
    (agent,) = build_snapshot([status("h1", None)], ["T1"], limits).agents
    assert agent.battery is None and agent.battery_power_kw == 0.0
    assert agent.can_move_battery  # it still reports battery headroom, which planners may use this step


def test_build_snapshot_from_real_agents_matches_their_physics(tmp_path: Path, home_csv: Path, battery_csv: Path):
    """A home (95 %) and the storage (96 %) stepped for real: the snapshot's start energy is each one's own."""
    home = HomeAgent(make_home_settings(tmp_path / "h", data_file=home_csv, start=HOME_DAY_START))
    storage = BatteryAgent(make_battery_settings(tmp_path / "b", data_file=battery_csv, start=BATTERY_CHEAP_START))
    try:
        statuses = [home.simulate(), storage.simulate()]
        views = {a.agent_id: a.battery for a in build_snapshot(statuses, ["T1"], limits).agents}
        for agent in (home, storage):
            view, spec = views[agent.agent_id], agent.battery.spec
            start_kwh = agent.battery.soc_start_fraction * spec.capacity_kwh
            assert view.energy_start_kwh == pytest.approx(start_kwh, abs=1e-12)
            assert view.charge_efficiency_fraction == pytest.approx(spec.charge_efficiency_fraction)
            assert view.discharge_efficiency_fraction == pytest.approx(spec.discharge_efficiency_fraction)
            assert view.local_setpoint_kw == pytest.approx(agent.battery.power_kw)  # no command yet
        assert views[storage.agent_id].charge_efficiency_fraction == pytest.approx(0.96)
        assert views[home.agent_id].charge_efficiency_fraction == pytest.approx(0.95)
    finally:
        home.close()
        storage.close()
