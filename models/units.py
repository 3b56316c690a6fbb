"""Unit conversions, named once so that no bare ``/ 3600`` hides in the physics."""

SECONDS_PER_HOUR = 3600.0


def seconds_to_hours(duration_s: float) -> float:
    """Convert a duration in seconds to hours."""
    return duration_s / SECONDS_PER_HOUR


def energy_kwh(power_kw: float, duration_s: float) -> float:
    """Energy in kWh delivered by a constant power (kW) over a duration (s)."""
    return power_kw * seconds_to_hours(duration_s)
