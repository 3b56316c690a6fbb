"""The agents' local policies and a site's power balance, as pure functions.

Signs as everywhere (README's vocabulary): a battery setpoint > 0 charges, < 0 discharges; a
site's ``net_power_kw`` > 0 imports from the grid. Which way each command moves net power is
``models.schemas.CurtailAction.direction``, and nowhere else. The arithmetic ones work
element-wise on NumPy arrays as well as on floats, so planners and benches apply them to whole
forecasts. No I/O, no state.
"""

from __future__ import annotations

#: Air temperatures (degC) between which a lithium-ion system runs at full power.
FULL_POWER_FROM_C = 0.0
FULL_POWER_UP_TO_C = 40.0
#: Degrees beyond that band over which the allowed power falls by half, and the floor it falls to.
DERATING_SPAN_C = 20.0
DERATING_FLOOR_FRACTION = 0.5


def net_power_kw(load_served_kw, solar_output_kw, battery_power_kw):
    """A site's net power (kW, > 0 imports): load served - solar output + battery power (> 0 charging).

    A storage-only site passes 0 for load and solar: its net power is its battery's power.
    """
    return load_served_kw - solar_output_kw + battery_power_kw


def self_consumption_setpoint_kw(solar_output_kw, load_served_kw):
    """Local policy of a home battery: store the PV surplus, cover the deficit (kW, > 0 charges).

    The setpoint that would bring the home's net power to 0: solar output - load served. The
    battery's power limits and state of charge then clip it (``models.devices.step_battery``).
    """
    return solar_output_kw - load_served_kw


def price_setpoint_kw(
    price_per_kwh: float, charge_below_price_per_kwh: float, discharge_above_price_per_kwh: float, power_kw: float
) -> float:
    """Local policy of a storage system: ``power_kw`` charging at or below one price, discharging at or above another.

    price_per_kwh: this step's energy price; power_kw: the power allowed this step (kW, >= 0).
    Returns the setpoint (kW, > 0 charges); 0 between the two prices.
    """
    if price_per_kwh <= charge_below_price_per_kwh:
        return power_kw
    if price_per_kwh >= discharge_above_price_per_kwh:
        return -power_kw
    return 0.0


def temperature_derating_fraction(temp_air_c: float) -> float:
    """Share of rated power a lithium-ion system allows at an air temperature (0.5-1).

    Full power from 0 to 40 degC; beyond either end it falls linearly by half over 20 degC (0.75
    at -5 and 45 degC, 0.5 at -10 and 50 degC) and never below 0.5.
    """
    if temp_air_c < FULL_POWER_FROM_C:
        beyond_c = FULL_POWER_FROM_C - temp_air_c
    elif temp_air_c > FULL_POWER_UP_TO_C:
        beyond_c = temp_air_c - FULL_POWER_UP_TO_C
    else:
        return 1.0
    return max(1.0 - beyond_c / DERATING_SPAN_C, DERATING_FLOOR_FRACTION)
