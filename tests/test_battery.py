"""The battery agent's HTTP app in process: routes, local policy, the curtail contract, validation, auth, state, logs."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
from pytest import approx

from agents.battery import create_app
from agents.device.agent import STEP_LOG_COLUMNS
from agents.common.settings import StartupError
from tests.conftest import (
    BATTERY_CHEAP_START,
    BATTERY_COLD_START,
    BATTERY_DEAR_START,
    BATTERY_ID,
    BATTERY_IDLE_START,
    bearer,
    make_battery_settings,
    running,
)

TOKEN = "s3cret-battery-token-for-tests"
JSON = {"content-type": "application/json"}
STEP = timedelta(minutes=15)

INVALID_BODIES = [
    pytest.param(b'{"command_id":"x","action":"charge_battery","power_kw":NaN}', "power_kw", id="nan"),
    pytest.param(b'{"command_id":"x","action":"charge_battery","power_kw":Infinity}', "power_kw", id="infinity"),
    pytest.param(b'{"command_id":"x","action":"charge_battery","power_kw":-1}', "power_kw", id="negative"),
    pytest.param(b'{"command_id":"x","action":"charge_battery","power_kw":"lots"}', "power_kw", id="string"),
    pytest.param(b'{"command_id":"x","action":"charge_battery"}', "power_kw", id="missing-power"),
    pytest.param(b'{"command_id":"x","action":"self_destruct","power_kw":1}', "action", id="unknown-action"),
    pytest.param(b'{"command_id":"x","action":"charge_battery","power_kw":1,"priority":9}', "priority", id="extra-field"),
    pytest.param(b'{"action":"charge_battery","power_kw":1}', "command_id", id="missing-command-id"),
]


@pytest.fixture
def make_app(tmp_path: Path, battery_csv: Path):
    """Build a battery app on the small data file (cheap hour first); overrides go to the settings."""

    def build(**overrides):
        return create_app(make_battery_settings(tmp_path, data_file=battery_csv, **overrides), register=False)

    return build


@pytest.fixture
async def client(make_app, serve_app) -> httpx.AsyncClient:
    """A client to a battery app before any step."""
    return await serve_app(make_app())


async def stepped(serve_app, make_app, start: str, **overrides) -> httpx.AsyncClient:
    c = await serve_app(make_app(start=start, **overrides))
    assert (await c.post("/simulate")).status_code == 200
    return c


async def curtail(client: httpx.AsyncClient, action: str, power_kw: float, command_id: str | None = None, **kwargs) -> httpx.Response:
    body = {"command_id": command_id or f"{action}-{power_kw}", "action": action, "power_kw": power_kw}
    return await client.post("/curtail", json=body, **kwargs)


def assert_error_shape(body: dict, error: str) -> None:
    assert set(body) >= {"error", "message", "agent_id"}
    assert body["error"] == error
    assert body["agent_id"] == BATTERY_ID


# -- read endpoints ------------------------------------------------------------------------------
async def test_root_describes_the_agent(client):
    body = (await client.get("/")).json()
    assert body["agent_id"] == BATTERY_ID
    assert body["agent_type"] == "battery"
    assert "POST /curtail" in body["endpoints"]


async def test_health_answers_ok_with_agent_id(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["agent_id"] == BATTERY_ID


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
async def test_docs_answer_200(client, path):
    assert (await client.get(path)).status_code == 200


async def test_status_before_first_step(client):
    body = (await client.get("/status")).json()
    assert body["step"] == 0
    assert body["timestamp"] is None
    assert body["net_power_kw"] == 0.0
    assert body["battery"]["soc_fraction"] == approx(0.5)


async def test_status_has_the_contract_fields(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_CHEAP_START)
    body = (await c.get("/status")).json()
    assert {"agent_id", "agent_type", "transformer_id", "step", "timestamp", "net_power_kw", "battery"} <= set(body)
    assert {"soc_fraction", "power_kw", "capacity_kwh", "max_charge_kw", "max_discharge_kw"} <= set(body["battery"])
    assert body["battery"]["capacity_kwh"] == approx(50.0)
    assert body["price_per_kwh"] == approx(0.10)
    assert body["temp_air_c"] == approx(20.0)
    assert body["solar"] is None and body["load"] is None


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
async def test_simulate_advances_step_and_timestamp_by_15_min(client):
    stamps = []
    for expected_step in (1, 2, 3):
        body = (await client.post("/simulate")).json()
        assert body["step"] == expected_step
        stamps.append(datetime.fromisoformat(body["timestamp"]))
    assert stamps[0] == datetime.fromisoformat(BATTERY_CHEAP_START)
    assert [b - a for a, b in zip(stamps, stamps[1:])] == [STEP, STEP]


@pytest.mark.parametrize(("start", "power_kw"), [(BATTERY_CHEAP_START, 25.0), (BATTERY_IDLE_START, 0.0), (BATTERY_DEAR_START, -25.0)], ids=["cheap", "middling", "dear"])
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
async def test_discharge_shifts_net_power_down_by_applied_kw(serve_app, make_app):
    # The contract's example, scaled: charging at 25 kW, told to discharge 30 kW, ends discharging at 5 kW.
    c = await stepped(serve_app, make_app, BATTERY_CHEAP_START)
    body = (await curtail(c, "discharge_battery", 30.0)).json()
    assert body["status"] == "applied"
    assert body["applied_kw"] == approx(30.0)
    assert body["agent_status"]["battery"]["power_kw"] == approx(-5.0)
    assert body["agent_status"]["net_power_kw"] == approx(-5.0)
    assert (await c.get("/status")).json() == body["agent_status"]


async def test_charge_shifts_net_power_up_by_applied_kw(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_DEAR_START)
    body = (await curtail(c, "charge_battery", 10.0)).json()
    assert body["status"] == "applied"
    assert body["agent_status"]["net_power_kw"] == approx(-15.0)


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


async def test_charge_a_full_battery_is_rejected(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_IDLE_START, initial_soc_fraction=1.0)
    body = (await curtail(c, "charge_battery", 5.0)).json()
    assert body["status"] == "rejected"
    assert "full" in body["reason"]
    assert body["agent_status"]["net_power_kw"] == 0.0


async def test_discharge_an_empty_battery_is_rejected(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_IDLE_START, initial_soc_fraction=0.0)
    body = (await curtail(c, "discharge_battery", 5.0)).json()
    assert body["status"] == "rejected"
    assert "empty" in body["reason"]


async def test_charge_beyond_the_power_limit_is_partial(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_IDLE_START)
    body = (await curtail(c, "charge_battery", 40.0)).json()
    assert body["status"] == "partial"
    assert body["applied_kw"] == approx(25.0)
    assert body["reason"]
    assert body["agent_status"]["net_power_kw"] == approx(25.0)


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


@pytest.mark.parametrize("action", ["charge_battery", "discharge_battery"])
async def test_curtail_before_any_step_is_rejected(client, action):
    body = (await curtail(client, action, 1.0)).json()
    assert body["status"] == "rejected"
    assert "step" in body["reason"]
    assert (await client.get("/status")).json()["battery"]["soc_fraction"] == approx(0.5)


@pytest.mark.parametrize(("raw", "field"), INVALID_BODIES)
async def test_curtail_rejects_bad_bodies_naming_the_field(serve_app, make_app, raw, field):
    c = await stepped(serve_app, make_app, BATTERY_CHEAP_START)
    before = (await c.get("/status")).json()
    response = await c.post("/curtail", content=raw, headers=JSON)
    assert response.status_code == 422
    body = response.json()
    assert_error_shape(body, "validation_error")
    assert field in {d["field"] for d in body["detail"]}
    assert (await c.get("/status")).json() == before


async def test_repeated_command_is_a_duplicate_applied_once(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_CHEAP_START)
    first = (await curtail(c, "discharge_battery", 10.0, command_id="d-1")).json()
    body = (await curtail(c, "discharge_battery", 10.0, command_id="d-1")).json()
    assert body["status"] == "duplicate"
    assert body["applied_kw"] == approx(10.0)
    status = (await c.get("/status")).json()
    assert status["net_power_kw"] == approx(15.0)
    assert status == first["agent_status"]


async def test_reused_command_id_with_another_body_is_409(serve_app, make_app):
    c = await stepped(serve_app, make_app, BATTERY_CHEAP_START)
    await curtail(c, "discharge_battery", 10.0, command_id="d-2")
    before = (await c.get("/status")).json()
    response = await curtail(c, "charge_battery", 10.0, command_id="d-2")
    assert response.status_code == 409
    assert_error_shape(response.json(), "conflict")
    assert (await c.get("/status")).json() == before


# -- the step log --------------------------------------------------------------------------------
async def test_step_log_has_one_row_per_step(make_app, tmp_path):
    async with running(make_app()) as c:
        for _ in range(3):
            await c.post("/simulate")
        await curtail(c, "charge_battery", 5.0)
    log = pd.read_csv(tmp_path / "logs" / f"{BATTERY_ID}_log.csv")
    assert list(log.columns) == list(STEP_LOG_COLUMNS)
    assert log["step"].tolist() == [1, 2, 3]
    assert log["battery_power_kw"].tolist() == approx([25.0, 0.0, -20.0])
    assert log["price_per_kwh"].tolist() == approx([0.10, 0.20, 0.40])
    assert log["commands"].tolist() == [0, 0, 1]
    assert log["solar_output_kw"].isna().all()


# -- auth ----------------------------------------------------------------------------------------
async def test_token_guards_simulate_and_curtail(monkeypatch, make_app, serve_app):
    monkeypatch.setenv("AGENT_TOKEN", TOKEN)
    c = await serve_app(make_app())
    for response in (await c.post("/simulate"), await curtail(c, "charge_battery", 1.0), await c.post("/simulate", headers=bearer("nope"))):
        assert response.status_code == 401
        assert_error_shape(response.json(), "unauthorized")
        assert TOKEN not in response.text
    for path in ("/", "/health", "/status", "/openapi.json"):
        assert (await c.get(path)).status_code == 200
    assert (await c.post("/simulate", headers=bearer(TOKEN))).status_code == 200
    assert (await curtail(c, "discharge_battery", 1.0, headers=bearer(TOKEN))).status_code == 200
    assert (await c.get("/status")).json()["step"] == 1


# -- durable state -------------------------------------------------------------------------------
async def test_new_app_resumes_at_the_saved_step_and_soc(make_app, serve_app):
    async with running(make_app()) as c:
        await c.post("/simulate")
        saved = (await c.post("/simulate")).json()
    assert saved["battery"]["soc_fraction"] > 0.5
    c = await serve_app(make_app(fresh=False))
    resumed = (await c.get("/status")).json()
    assert resumed["step"] == 2
    assert resumed["timestamp"] == saved["timestamp"]
    assert resumed["battery"]["soc_fraction"] == approx(saved["battery"]["soc_fraction"])
    nxt = (await c.post("/simulate")).json()
    assert nxt["step"] == 3
    assert nxt["price_per_kwh"] == approx(0.40)  # the third row: resumed, not restarted


async def test_fresh_starts_over(make_app, serve_app):
    async with running(make_app()) as c:
        await c.post("/simulate")
    c = await serve_app(make_app(fresh=True))
    body = (await c.get("/status")).json()
    assert body["step"] == 0
    assert body["battery"]["soc_fraction"] == approx(0.5)


# -- start-up errors -----------------------------------------------------------------------------
def test_malformed_data_file_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken_battery.csv"
    path.write_text("timestamp,price_per_kwh,temp_air_c\n2025-06-01T00:00:00,0.10,20\n2025-06-01T00:15:00,0.10,20\n2025-06-01T00:30:00,cheap,20\n", encoding="utf-8")
    with pytest.raises(StartupError) as caught:
        create_app(make_battery_settings(tmp_path, data_file=path), register=False)
    message = str(caught.value)
    assert "broken_battery.csv" in message
    assert "line 4" in message
    assert "column price_per_kwh" in message


def test_home_data_file_is_not_battery_data(tmp_path, home_csv):
    with pytest.raises(StartupError, match="price_per_kwh"):
        create_app(make_battery_settings(tmp_path, data_file=home_csv), register=False)


async def test_metrics_serves_prometheus_text(client):
    response = await client.get("/metrics")
    assert response.status_code == 200
