"""Clear-sky PV output per kWp, through pvlib: what a PV system gives under a cloudless sky.

The mpc planner's prior for a PV system it has not yet seen for long: where its history has no
day at a time of day, it assumes that day was clear. The chain is the shipped data's
(``data/make_data.py``) with a clear sky in place of the TMY weather:

    clear sky (simplified Solis, Ineichen and Perez 2008; or Ineichen-Perez with pvlib's shipped
    Linke turbidity) -> plane of array (Perez transposition, albedo) -> PVWatts DC
    P_dc = P_dc0 * G_poa / 1000 * (1 + gamma_pdc * (T_cell - 25 degC)) -> PVWatts inverter.

The cell is held at ``temp_cell_c`` (25 degC: no heat loss), so the prior is an upper envelope
of clear days rather than their mean: over the shipped year no 15-minute value exceeds it by
more than 2.4 % in 99 % of daylight steps (the cold clear days of January come closest), and in
July it lies about 20 % above the clearest day. A planner that expects too much sun only moves
its batteries early; one that expects too little curtails.

pvlib is imported on first use (it takes most of a second). Nothing is read but pvlib's own
files, and only with ``clear_sky_model="ineichen"`` (its shipped Linke turbidity table); each
day's profile is cached per site and step length.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

import numpy as np

SECONDS_PER_DAY = 86_400.0
CLEAR_SKY_MODELS = ("simplified_solis", "ineichen")


@dataclass(frozen=True)
class PvSite:
    """Where PV arrays stand and how they are built; the defaults are the shipped data's (data/README.md).

    Timestamps given to the prior are local standard time at ``utc_offset_h`` all year (no
    daylight saving), each the start of its step. ``azimuth_deg`` is clockwise from north (180:
    south). ``inverter_ac_kw_per_kwp`` is the inverter's AC rating per kWp of DC (5.5 kW for
    6 kWp in the data).
    """

    latitude_deg: float = 36.10
    longitude_deg: float = -79.95
    altitude_m: float = 273.0
    utc_offset_h: float = -5.0
    tilt_deg: float = 30.0
    azimuth_deg: float = 180.0
    albedo_fraction: float = 0.2
    gamma_pdc_per_c: float = -0.004
    temp_cell_c: float = 25.0
    inverter_ac_kw_per_kwp: float = 5.5 / 6.0
    inverter_efficiency_fraction: float = 0.96
    clear_sky_model: str = "simplified_solis"

    def __post_init__(self) -> None:
        if self.clear_sky_model not in CLEAR_SKY_MODELS:
            raise ValueError(f"clear_sky_model is one of {', '.join(CLEAR_SKY_MODELS)}")


#: The site and PV system of the shipped data (TMY3 723170, Greensboro NC; 30 degrees, south).
DATA_SITE = PvSite()


def clear_sky_pv_kw_per_kwp(start: datetime, n_steps: int, step_s: float, site: PvSite = DATA_SITE) -> np.ndarray:
    """AC power (kW per kWp of DC, >= 0) under a clear sky for each of ``n_steps`` steps from ``start``.

    start: the first step's start, naive local standard time at ``site.utc_offset_h``.
    step_s: step length (s); each step's value is the power at its midpoint.
    Multiply by a system's ``capacity_kwp`` for its kW. When steps tile a day and ``start``
    lies on that grid, each day's profile is computed once per site and step length.
    """
    if n_steps <= 0:
        return np.zeros(0)
    start = start.replace(tzinfo=None)
    midnight = datetime(start.year, start.month, start.day)
    per_day = SECONDS_PER_DAY / step_s
    offset = (start - midnight).total_seconds() / step_s
    if not (per_day.is_integer() and offset.is_integer()):  # off any daily grid: no cache
        return _pv_kw_per_kwp(site, start, n_steps, step_s)
    first, per_day = int(offset), int(per_day)
    days = -(-(first + n_steps) // per_day)
    profile = np.concatenate([_day_kw_per_kwp(site, midnight.date() + timedelta(days=d), step_s) for d in range(days)])
    return profile[first : first + n_steps].copy()


@lru_cache(maxsize=64)
def _day_kw_per_kwp(site: PvSite, day: date, step_s: float) -> np.ndarray:
    """One day's clear-sky profile from midnight (kW/kWp), read-only: the cache hands out one array."""
    midnight = datetime(day.year, day.month, day.day)
    profile = _pv_kw_per_kwp(site, midnight, round(SECONDS_PER_DAY / step_s), step_s)
    profile.flags.writeable = False
    return profile


def _pv_kw_per_kwp(site: PvSite, start: datetime, n_steps: int, step_s: float) -> np.ndarray:
    """The chain of the module docstring at each step's midpoint (kW per kWp)."""
    import pandas as pd
    import pvlib  # here, not at import: most users of the planner never need it

    to_utc = timedelta(hours=-site.utc_offset_h)
    midpoints = pd.DatetimeIndex([start + to_utc + timedelta(seconds=step_s * (k + 0.5)) for k in range(n_steps)])
    midpoints = midpoints.tz_localize("UTC")
    location = pvlib.location.Location(site.latitude_deg, site.longitude_deg, altitude=site.altitude_m)
    sun = location.get_solarposition(midpoints)
    sky = location.get_clearsky(midpoints, model=site.clear_sky_model, solar_position=sun)
    poa = pvlib.irradiance.get_total_irradiance(
        site.tilt_deg,
        site.azimuth_deg,
        sun["apparent_zenith"],
        sun["azimuth"],
        sky["dni"],
        sky["ghi"],
        sky["dhi"],
        dni_extra=pvlib.irradiance.get_extra_radiation(midpoints),
        airmass=pvlib.atmosphere.get_relative_airmass(sun["apparent_zenith"]),
        albedo=site.albedo_fraction,
        model="perez",
    )
    poa_w_per_m2 = poa["poa_global"].fillna(0.0).clip(lower=0.0).to_numpy()
    dc_kw_per_kwp = pvlib.pvsystem.pvwatts_dc(poa_w_per_m2, site.temp_cell_c, 1.0, site.gamma_pdc_per_c)
    ac_kw_per_kwp = pvlib.inverter.pvwatts(
        dc_kw_per_kwp,
        site.inverter_ac_kw_per_kwp / site.inverter_efficiency_fraction,
        eta_inv_nom=site.inverter_efficiency_fraction,
    )
    return np.clip(np.nan_to_num(np.asarray(ac_kw_per_kwp, dtype=float)), 0.0, None)
