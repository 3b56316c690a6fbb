"""A solar forecast from OpenWeatherMap's cloud cover, through pvlib, for the mpc planner.

Used only when OPENWEATHERMAP_API_KEY is set. OpenWeatherMap's 5-day forecast gives cloud cover
every 3 hours; for each step ahead this module turns it into a clear-sky index of PV output: the
PV a 1 kWp south-facing array would give under that cloud cover, divided by what it would give
under a clear sky. GHI under clouds follows Kasten and Czeplak (1980),
GHI = GHI_clear * (1 - 0.75 * c^3.4) with c the cloud fraction; pvlib gives the clear sky
(Ineichen), the direct/diffuse split (Erbs), the transposition and PVWatts.

The simulation replays data of another year, so the forecast is applied by offset: the step k
steps ahead of the simulated now gets the forecast for k steps after the wall-clock now, as if
the replay ran live at this site.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pvlib

logger = logging.getLogger(__name__)

FORECAST_URL = "https://api.openweathermap.org/data/2.5/forecast"
#: The shipped data's site: Greensboro, NC (TMY3 723170).
DEFAULT_LATITUDE, DEFAULT_LONGITUDE = 36.10, -79.95


def clear_sky_index(
    times: pd.DatetimeIndex, cloud_fraction: np.ndarray, latitude: float, longitude: float
) -> np.ndarray:
    """PV output under the given cloud cover over PV output under a clear sky, per time (1 where the sun is down)."""
    location = pvlib.location.Location(latitude, longitude)
    solar = location.get_solarposition(times)
    clear = location.get_clearsky(times, model="ineichen", solar_position=solar)

    def pv_kw(ghi: pd.Series) -> np.ndarray:
        split = pvlib.irradiance.erbs(ghi, solar["zenith"], times)
        poa = pvlib.irradiance.get_total_irradiance(
            30, 180, solar["apparent_zenith"], solar["azimuth"], split["dni"], ghi, split["dhi"]
        )
        return pvlib.pvsystem.pvwatts_dc(
            poa["poa_global"].fillna(0.0), temp_cell=25.0, pdc0=1.0, gamma_pdc=-0.004
        ).to_numpy()

    cloudy = clear["ghi"] * (1.0 - 0.75 * np.clip(cloud_fraction, 0.0, 1.0) ** 3.4)
    clear_kw, cloudy_kw = pv_kw(clear["ghi"]), pv_kw(cloudy)
    with np.errstate(divide="ignore", invalid="ignore"):
        index = np.where(clear_kw > 1e-3, cloudy_kw / clear_kw, 1.0)
    return np.clip(np.nan_to_num(index, nan=1.0), 0.0, 1.0)


class CloudForecast:
    """OpenWeatherMap's cloud cover as a clear-sky index for each step ahead; refreshed hourly.

    Any failure (no answer within the timeout, an error status, a body it cannot read) is logged
    and leaves the planner on its history alone until the next try, ten minutes later.
    """

    def __init__(
        self,
        api_key: str,
        latitude: float = DEFAULT_LATITUDE,
        longitude: float = DEFAULT_LONGITUDE,
        timeout_s: float = 3.0,
        refresh_s: float = 3600.0,
        retry_s: float = 600.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.api_key, self.latitude, self.longitude = api_key, latitude, longitude
        self.refresh_s, self.retry_s = refresh_s, retry_s
        self.client = client or httpx.Client(timeout=timeout_s)
        self._points: tuple[np.ndarray, np.ndarray] | None = None  # unix seconds, cloud fraction
        self._next_fetch = 0.0

    def fetch(self) -> bool:
        """Fetch the forecast now; True when it was read."""
        try:
            response = self.client.get(
                FORECAST_URL, params={"lat": self.latitude, "lon": self.longitude, "appid": self.api_key}
            )
            response.raise_for_status()
            entries = response.json()["list"]
            stamps = np.array([float(e["dt"]) for e in entries])
            clouds = np.array([float(e["clouds"]["all"]) / 100.0 for e in entries])
            if len(stamps) == 0:
                raise ValueError("no forecast entries")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            reason = (
                f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else type(exc).__name__
            )
            logger.warning("OpenWeatherMap forecast unavailable (%s); the mpc planner uses its history alone", reason)
            self._next_fetch = time.monotonic() + self.retry_s
            return False
        self._points = (stamps, clouds)
        self._next_fetch = time.monotonic() + self.refresh_s
        return True

    def __call__(self, n_steps: int, step_s: float, now: datetime | None = None) -> np.ndarray | None:
        """The clear-sky index for each of the next ``n_steps`` steps from ``now``; None without a forecast."""
        if time.monotonic() >= self._next_fetch:
            self.fetch()
        if self._points is None:
            return None
        now = now or datetime.now(UTC)
        moments = [now + timedelta(seconds=step_s * k) for k in range(n_steps)]
        stamps, clouds = self._points
        cloud_fraction = np.interp(
            [m.timestamp() for m in moments], stamps, clouds
        )  # held flat beyond the forecast's ends
        times = pd.DatetimeIndex(moments)
        return clear_sky_index(times, cloud_fraction, self.latitude, self.longitude)
