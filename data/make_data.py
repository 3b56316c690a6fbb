"""Regenerate the 15-minute 2025 home and battery historical-data CSVs (see README.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib
from demandlib import bdew

YEAR = 2025
STEP = pd.Timedelta(minutes=15)
# Rows are labelled with the interval start; values describe the interval
# [t, t + 15 min), so weather and sun position are evaluated at its midpoint.
SAMPLE_OFFSET = STEP / 2
TMY3_FILE = "723170TYA.CSV"  # Greensboro Piedmont Triad Intl, NC (ships with pvlib)

# PV system: 6.0 kWp south-facing rooftop array, PVWatts DC + PVWatts inverter.
PV_DC_W = 6000.0
PV_TILT_DEG = 30.0
PV_AZIMUTH_DEG = 180.0
PV_GAMMA_PDC = -0.004  # 1/degC
INV_AC_W = 5500.0
INV_ETA_NOM = 0.96
ALBEDO = 0.2  # the TMY3 albedo column is empty (all 0) for this station
TRANSPOSITION_MODEL = "perez"
CELL_TEMP_PARAMS = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["close_mount_glass_glass"]

ANNUAL_LOAD_KWH = 4500.0

# 2025 US federal holidays (5 U.S.C. 6103), used by the load profile
# (treated as Sundays) and the tariff (weekend pricing).
US_FEDERAL_HOLIDAYS_2025 = (
    dt.date(2025, 1, 1),  # New Year's Day
    dt.date(2025, 1, 20),  # Birthday of Martin Luther King, Jr.
    dt.date(2025, 2, 17),  # Washington's Birthday
    dt.date(2025, 5, 26),  # Memorial Day
    dt.date(2025, 6, 19),  # Juneteenth National Independence Day
    dt.date(2025, 7, 4),  # Independence Day
    dt.date(2025, 9, 1),  # Labor Day
    dt.date(2025, 10, 13),  # Columbus Day
    dt.date(2025, 11, 11),  # Veterans Day
    dt.date(2025, 11, 27),  # Thanksgiving Day
    dt.date(2025, 12, 25),  # Christmas Day
)

# Time-of-use tariff, USD/kWh.
PRICE_OFF_PEAK = 0.10
PRICE_SHOULDER = 0.18
PRICE_PEAK = 0.38
PRICE_PEAK_SUMMER = 0.45
SUMMER_MONTHS = (6, 7, 8, 9)
PEAK_HOURS = (16, 21)  # [start, end) local standard time
WEEKDAY_SHOULDER_HOURS = ((7, 16), (21, 23))

# Output columns (after "timestamp") and their decimals.
HOME_DECIMALS = {"solar_kw": 4, "load_kw": 4, "temp_air_c": 2, "ghi_w_per_m2": 1}
BATTERY_DECIMALS = {"price_per_kwh": 4, "temp_air_c": 2}
SIGNED_COLUMNS = ("temp_air_c",)  # every other column must be >= 0


def tmy3_path() -> str:
    """Path of the TMY3 file bundled with pvlib."""
    return os.path.join(os.path.dirname(pvlib.__file__), "data", TMY3_FILE)


def calendar_index(year: int = YEAR) -> pd.DatetimeIndex:
    """Naive 15-minute interval-start timestamps covering one calendar year."""
    start = pd.Timestamp(year, 1, 1)
    end = start + pd.DateOffset(years=1)
    return pd.date_range(start, end, freq=STEP, inclusive="left")


def tmy_to_year(tmy: pd.DataFrame, year: int = YEAR) -> pd.DataFrame:
    """Re-label TMY hour-ending rows with naive `year` timestamps at the hour centre.

    Uses the raw date/time columns: hour-ending HH (01..24) on MM/DD becomes
    MM/DD (HH-1):30 of `year`. The parsed index of read_tmy3 is not used because
    it mislabels the "24:00" rows (e.g. 02/28/1996 24:00 -> 1996-03-01 00:00).
    """
    date = pd.to_datetime(tmy["Date (MM/DD/YYYY)"], format="%m/%d/%Y")
    hour_ending = tmy["Time (HH:MM)"].str.slice(0, 2).astype(int)
    centre = (
        pd.to_datetime(pd.DataFrame({"year": year, "month": date.dt.month, "day": date.dt.day}))
        + pd.to_timedelta(hour_ending - 1, unit="h")
        + pd.Timedelta(minutes=30)
    )
    out = tmy.set_axis(pd.DatetimeIndex(centre)).sort_index()
    if not out.index.is_unique or len(out) != 8760:
        raise ValueError("TMY does not map onto 8760 distinct hours")
    return out


def interpolate_periodic(hourly: pd.DataFrame, times: pd.DatetimeIndex, year: int = YEAR) -> pd.DataFrame:
    """Linearly interpolate hourly columns at `times`, wrapping Dec 31 -> Jan 1."""
    origin = pd.Timestamp(year, 1, 1)
    period = (pd.Timestamp(year + 1, 1, 1) - origin).total_seconds()
    xp = (hourly.index - origin).total_seconds().to_numpy()
    x = (times - origin).total_seconds().to_numpy()
    return pd.DataFrame(
        {c: np.interp(x, xp, hourly[c].to_numpy(float), period=period) for c in hourly.columns},
        index=times,
    )


def load_weather(index: pd.DatetimeIndex) -> tuple[pd.DataFrame, pvlib.location.Location]:
    """15-minute weather (ghi, dni, dhi, temp_air, wind_speed) and the site location."""
    tmy, meta = pvlib.iotools.read_tmy3(tmy3_path(), map_variables=True)
    hourly = tmy_to_year(tmy)[["ghi", "dni", "dhi", "temp_air", "wind_speed"]]
    weather = interpolate_periodic(hourly, index + SAMPLE_OFFSET)
    site = pvlib.location.Location(  # tz=-5.0 -> fixed offset "Etc/GMT+5" (no DST)
        meta["latitude"],
        meta["longitude"],
        tz=meta["TZ"],
        altitude=meta["altitude"],
        name=meta["Name"].strip('"'),
    )
    return weather.set_axis(index), site


def solar_position(index: pd.DatetimeIndex, site: pvlib.location.Location) -> pd.DataFrame:
    """Sun position at the interval midpoints, indexed by the naive interval starts."""
    times = (index + SAMPLE_OFFSET).tz_localize(site.tz)
    return site.get_solarposition(times).set_axis(index)


def zero_irradiance_at_night(weather: pd.DataFrame, solpos: pd.DataFrame) -> pd.DataFrame:
    """Zero interpolated irradiance while the sun is below the horizon."""
    night = solpos["apparent_zenith"] >= 90.0
    out = weather.copy()
    out.loc[night, ["ghi", "dni", "dhi"]] = 0.0
    return out


def pv_ac_kw(weather: pd.DataFrame, solpos: pd.DataFrame) -> pd.Series:
    """AC output (kW) of the PVWatts rooftop system."""
    dni_extra = pvlib.irradiance.get_extra_radiation(weather.index.dayofyear)
    airmass = pvlib.atmosphere.get_relative_airmass(solpos["apparent_zenith"])
    poa = pvlib.irradiance.get_total_irradiance(
        PV_TILT_DEG,
        PV_AZIMUTH_DEG,
        solpos["apparent_zenith"],
        solpos["azimuth"],
        weather["dni"],
        weather["ghi"],
        weather["dhi"],
        dni_extra=dni_extra,
        airmass=airmass,
        albedo=ALBEDO,
        model=TRANSPOSITION_MODEL,
    )
    poa_global = poa["poa_global"].fillna(0.0).clip(lower=0.0)
    temp_cell = pvlib.temperature.sapm_cell(poa_global, weather["temp_air"], weather["wind_speed"], **CELL_TEMP_PARAMS)
    pdc = pvlib.pvsystem.pvwatts_dc(poa_global, temp_cell, PV_DC_W, PV_GAMMA_PDC)
    pac = pvlib.inverter.pvwatts(pdc, INV_AC_W / INV_ETA_NOM, eta_inv_nom=INV_ETA_NOM)
    pac = pd.Series(pac, index=weather.index).fillna(0.0).clip(lower=0.0)
    return (pac / 1000.0).rename("solar_kw")


def household_load_kw(index: pd.DatetimeIndex, annual_kwh: float = ANNUAL_LOAD_KWH) -> pd.Series:
    """BDEW h0 demand in kW (demandlib gives kWh per quarter hour, hence x4)."""
    # ElecSlp calls warnings.simplefilter("error") globally; contain it.
    with warnings.catch_warnings():
        slp = bdew.ElecSlp(index[0].year, holidays=list(US_FEDERAL_HOLIDAYS_2025))
    kwh_per_quarter = slp.get_scaled_profiles({"h0": annual_kwh})["h0"]
    kw = kwh_per_quarter.reindex(index) * (pd.Timedelta(hours=1) / STEP)
    if kw.isna().any():
        raise ValueError("demandlib index does not match the calendar")
    return kw.rename("load_kw")


def tou_price(index: pd.DatetimeIndex) -> pd.Series:
    """Time-of-use energy price in USD/kWh for each interval."""
    hour = index.hour.to_numpy()
    holiday = index.normalize().isin(pd.to_datetime(list(US_FEDERAL_HOLIDAYS_2025)))
    weekday = (index.dayofweek.to_numpy() < 5) & ~holiday
    peak = (hour >= PEAK_HOURS[0]) & (hour < PEAK_HOURS[1])
    shoulder = np.zeros(len(index), dtype=bool)
    for lo, hi in WEEKDAY_SHOULDER_HOURS:
        shoulder |= (hour >= lo) & (hour < hi)
    peak_price = np.where(np.isin(index.month, SUMMER_MONTHS), PRICE_PEAK_SUMMER, PRICE_PEAK)
    price = np.select(
        [weekday & peak, weekday & shoulder, ~weekday & peak],
        [peak_price, PRICE_SHOULDER, PRICE_SHOULDER],
        default=PRICE_OFF_PEAK,
    )
    return pd.Series(price, index=index, name="price_per_kwh")


def check_frame(frame: pd.DataFrame, expected_rows: int) -> None:
    """Raise if a frame has the wrong length, NaN, negatives or a bad time grid."""
    if len(frame) != expected_rows:
        raise ValueError(f"expected {expected_rows} rows, got {len(frame)}")
    if frame.isna().any().any():
        raise ValueError("NaN in output")
    if (frame.drop(columns=list(SIGNED_COLUMNS), errors="ignore") < 0).any().any():
        raise ValueError("negative value in a non-negative column")
    steps = np.diff(frame.index.to_numpy())
    if not (steps == STEP.to_timedelta64()).all():
        raise ValueError("timestamps are not a regular 15-minute grid")


def format_csv(frame: pd.DataFrame, decimals: dict[str, int]) -> str:
    """Render a frame as CSV text with fixed decimals per column."""
    cols = {"timestamp": frame.index.strftime("%Y-%m-%dT%H:%M:%S")}
    for col, ndigits in decimals.items():
        values = np.round(frame[col].to_numpy(float), ndigits) + 0.0  # + 0.0: no "-0.00"
        cols[col] = [f"{v:.{ndigits}f}" for v in values]
    return pd.DataFrame(cols).to_csv(index=False, lineterminator="\n")


def build_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute the home and battery tables on the 2025 15-minute calendar."""
    index = calendar_index(YEAR)
    weather, site = load_weather(index)
    solpos = solar_position(index, site)
    weather = zero_irradiance_at_night(weather, solpos)
    home = pd.DataFrame(
        {
            "solar_kw": pv_ac_kw(weather, solpos),
            "load_kw": household_load_kw(index),
            "temp_air_c": weather["temp_air"],
            "ghi_w_per_m2": weather["ghi"],
        },
        index=index,
    )
    battery = pd.DataFrame(
        {"price_per_kwh": tou_price(index), "temp_air_c": weather["temp_air"]},
        index=index,
    )
    mean_load = home["load_kw"].mean()
    target = ANNUAL_LOAD_KWH / (len(index) * STEP / pd.Timedelta(hours=1))
    if abs(mean_load / target - 1.0) > 0.005:
        raise ValueError(f"mean load {mean_load:.4f} kW deviates from {target:.4f} kW")
    for frame in (home, battery):
        check_frame(frame, len(index))
    return home, battery


def write_text(path: Path, text: str) -> None:
    """Write text with LF line endings."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: the folder of this script)",
    )
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    home, battery = build_frames()
    write_text(args.out_dir / "historical_data.csv", format_csv(home, HOME_DECIMALS))
    write_text(args.out_dir / "battery_historical_data.csv", format_csv(battery, BATTERY_DECIMALS))
    print(f"wrote {len(home)} rows each to historical_data.csv and battery_historical_data.csv in {args.out_dir}")


if __name__ == "__main__":
    main()
