"""The home agent in process, what only a home does: its self-consumption policy, solar, load, its data file.

The contract every device agent keeps (routes, curtail, validation, idempotency, auth, state, logs) is tested
for homes and storage systems alike in test_device_contract.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pytest import approx

from agents.common.settings import StartupError
from agents.home import create_app
from tests.conftest import HOME_DAY_START, make_home_settings


@pytest.fixture
def make_app(tmp_path: Path, home_csv: Path):
    """Build a home app on the small data file (night first); overrides go to the settings."""

    def build(**overrides):
        return create_app(make_home_settings(tmp_path, data_file=home_csv, **overrides), register=False)

    return build


@pytest.fixture
async def client(make_app, serve_app) -> httpx.AsyncClient:
    """A client to a home app at night, before any step."""
    return await serve_app(make_app())


@pytest.fixture
async def day_client(make_app, serve_app) -> httpx.AsyncClient:
    """A client to a home app stepped once into the sun: solar 4 kW, load 1 kW, battery charging 3 kW, net 0."""
    c = await serve_app(make_app(start=HOME_DAY_START))
    assert (await c.post("/simulate")).status_code == 200
    return c


async def curtail(
    client: httpx.AsyncClient, action: str, power_kw: float, command_id: str | None = None, **kwargs
) -> httpx.Response:
    body = {"command_id": command_id or f"{action}-{power_kw}", "action": action, "power_kw": power_kw}
    return await client.post("/curtail", json=body, **kwargs)


# -- status --------------------------------------------------------------------------------------
async def test_status_net_power_is_load_minus_solar_plus_battery(day_client):
    body = (await day_client.get("/status")).json()
    expected = body["load"]["served_kw"] - body["solar"]["output_kw"] + body["battery"]["power_kw"]
    assert body["net_power_kw"] == approx(expected, abs=1e-9)


# -- /simulate -----------------------------------------------------------------------------------
async def test_simulate_self_consumption_policy_stores_the_surplus(day_client):
    body = (await day_client.get("/status")).json()
    assert body["battery"]["power_kw"] == approx(3.0)  # 4 kW PV - 1 kW load
    assert body["net_power_kw"] == approx(0.0, abs=1e-9)


async def test_simulate_at_night_covers_the_load_from_the_battery(client):
    body = (await client.post("/simulate")).json()
    assert body["battery"]["power_kw"] == approx(-1.0)
    assert body["net_power_kw"] == approx(0.0, abs=1e-9)


async def test_pv_size_scales_the_data(make_app, serve_app):
    c = await serve_app(make_app(start=HOME_DAY_START, pv_kwp=3.0))
    body = (await c.post("/simulate")).json()
    assert body["solar"]["available_kw"] == approx(2.0)


async def test_simulate_wraps_around_the_data_while_the_clock_runs_on(make_app, serve_app):
    c = await serve_app(make_app())
    for _ in range(9):
        body = (await c.post("/simulate")).json()
    assert body["step"] == 9
    assert body["timestamp"] == "2025-06-01T02:00:00"
    assert body["solar"]["available_kw"] == approx(0.0)  # row 0 again: night


# -- /curtail: solar, load and a home without a battery ------------------------------------------
async def test_curtail_solar_moves_output_to_curtailed(day_client):
    body = (await curtail(day_client, "curtail_solar", 1.5)).json()
    assert body["agent_status"]["solar"]["output_kw"] == approx(2.5)
    assert body["agent_status"]["solar"]["curtailed_kw"] == approx(1.5)


async def test_shed_load_moves_served_to_shed(day_client):
    body = (await curtail(day_client, "shed_load", 0.25)).json()
    assert body["agent_status"]["load"]["served_kw"] == approx(0.75)
    assert body["agent_status"]["load"]["shed_kw"] == approx(0.25)


async def test_curtail_solar_at_night_is_rejected_with_a_reason(client):
    before = (await client.post("/simulate")).json()
    body = (await curtail(client, "curtail_solar", 1.0)).json()
    assert body["status"] == "rejected"
    assert body["applied_kw"] == 0.0
    assert "solar" in body["reason"]
    assert body["agent_status"]["net_power_kw"] == approx(before["net_power_kw"])


async def test_shed_load_beyond_the_flexible_share_is_partial(day_client):
    before = (await day_client.get("/status")).json()["net_power_kw"]
    body = (await curtail(day_client, "shed_load", 1.0)).json()
    assert body["status"] == "partial"
    assert body["applied_kw"] == approx(0.3)  # 30 % of 1 kW
    assert "load" in body["reason"]
    assert body["agent_status"]["net_power_kw"] == approx(before - 0.3)


async def test_curtail_solar_beyond_the_output_is_partial(day_client):
    body = (await curtail(day_client, "curtail_solar", 10.0)).json()
    assert body["status"] == "partial"
    assert body["applied_kw"] == approx(4.0)
    assert body["agent_status"]["solar"]["output_kw"] == approx(0.0)


async def test_home_without_battery_rejects_battery_commands(make_app, serve_app):
    c = await serve_app(make_app(start=HOME_DAY_START, battery_kwh=0.0))
    status = (await c.post("/simulate")).json()
    assert status["battery"] is None
    assert status["net_power_kw"] == approx(-3.0)
    body = (await curtail(c, "charge_battery", 1.0)).json()
    assert body["status"] == "rejected"
    assert "battery" in body["reason"]


# -- start-up errors of the home's data file -----------------------------------------------------
def test_uneven_timestamps_name_the_first_uneven_line(tmp_path):
    rows = [
        "timestamp,solar_kw,load_kw,temp_air_c",
        "2025-06-01T00:00:00,0,1,15",
        "2025-06-01T00:15:00,0,1,15",
        "2025-06-01T00:20:00,0,1,15",
        "2025-06-01T00:45:00,0,1,15",
    ]
    path = tmp_path / "uneven.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(StartupError, match=r"uneven\.csv, line 4, column timestamp"):
        create_app(make_home_settings(tmp_path, data_file=path), register=False)


def test_data_file_missing_a_column_is_named(tmp_path):
    path = tmp_path / "no_load.csv"
    path.write_text(
        "timestamp,solar_kw,temp_air_c\n2025-06-01T00:00:00,0,1\n2025-06-01T00:15:00,0,1\n", encoding="utf-8"
    )
    with pytest.raises(StartupError, match="load_kw"):
        create_app(make_home_settings(tmp_path, data_file=path), register=False)


async def test_status_reports_what_a_planner_needs_of_the_battery(day_client):
    """Start-of-step SoC, efficiencies and the local setpoint, which a command leaves as it was."""
    battery = (await day_client.get("/status")).json()["battery"]
    assert battery["soc_start_fraction"] == approx(0.5)
    assert (battery["charge_efficiency_fraction"], battery["discharge_efficiency_fraction"]) == (0.95, 0.95)
    assert battery["local_setpoint_kw"] == approx(3.0)  # 4 kW PV - 1 kW load
    commanded = (await curtail(day_client, "discharge_battery", 4.0)).json()["agent_status"]["battery"]
    assert commanded["power_kw"] == approx(-1.0)
    assert commanded["local_setpoint_kw"] == approx(3.0)
    assert commanded["soc_start_fraction"] == approx(0.5)
    assert commanded["soc_fraction"] == approx(0.5 - 1.0 * 0.25 / 0.95 / 13.5)
