"""Tests of the local policies and the power balance (models/policies.py) as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from models.policies import net_power_kw, price_setpoint_kw, self_consumption_setpoint_kw, temperature_derating_fraction


@pytest.mark.parametrize(
    ("temp_air_c", "expected"),
    [
        (-30.0, 0.5),
        (-10.0, 0.5),
        (-5.0, 0.75),
        (0.0, 1.0),
        (25.0, 1.0),
        (40.0, 1.0),
        (45.0, 0.75),
        (50.0, 0.5),
        (60.0, 0.5),
    ],
)
def test_temperature_derating_fraction_bands(temp_air_c, expected):
    assert temperature_derating_fraction(temp_air_c) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("price", "expected"), [(0.05, 25.0), (0.12, 25.0), (0.20, 0.0), (0.30, -25.0), (0.45, -25.0)])
def test_price_setpoint_kw_thresholds_are_inclusive(price, expected):
    assert price_setpoint_kw(price, 0.12, 0.30, 25.0) == expected


@pytest.mark.parametrize(
    ("solar_output_kw", "load_served_kw", "expected"),
    [(5.0, 1.5, 3.5), (0.0, 2.0, -2.0), (1.25, 1.25, 0.0)],
)
def test_self_consumption_setpoint_kw_stores_the_surplus_and_covers_the_deficit(
    solar_output_kw, load_served_kw, expected
):
    assert self_consumption_setpoint_kw(solar_output_kw, load_served_kw) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("load_served_kw", "solar_output_kw", "battery_power_kw", "expected"),
    [(2.0, 5.0, 1.0, -2.0), (2.0, 0.0, -1.5, 0.5), (0.0, 0.0, 25.0, 25.0), (1.0, 3.0, 2.0, 0.0)],
)
def test_net_power_kw_is_load_minus_solar_plus_battery(load_served_kw, solar_output_kw, battery_power_kw, expected):
    assert net_power_kw(load_served_kw, solar_output_kw, battery_power_kw) == pytest.approx(expected, abs=1e-12)


def test_self_consumption_setpoint_kw_brings_net_power_to_zero_unclipped():
    solar, load = np.array([0.0, 2.0, 6.5]), np.array([1.0, 2.0, 0.5])
    setpoint = self_consumption_setpoint_kw(solar, load)
    np.testing.assert_allclose(setpoint, [-1.0, 0.0, 6.0], atol=1e-12)
    np.testing.assert_allclose(net_power_kw(load, solar, setpoint), 0.0, atol=1e-12)
