"""The OpenWeatherMap solar forecast for the mpc planner, against a mocked API (never the real one)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd
import pytest
import respx

from agents.planners.mpc import SOLAR, MpcPlanner
from agents.planners.weather import FORECAST_URL, CloudForecast, clear_sky_index

NOON_UTC = datetime(2026, 6, 21, 17, 0, tzinfo=UTC)  # about solar noon in Greensboro


def owm_answer(cloud_percent: list[int], start: datetime = NOON_UTC) -> dict:
    """OpenWeatherMap's 5-day forecast shape: an entry every 3 hours with clouds.all in percent."""
    t0 = int(start.timestamp())
    return {
        "cod": "200",
        "list": [
            {"dt": t0 + 10800 * i, "clouds": {"all": c}, "main": {"temp": 25.0}} for i, c in enumerate(cloud_percent)
        ],
    }


def test_clear_sky_index_is_one_under_a_clear_sky_and_falls_with_clouds():
    times = pd.DatetimeIndex([NOON_UTC] * 3)
    index = clear_sky_index(times, np.array([0.0, 0.5, 1.0]), 36.10, -79.95)
    assert index[0] == pytest.approx(1.0)
    assert 0.85 < index[1] < 1.0  # Kasten-Czeplak: half cover takes little
    assert 0.2 < index[2] < 0.4  # overcast: about a quarter of the global irradiance is left
    assert index[0] > index[1] > index[2]


def test_clear_sky_index_is_one_at_night():
    night = pd.DatetimeIndex([datetime(2026, 6, 21, 6, 0, tzinfo=UTC)])  # 02:00 local
    assert clear_sky_index(night, np.array([1.0]), 36.10, -79.95)[0] == 1.0


@respx.mock
def test_cloud_forecast_reads_openweathermap_and_interpolates_per_step():
    route = respx.get(FORECAST_URL).mock(return_value=httpx.Response(200, json=owm_answer([0, 100, 100, 0])))
    sky = CloudForecast("test-key")
    index = sky(n_steps=13, step_s=900, now=NOON_UTC)  # 3 hours of 15-minute steps
    assert route.call_count == 1
    params = route.calls[0].request.url.params
    assert (params["appid"], params["lat"], params["lon"]) == ("test-key", "36.1", "-79.95")
    assert index[0] == pytest.approx(1.0)
    assert index[12] < 0.45  # 3 hours later: overcast
    assert all(np.diff(index) <= 1e-9)  # clouds thicken steadily between the two points
    sky(n_steps=4, step_s=900, now=NOON_UTC)
    assert route.call_count == 1  # refreshed hourly, not per call


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(401, json={"cod": 401, "message": "Invalid API key"}),
        httpx.Response(200, json={"list": []}),
        httpx.Response(200, text="not json"),
        httpx.ConnectTimeout("timed out"),
    ],
)
@respx.mock
def test_cloud_forecast_failure_leaves_the_planner_on_history(response, caplog):
    route = respx.get(FORECAST_URL)
    route.mock(side_effect=response) if isinstance(response, Exception) else route.mock(return_value=response)
    sky = CloudForecast("bad-key")
    assert sky(n_steps=4, step_s=900, now=NOON_UTC) is None
    assert "OpenWeatherMap forecast unavailable" in caplog.text
    assert "bad-key" not in caplog.text  # the key never reaches a log
    sky(n_steps=4, step_s=900, now=NOON_UTC)
    assert route.call_count == 1  # retried after ten minutes, not on every cycle


def test_mpc_scales_its_solar_profile_by_the_sky_forecast():
    from tests.test_mpc import random_snapshots  # two days of sunny homes on one transformer

    clear, cloudy = MpcPlanner(horizon_steps=96), MpcPlanner(horizon_steps=96, sky=lambda n, step_s: np.full(n, 0.3))
    snapshots = list(random_snapshots(seed=3, steps=2 * 96 + 30))
    for snapshot in snapshots:
        clear(snapshot)
        cloudy(snapshot)
    index = clear._step_index(snapshots[-1])
    rows_clear = clear._remember(snapshots[-1], index)
    rows_cloudy = cloudy._remember(snapshots[-1], index)
    solar_clear = clear.forecast(rows_clear, index)[..., SOLAR]
    solar_cloudy = cloudy.forecast(rows_cloudy, index)[..., SOLAR]
    assert solar_clear[:, 1:].sum() > 0
    assert solar_cloudy[:, 1:].sum() < 0.6 * solar_clear[:, 1:].sum()
    np.testing.assert_allclose(solar_cloudy[:, 0], solar_clear[:, 0])  # step 0 is what is seen now


def test_grid_agent_gives_the_mpc_planner_a_sky_only_with_a_key(monkeypatch):
    from agents.cycle.grid_agent import make_mpc_planner

    assert make_mpc_planner().sky is None
    monkeypatch.setenv("OPENWEATHERMAP_API_KEY", "test-key")
    sky = make_mpc_planner().sky
    assert isinstance(sky, CloudForecast) and sky.api_key == "test-key"
