"""Tests of the device physics (models/devices.py) and the unit helpers (models/units.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.devices import (
    COMMUNITY_BATTERY,
    HOME_BATTERY,
    BatteryModule,
    BatterySpec,
    LoadModule,
    SolarModule,
    step_battery,
    step_battery_energy,
)
from models.units import SECONDS_PER_HOUR, energy_kwh, seconds_to_hours

#: A round-numbered battery for hand-computed cases: 10 kWh, 5 kW, 95 % each way, SoC 0.1-0.9.
SPEC = BatterySpec(
    capacity_kwh=10.0,
    max_charge_kw=5.0,
    max_discharge_kw=5.0,
    charge_efficiency_fraction=0.95,
    discharge_efficiency_fraction=0.95,
    soc_min_fraction=0.1,
    soc_max_fraction=0.9,
)
QUARTER_HOUR_S = 900.0
HOURS = 0.25
#: Rounding allowance per step and per kWh of capacity in the energy balance.
ENERGY_TOL_KWH = 1e-12


# --- units -------------------------------------------------------------------------------------


def test_seconds_to_hours_quarter_hour():
    assert SECONDS_PER_HOUR == 3600.0
    assert seconds_to_hours(900.0) == pytest.approx(0.25)
    assert seconds_to_hours(0.0) == 0.0


@pytest.mark.parametrize(
    ("power_kw", "duration_s", "expected_kwh"),
    [(4.0, 900.0, 1.0), (-2.0, 1800.0, -1.0), (1.0, 3600.0, 1.0), (0.0, 900.0, 0.0), (10.0, 60.0, 10.0 / 60.0)],
)
def test_energy_kwh_cases(power_kw, duration_s, expected_kwh):
    assert energy_kwh(power_kw, duration_s) == pytest.approx(expected_kwh, abs=1e-12)


# --- step_battery: hand-computed cases ---------------------------------------------------------


def test_step_battery_charge_clipped_by_max_charge_kw():
    result = step_battery(0.5, 8.0, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == pytest.approx(5.0)
    assert result.grid_kwh == pytest.approx(5.0 * HOURS)
    assert result.stored_kwh == pytest.approx(5.0 * HOURS * 0.95)
    assert result.soc_fraction == pytest.approx(0.5 + 5.0 * HOURS * 0.95 / 10.0)


def test_step_battery_charge_clipped_by_energy_room_near_soc_max():
    room_kwh = (0.9 - 0.85) * 10.0
    allowed_kw = room_kwh / (0.95 * HOURS)  # 2.1052... kW fills the room exactly
    result = step_battery(0.85, 5.0, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == pytest.approx(allowed_kw, rel=1e-12)
    assert result.stored_kwh == pytest.approx(room_kwh, rel=1e-12)
    assert result.soc_fraction == pytest.approx(0.9, abs=1e-12)


def test_step_battery_discharge_clipped_by_energy_near_soc_min():
    available_kwh = (0.15 - 0.1) * 10.0
    allowed_kw = available_kwh * 0.95 / HOURS  # 1.9 kW empties the window exactly
    result = step_battery(0.15, -5.0, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == pytest.approx(-allowed_kw, rel=1e-12)
    assert result.grid_kwh == pytest.approx(-allowed_kw * HOURS, rel=1e-12)
    assert result.stored_kwh == pytest.approx(-available_kwh, rel=1e-12)
    assert result.soc_fraction == pytest.approx(0.1, abs=1e-12)


def test_step_battery_discharge_clipped_by_max_discharge_kw():
    result = step_battery(0.5, -9.0, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == pytest.approx(-5.0)
    assert result.soc_fraction == pytest.approx(0.5 - 5.0 * HOURS / 0.95 / 10.0)


def test_step_battery_charge_efficiency_stores_less_than_drawn():
    result = step_battery(0.5, 4.0, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == pytest.approx(4.0)
    assert result.grid_kwh == pytest.approx(1.0)
    assert result.stored_kwh == pytest.approx(0.95)
    assert result.soc_fraction == pytest.approx(0.595)


def test_step_battery_discharge_efficiency_takes_more_than_delivered():
    result = step_battery(0.5, -4.0, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == pytest.approx(-4.0)
    assert result.grid_kwh == pytest.approx(-1.0)
    assert result.stored_kwh == pytest.approx(-1.0 / 0.95)
    assert result.soc_fraction == pytest.approx(0.5 - 1.0 / 0.95 / 10.0)


def test_step_battery_zero_power_keeps_soc():
    result = step_battery(0.42, 0.0, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == 0.0
    assert result.stored_kwh == 0.0
    assert result.grid_kwh == 0.0
    assert result.soc_fraction == pytest.approx(0.42)


@pytest.mark.parametrize(
    ("soc_fraction", "power_kw", "expected_power_kw", "expected_soc"),
    [
        (0.99, 0.0, 0.0, 0.9),  # above the window: clamped to soc_max
        (0.99, 2.0, 0.0, 0.9),  # ... and then there is no room to charge
        (0.0, 0.0, 0.0, 0.1),  # below the window: clamped to soc_min
        (0.0, -2.0, 0.0, 0.1),  # ... and then nothing to discharge
        (1.5, -4.0, -4.0, 0.9 - 1.0 / 0.95 / 10.0),  # discharge starts from soc_max, not 1.5
        (-0.3, 4.0, 4.0, 0.1 + 0.095),  # charge starts from soc_min, not -0.3
    ],
)
def test_step_battery_soc_outside_window_clamped_first(soc_fraction, power_kw, expected_power_kw, expected_soc):
    result = step_battery(soc_fraction, power_kw, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == pytest.approx(expected_power_kw)
    assert result.soc_fraction == pytest.approx(expected_soc)


def test_step_battery_charge_at_soc_max_applies_nothing():
    result = step_battery(0.9, 3.0, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == 0.0
    assert result.soc_fraction == pytest.approx(0.9)


def test_step_battery_discharge_at_soc_min_applies_nothing():
    result = step_battery(0.1, -3.0, QUARTER_HOUR_S, SPEC)
    assert result.power_kw == 0.0
    assert result.soc_fraction == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("soc_fraction", "power_kw"),
    [
        (0.5, math.nan),
        (0.5, math.inf),
        (0.5, -math.inf),
        (math.nan, 1.0),
        (math.inf, 1.0),
        (-math.inf, 0.0),
    ],
)
def test_step_battery_non_finite_input_raises(soc_fraction, power_kw):
    with pytest.raises(ValueError, match="finite"):
        step_battery(soc_fraction, power_kw, QUARTER_HOUR_S, SPEC)


@pytest.mark.parametrize("step_s", [0.0, -1.0, -900.0])
def test_step_battery_non_positive_step_raises(step_s):
    with pytest.raises(ValueError, match="step_s"):
        step_battery(0.5, 1.0, step_s, SPEC)


@pytest.mark.parametrize("step_s", [math.nan, math.inf])
def test_step_battery_non_finite_step_raises(step_s):
    with pytest.raises(ValueError):
        step_battery(0.5, 1.0, step_s, SPEC)


# --- BatterySpec -------------------------------------------------------------------------------


def test_battery_spec_presets_are_valid():
    assert HOME_BATTERY.capacity_kwh == 13.5
    assert HOME_BATTERY.soc_min_fraction < HOME_BATTERY.soc_max_fraction
    assert COMMUNITY_BATTERY.max_charge_kw == 25.0


def test_battery_spec_zero_power_limit_allowed_and_applies_nothing():
    spec = replace(SPEC, max_charge_kw=0.0)
    assert step_battery(0.5, 3.0, QUARTER_HOUR_S, spec).power_kw == 0.0
    assert step_battery(0.5, -3.0, QUARTER_HOUR_S, spec).power_kw == pytest.approx(-3.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("capacity_kwh", 0.0),
        ("capacity_kwh", -10.0),
        ("capacity_kwh", math.nan),
        ("capacity_kwh", math.inf),
        ("max_charge_kw", -1.0),
        ("max_charge_kw", math.nan),
        ("max_charge_kw", math.inf),
        ("max_discharge_kw", -1.0),
        ("max_discharge_kw", math.inf),
        ("charge_efficiency_fraction", 0.0),
        ("charge_efficiency_fraction", 1.01),
        ("charge_efficiency_fraction", math.nan),
        ("discharge_efficiency_fraction", 0.0),
        ("discharge_efficiency_fraction", -0.5),
        ("discharge_efficiency_fraction", 95.0),
        ("soc_min_fraction", -0.1),
        ("soc_min_fraction", 0.9),  # equal to soc_max: empty window
        ("soc_min_fraction", math.nan),
        ("soc_max_fraction", 1.2),
        ("soc_max_fraction", math.inf),
    ],
)
def test_battery_spec_invalid_parameter_raises_naming_it(name, value):
    with pytest.raises(ValueError, match=name):
        replace(SPEC, **{name: value})


def test_battery_spec_nan_soc_max_names_soc_max():
    with pytest.raises(ValueError, match="soc_max_fraction"):
        replace(SPEC, soc_max_fraction=math.nan)


# --- step_battery: properties ------------------------------------------------------------------


@st.composite
def battery_specs(draw) -> BatterySpec:
    soc_min = draw(st.floats(0.0, 0.5))
    return BatterySpec(
        capacity_kwh=draw(st.floats(0.5, 500.0)),
        max_charge_kw=draw(st.floats(0.0, 100.0)),
        max_discharge_kw=draw(st.floats(0.0, 100.0)),
        charge_efficiency_fraction=draw(st.floats(0.5, 1.0)),
        discharge_efficiency_fraction=draw(st.floats(0.5, 1.0)),
        soc_min_fraction=soc_min,
        soc_max_fraction=draw(st.floats(soc_min + 0.01, 1.0)),
    )


setpoints_kw = st.floats(-200.0, 200.0, allow_nan=False)
step_lengths_s = st.sampled_from([1.0, 60.0, 300.0, 900.0, 3600.0]) | st.floats(1.0, 7200.0)


def _run(spec: BatterySpec, soc: float, requests: list[float], step_s: float):
    results = []
    for request in requests:
        result = step_battery(soc, request, step_s, spec)
        results.append(result)
        soc = result.soc_fraction
    return results


@settings(max_examples=150, deadline=None)
@given(battery_specs(), st.floats(-0.5, 1.5), st.lists(setpoints_kw, min_size=1, max_size=40), step_lengths_s)
def test_step_battery_soc_stays_in_window(spec, soc, requests, step_s):
    for result in _run(spec, soc, requests, step_s):
        assert spec.soc_min_fraction <= result.soc_fraction <= spec.soc_max_fraction


@settings(max_examples=150, deadline=None)
@given(battery_specs(), st.floats(0.0, 1.0), st.lists(setpoints_kw, min_size=1, max_size=40), step_lengths_s)
def test_step_battery_power_within_limits_and_request(spec, soc, requests, step_s):
    for request, result in zip(requests, _run(spec, soc, requests, step_s), strict=True):
        applied = result.power_kw
        assert -spec.max_discharge_kw - 1e-12 <= applied <= spec.max_charge_kw + 1e-12
        assert abs(applied) <= abs(request) + 1e-12
        # same direction as asked, or nothing at all
        assert applied == 0.0 or math.copysign(1.0, applied) == math.copysign(1.0, request)


@settings(max_examples=150, deadline=None)
@given(battery_specs(), st.floats(0.0, 1.0), st.lists(setpoints_kw, min_size=1, max_size=40), step_lengths_s)
def test_step_battery_energy_balance(spec, soc, requests, step_s):
    soc_start = min(max(soc, spec.soc_min_fraction), spec.soc_max_fraction)
    results = _run(spec, soc, requests, step_s)
    charge_kwh = [energy_kwh(r.power_kw, step_s) for r in results if r.power_kw > 0]
    discharge_kwh = [-energy_kwh(r.power_kw, step_s) for r in results if r.power_kw < 0]
    expected_kwh = (
        sum(charge_kwh) * spec.charge_efficiency_fraction - sum(discharge_kwh) / spec.discharge_efficiency_fraction
    )
    stored_kwh = spec.capacity_kwh * (results[-1].soc_fraction - soc_start)
    tolerance = ENERGY_TOL_KWH * max(spec.capacity_kwh, 1.0) * len(results)
    assert stored_kwh == pytest.approx(expected_kwh, abs=tolerance)
    assert sum(r.stored_kwh for r in results) == pytest.approx(expected_kwh, abs=tolerance)
    assert sum(r.grid_kwh for r in results) == pytest.approx(sum(charge_kwh) - sum(discharge_kwh), abs=tolerance)


# --- step_battery_energy: the same physics in kWh --------------------------------------------


def test_step_battery_energy_hand_computed_charge_hits_the_top():
    """9.5 of 10 kWh, 95 % charging: 0.5 kWh of room takes 0.5 / (0.95 x 0.25 h) = 2.105 kW of a 5 kW request."""
    result = step_battery_energy(
        9.5,
        5.0,
        QUARTER_HOUR_S,
        energy_min_kwh=1.0,
        energy_max_kwh=10.0,
        max_charge_kw=5.0,
        max_discharge_kw=5.0,
        charge_efficiency_fraction=0.95,
        discharge_efficiency_fraction=0.9,
    )
    assert result.power_kw == pytest.approx(0.5 / (0.95 * HOURS), abs=1e-12)
    assert result.energy_kwh == pytest.approx(10.0, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(battery_specs(), st.floats(-0.5, 1.5), setpoints_kw, step_lengths_s)
def test_step_battery_energy_matches_step_battery(spec, soc, request_kw, step_s):
    by_soc = step_battery(soc, request_kw, step_s, spec)
    by_energy = step_battery_energy(
        soc * spec.capacity_kwh,
        request_kw,
        step_s,
        energy_min_kwh=spec.soc_min_fraction * spec.capacity_kwh,
        energy_max_kwh=spec.soc_max_fraction * spec.capacity_kwh,
        max_charge_kw=spec.max_charge_kw,
        max_discharge_kw=spec.max_discharge_kw,
        charge_efficiency_fraction=spec.charge_efficiency_fraction,
        discharge_efficiency_fraction=spec.discharge_efficiency_fraction,
    )
    tolerance = 1e-9 * max(spec.capacity_kwh, abs(request_kw), 1.0) / min(seconds_to_hours(step_s), 1.0)
    assert by_energy.power_kw == pytest.approx(by_soc.power_kw, abs=tolerance)
    assert by_energy.energy_kwh == pytest.approx(by_soc.soc_fraction * spec.capacity_kwh, abs=1e-9 * spec.capacity_kwh)


# --- BatteryModule -----------------------------------------------------------------------------


def test_battery_module_init_clamps_soc_into_window():
    assert BatteryModule(SPEC, QUARTER_HOUR_S, soc_fraction=1.0).soc_fraction == pytest.approx(0.9)
    module = BatteryModule(SPEC, QUARTER_HOUR_S, soc_fraction=0.0)
    assert module.soc_fraction == pytest.approx(0.1)
    assert module.soc_start_fraction == pytest.approx(0.1)
    assert module.power_kw == 0.0


def test_battery_module_set_power_reapplies_from_step_start():
    module = BatteryModule(SPEC, QUARTER_HOUR_S, soc_fraction=0.5)
    module.set_power(5.0)
    module.set_power(-3.0)
    applied = module.set_power(2.0)
    assert applied == pytest.approx(2.0)
    assert module.power_kw == pytest.approx(2.0)
    assert module.soc_start_fraction == pytest.approx(0.5)
    assert module.soc_fraction == pytest.approx(0.5 + 2.0 * HOURS * 0.95 / 10.0)


@settings(max_examples=100, deadline=None)
@given(battery_specs(), st.floats(0.0, 1.0), st.lists(setpoints_kw, min_size=1, max_size=10))
def test_battery_module_set_power_final_soc_depends_on_last_setpoint_only(spec, soc, setpoints):
    module = BatteryModule(spec, QUARTER_HOUR_S, soc_fraction=soc)
    for setpoint in setpoints:
        module.set_power(setpoint)
    fresh = BatteryModule(spec, QUARTER_HOUR_S, soc_fraction=soc)
    fresh.set_power(setpoints[-1])
    assert module.soc_fraction == fresh.soc_fraction
    assert module.power_kw == fresh.power_kw


def test_battery_module_set_power_returns_clipped_power():
    module = BatteryModule(SPEC, QUARTER_HOUR_S, soc_fraction=0.85)
    assert module.set_power(5.0) == pytest.approx(0.5 / (0.95 * HOURS))
    assert module.soc_fraction == pytest.approx(0.9)


def test_battery_module_shift_returns_applied_shift():
    module = BatteryModule(SPEC, QUARTER_HOUR_S, soc_fraction=0.5)
    module.set_power(3.0)
    # from charging at 3 kW, a -10 kW shift can only reach the -5 kW discharge limit: -8 kW
    assert module.shift(-10.0) == pytest.approx(-8.0)
    assert module.power_kw == pytest.approx(-5.0)
    assert module.shift(1.5) == pytest.approx(1.5)
    assert module.power_kw == pytest.approx(-3.5)


def test_battery_module_shift_clipped_by_energy_room():
    module = BatteryModule(SPEC, QUARTER_HOUR_S, soc_fraction=0.85)
    module.set_power(1.0)
    allowed_kw = 0.5 / (0.95 * HOURS)
    assert module.shift(4.0) == pytest.approx(allowed_kw - 1.0)
    assert module.soc_fraction == pytest.approx(0.9)


def test_battery_module_headroom_hand_case():
    module = BatteryModule(SPEC, QUARTER_HOUR_S, soc_fraction=0.5)
    module.set_power(3.0)
    assert module.charge_headroom_kw == pytest.approx(2.0)
    assert module.discharge_headroom_kw == pytest.approx(8.0)


@settings(max_examples=150, deadline=None)
@given(battery_specs(), st.floats(0.0, 1.0), setpoints_kw, step_lengths_s)
def test_battery_module_charge_headroom_is_what_a_shift_applies(spec, soc, setpoint, step_s):
    module = BatteryModule(spec, step_s, soc_fraction=soc)
    module.set_power(setpoint)
    headroom = module.charge_headroom_kw
    assert headroom >= 0.0
    tolerance = 1e-9 * max(1.0, spec.max_charge_kw, spec.max_discharge_kw)
    assert module.shift(headroom) == pytest.approx(headroom, abs=tolerance)
    assert module.shift(1.0) == pytest.approx(0.0, abs=tolerance)  # nothing left


@settings(max_examples=150, deadline=None)
@given(battery_specs(), st.floats(0.0, 1.0), setpoints_kw, step_lengths_s)
def test_battery_module_discharge_headroom_is_what_a_shift_applies(spec, soc, setpoint, step_s):
    module = BatteryModule(spec, step_s, soc_fraction=soc)
    module.set_power(setpoint)
    headroom = module.discharge_headroom_kw
    assert headroom >= 0.0
    tolerance = 1e-9 * max(1.0, spec.max_charge_kw, spec.max_discharge_kw)
    assert module.shift(-headroom) == pytest.approx(-headroom, abs=tolerance)
    assert module.shift(-1.0) == pytest.approx(0.0, abs=tolerance)


@settings(max_examples=100, deadline=None)
@given(battery_specs(), st.floats(0.0, 1.0), setpoints_kw, st.floats(0.0, 300.0))
def test_battery_module_shift_beyond_headroom_applies_headroom(spec, soc, setpoint, extra_kw):
    up = BatteryModule(spec, QUARTER_HOUR_S, soc_fraction=soc)
    up.set_power(setpoint)
    charge_headroom = up.charge_headroom_kw
    assert up.shift(charge_headroom + extra_kw) == pytest.approx(
        charge_headroom, abs=1e-9 * max(1.0, spec.max_charge_kw)
    )
    down = BatteryModule(spec, QUARTER_HOUR_S, soc_fraction=soc)
    down.set_power(setpoint)
    discharge_headroom = down.discharge_headroom_kw
    assert down.shift(-discharge_headroom - extra_kw) == pytest.approx(
        -discharge_headroom, abs=1e-9 * max(1.0, spec.max_discharge_kw)
    )


def test_battery_module_begin_step_starts_idle_from_last_soc():
    module = BatteryModule(SPEC, QUARTER_HOUR_S, soc_fraction=0.5)
    module.set_power(4.0)
    soc_after = module.soc_fraction
    assert soc_after == pytest.approx(0.595)
    module.begin_step()
    assert module.power_kw == 0.0
    assert module.soc_start_fraction == soc_after
    assert module.soc_fraction == soc_after
    # the next step's setpoints are applied from the new start
    module.set_power(4.0)
    assert module.soc_fraction == pytest.approx(0.69)


# --- SolarModule -------------------------------------------------------------------------------


def test_solar_module_curtail_hand_case():
    solar = SolarModule(capacity_kwp=5.0)
    solar.begin_step(3.0)
    assert solar.output_kw == pytest.approx(3.0)
    assert solar.curtail(2.0) == pytest.approx(2.0)
    assert solar.curtail(5.0) == pytest.approx(1.0)  # only 1 kW was left
    assert solar.curtail(1.0) == 0.0
    assert solar.curtailed_kw == pytest.approx(3.0)
    assert solar.output_kw == pytest.approx(0.0)


def test_solar_module_curtail_negative_request_does_nothing():
    solar = SolarModule(capacity_kwp=5.0)
    solar.begin_step(3.0)
    assert solar.curtail(-2.0) == 0.0
    assert solar.output_kw == pytest.approx(3.0)


def test_solar_module_begin_step_resets_and_floors_at_zero():
    solar = SolarModule(capacity_kwp=5.0)
    solar.begin_step(3.0)
    solar.curtail(1.0)
    solar.begin_step(-0.5)
    assert solar.available_kw == 0.0
    assert solar.curtailed_kw == 0.0
    assert solar.output_kw == 0.0


@settings(max_examples=150, deadline=None)
@given(st.floats(-5.0, 50.0), st.lists(st.floats(-20.0, 60.0), max_size=10))
def test_solar_module_curtail_never_exceeds_output(available_kw, requests):
    solar = SolarModule(capacity_kwp=50.0)
    solar.begin_step(available_kw)
    for request in requests:
        before = solar.output_kw
        applied = solar.curtail(request)
        assert 0.0 <= applied <= max(request, 0.0)
        assert applied <= before
        assert solar.output_kw >= -1e-12
        assert solar.curtailed_kw <= solar.available_kw + 1e-12


# --- LoadModule --------------------------------------------------------------------------------


def test_load_module_shed_hand_case():
    load = LoadModule(flexible_fraction=0.3)
    load.begin_step(10.0)
    assert load.flexible_kw == pytest.approx(3.0)
    assert load.shed(2.0) == pytest.approx(2.0)
    assert load.shed_headroom_kw == pytest.approx(1.0)
    assert load.shed(5.0) == pytest.approx(1.0)
    assert load.shed(1.0) == 0.0
    assert load.shed(-1.0) == 0.0
    assert load.served_kw == pytest.approx(7.0)


def test_load_module_begin_step_resets_and_floors_at_zero():
    load = LoadModule(flexible_fraction=0.5)
    load.begin_step(4.0)
    load.shed(1.0)
    load.begin_step(-2.0)
    assert load.demand_kw == 0.0
    assert load.shed_kw == 0.0
    assert load.flexible_kw == 0.0


@settings(max_examples=150, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(-5.0, 50.0), st.lists(st.floats(-20.0, 60.0), max_size=10))
def test_load_module_shed_never_exceeds_flexible_share(fraction, demand_kw, requests):
    load = LoadModule(flexible_fraction=fraction)
    load.begin_step(demand_kw)
    for request in requests:
        applied = load.shed(request)
        assert 0.0 <= applied <= max(request, 0.0)
        assert load.shed_kw <= load.flexible_kw + 1e-12
        assert load.served_kw >= load.demand_kw * (1.0 - fraction) - 1e-12


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_load_module_flexible_fraction_within_bounds_accepted(fraction):
    load = LoadModule(flexible_fraction=fraction)
    load.begin_step(8.0)
    assert load.flexible_kw == pytest.approx(8.0 * fraction)


@pytest.mark.parametrize("fraction", [-0.01, 1.01, 30.0, math.nan])
def test_load_module_flexible_fraction_outside_bounds_raises(fraction):
    with pytest.raises(ValueError, match="flexible_fraction"):
        LoadModule(flexible_fraction=fraction)
