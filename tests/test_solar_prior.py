"""Tests of the clear-sky PV prior (models/solar_prior.py): night, noon, the shipped data's clear days, no network."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from agents.common.data import HOME_COLUMNS, load_timeseries
from models.solar_prior import DATA_SITE, PvSite, clear_sky_pv_kw_per_kwp

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "historical_data.csv"
DATA_PV_KWP = 6.0  # data/README.md: the data's solar_kw is for a 6 kWp array
STEPS_PER_DAY = 96
SEASONS = [datetime(2025, 1, 15), datetime(2025, 4, 15), datetime(2025, 7, 15), datetime(2025, 10, 15)]
#: The clearest day of January, April, July and October in the shipped data (its PV energy is the
#: largest share of the prior's in that month).
CLEAR_DAYS = [datetime(2025, 1, 11), datetime(2025, 4, 17), datetime(2025, 7, 8), datetime(2025, 10, 13)]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the prior tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("day", SEASONS)
def test_clear_sky_pv_kw_per_kwp_is_zero_at_night(day):
    profile = clear_sky_pv_kw_per_kwp(day, STEPS_PER_DAY, 900.0)
    assert profile.shape == (STEPS_PER_DAY,)
    assert np.all(profile >= 0.0)
    assert_allclose(profile[: 4 * 4], 0.0, atol=0.0)  # 00:00-04:00 local standard time: the sun is down all year
    assert_allclose(profile[21 * 4 :], 0.0, atol=0.0)  # 21:00-24:00
    assert profile.max() > 0.5  # and a clear noon gives most of the array's rating in every season


@pytest.mark.parametrize("day", SEASONS)
def test_clear_sky_pv_kw_per_kwp_peaks_near_solar_noon(day):
    """A south-facing array's clear day is symmetric about solar noon: its centre of mass lies within 10 min of it.

    So does the middle of its peak: the steps within 1 % of the maximum (a plateau where the
    inverter clips, from spring to autumn at 25 degC).
    """
    import pvlib

    step_s = 300.0
    profile = clear_sky_pv_kw_per_kwp(day, round(86_400 / step_s), step_s)
    hours = (np.arange(len(profile)) + 0.5) * step_s / 3600.0
    centre_h = float((profile * hours).sum() / profile.sum())
    site = DATA_SITE
    utc_midnight = pd.DatetimeIndex([day - timedelta(hours=site.utc_offset_h)]).tz_localize("UTC")
    transit = pvlib.solarposition.sun_rise_set_transit_spa(utc_midnight, site.latitude_deg, site.longitude_deg)
    noon_h = (transit["transit"].iloc[0] - utc_midnight[0]).total_seconds() / 3600.0
    assert centre_h == pytest.approx(noon_h, abs=10 / 60)
    peak_h = hours[profile >= 0.99 * profile.max()]
    assert (peak_h.min() + peak_h.max()) / 2 == pytest.approx(centre_h, abs=10 / 60)


@pytest.mark.parametrize("day", CLEAR_DAYS, ids=lambda d: d.strftime("%b"))
def test_clear_sky_pv_kw_per_kwp_bounds_the_shipped_data_on_clear_days(day):
    """On the clearest day of each season the prior is an upper envelope of the data, and near it.

    Tolerances (kW per kWp, the data scaled from its 6 kWp): no step of the data exceeds the prior
    by more than 0.06, and the day's energy is 75-105 % of the prior's. The prior's cell stays at
    25 degC while the data's heats in the sun, so a hot July day gives about 79 %, a cold January
    one 105 % (the TMY's clear days are a little clearer than simplified Solis's default sky).
    """
    data = load_timeseries(DATA_FILE, HOME_COLUMNS)
    first = data.index_of(day)
    seen = data.columns["solar_kw"][first : first + STEPS_PER_DAY] / DATA_PV_KWP
    prior = clear_sky_pv_kw_per_kwp(day, STEPS_PER_DAY, data.step_s)
    assert np.max(seen - prior) <= 0.06
    assert 0.75 <= seen.sum() / prior.sum() <= 1.05


def test_clear_sky_pv_kw_per_kwp_across_midnight_joins_the_days():
    evening = datetime(2025, 3, 1, 22, 0)
    across = clear_sky_pv_kw_per_kwp(evening, 96 + 8, 900.0)
    assert_allclose(across[:8], clear_sky_pv_kw_per_kwp(evening, 8, 900.0), atol=1e-12)
    assert_allclose(across[8:], clear_sky_pv_kw_per_kwp(datetime(2025, 3, 2), 96, 900.0), atol=1e-12)


def test_clear_sky_pv_kw_per_kwp_off_the_daily_grid_matches_its_neighbours():
    """A start between grid points (7.5 min past) gives the value between its neighbours' (a smooth clear day)."""
    on_grid = clear_sky_pv_kw_per_kwp(datetime(2025, 5, 1, 10, 0), 5, 900.0)
    between = clear_sky_pv_kw_per_kwp(datetime(2025, 5, 1, 10, 7, 30), 4, 900.0)
    assert_allclose(between, (on_grid[:-1] + on_grid[1:]) / 2, atol=0.01)


def test_clear_sky_pv_kw_per_kwp_hands_out_copies():
    day = datetime(2025, 6, 1)
    first = clear_sky_pv_kw_per_kwp(day, 96, 900.0)
    first[:] = -1.0
    assert np.all(clear_sky_pv_kw_per_kwp(day, 96, 900.0) >= 0.0)


@pytest.mark.parametrize("model", ["simplified_solis", "ineichen"])
def test_clear_sky_pv_kw_per_kwp_needs_no_network(no_network, model):
    """Ineichen looks its Linke turbidity up in a table shipped with pvlib; neither model downloads anything."""
    profile = clear_sky_pv_kw_per_kwp(datetime(2025, 9, 9), 96, 900.0, PvSite(clear_sky_model=model))
    assert 0.7 < profile.max() <= DATA_SITE.inverter_ac_kw_per_kwp + 1e-9


def test_pv_site_rejects_an_unknown_clear_sky_model():
    with pytest.raises(ValueError):
        PvSite(clear_sky_model="haurwitz")
