"""The battery agent in process, what only a storage system does: its price policy, derating, its energy limits.

The contract every device agent keeps (routes, curtail, validation, idempotency, auth, state, logs) is tested
for homes and storage systems alike in test_device_contract.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pytest import approx

from agents.battery import create_app
from agents.common.settings import StartupError
from tests.conftest import (
    BATTERY_CHEAP_START,
    BATTERY_COLD_START,
    BATTERY_DEAR_START,
    BATTERY_IDLE_START,
    make_battery_settings,
)


@pytest.fixture
def make_app(tmp_path: Path, battery_csv: Path):
    """Build a battery app on the small data file (cheap hour first); overrides go to the settings."""

    def build(**overrides):
        return create_app(make_battery_settings(tmp_path, data_file=battery_csv, **overrides), register=False)

    return build


async def stepped(serve_app, make_app, start: str, **overrides) -> httpx.AsyncClient:
    c = await serve_app(make_app(start=start, **overrides))
    assert (await c.post("/simulate")).status_code == 200
    return c


async def curtail(
    client: httpx.AsyncClient, action: str, power_kw: float, command_id: str | None = None, **kwargs
) -> httpx.Response:
    body = {"command_id": command_id or f"{action}-{power_kw}", "action": action, "power_kw": power_kw}
    return await client.post("/curtail", json=body, **kwargs)


async def test_status_reports_what_a_planner_needs_of_the_battery(serve_app, make_app):
    """The storage's own efficiencies (96 %), its start-of-step SoC and the price policy's setpoint."""
    c = await stepped(serve_app, make_app, BATTERY_CHEAP_START)
    battery = (await c.get("/status")).json()["battery"]
    assert (battery["charge_efficiency_fraction"], battery["discharge_efficiency_fraction"]) == (0.96, 0.96)
    assert battery["soc_start_fraction"] == approx(0.5)
    assert battery["local_setpoint_kw"] == approx(25.0)  # cheap: charge at full power
    assert battery["soc_fraction"] == approx(0.5 + 25.0 * 0.25 * 0.96 / 50.0)
    commanded = (await curtail(c, "discharge_battery", 10.0)).json()["agent_status"]["battery"]
    assert (commanded["power_kw"], commanded["local_setpoint_kw"]) == (approx(15.0), approx(25.0))


# -- /simulate and the local policy --------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "power_kw"),
    [(BATTERY_CHEAP_START, 25.0), (BATTERY_IDLE_START, 0.0), (BATTERY_DEAR_START, -25.0)],
    ids=["cheap", "middling", "dear"],
)
async def test_price_policy_sets_the_power(serve_app, make_app, start, power_kw):
    c = await stepped(serve_app, make_app, start)
    body = (await c.get("/status")).json()
    assert body["battery"]["power_kw"] == approx(power_kw)
    assert body["net_power_kw"] == approx(power_kw)


async def test_cold_derates_the_power_limits(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_COLD_START)
    body = (await c.get("/status")).json()
    assert body["battery"]["max_charge_kw"] == approx(12.5)
    assert body["battery"]["max_discharge_kw"] == approx(12.5)
    assert body["flexibility"]["charge_battery_kw"] == approx(12.5)


async def test_charging_raises_the_soc_with_losses(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_CHEAP_START)
    soc = (await c.get("/status")).json()["battery"]["soc_fraction"]
    assert soc == approx(0.5 + 25.0 * 0.25 * 0.96 / 50.0)


# -- /curtail ------------------------------------------------------------------------------------
async def test_soc_follows_the_final_setpoint(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_CHEAP_START)
    body = (await curtail(c, "discharge_battery", 25.0)).json()  # 25 kW charging -> idle
    assert body["agent_status"]["battery"]["soc_fraction"] == approx(0.5)


@pytest.mark.parametrize("action", ["curtail_solar", "shed_load"])
async def test_a_battery_agent_rejects_solar_and_load_commands(serve_app, make_app, action):
    c = await stepped(serve_app, make_app, BATTERY_IDLE_START)
    response = await curtail(c, action, 1.0)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "rejected"
    assert body["applied_kw"] == 0.0
    assert action in body["reason"]
    assert body["agent_status"]["net_power_kw"] == 0.0


async def test_charge_at_full_power_is_rejected(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_CHEAP_START)
    body = (await curtail(c, "charge_battery", 1.0)).json()
    assert body["status"] == "rejected"
    assert body["agent_status"]["net_power_kw"] == approx(25.0)


async def test_charge_into_a_nearly_full_battery_is_partial_by_energy(serve_app, make_app):
    # 0.5 kWh of room in a 50 kWh battery: 0.5 / (0.96 * 0.25 h) = 2.083 kW for one step.
    c = await stepped(serve_app, make_app, BATTERY_IDLE_START, initial_soc_fraction=0.94)
    body = (await curtail(c, "charge_battery", 10.0)).json()
    assert body["status"] == "partial"
    assert body["applied_kw"] == approx(0.5 / (0.96 * 0.25))
    assert body["agent_status"]["battery"]["soc_fraction"] == approx(0.95)


# -- start-up errors -----------------------------------------------------------------------------
def test_home_data_file_is_not_battery_data(tmp_path, home_csv):
    with pytest.raises(StartupError, match="price_per_kwh"):
        create_app(make_battery_settings(tmp_path, data_file=home_csv), register=False)
