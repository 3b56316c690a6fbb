"""The home agent's HTTP app in process: every route, the curtail contract, validation, idempotency, auth, state, logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
from pytest import approx

from agents.device.agent import STEP_LOG_COLUMNS
from agents.device.registration import register_forever
from agents.grid import create_app as create_grid_app
from agents.home import create_app
from agents.common.settings import StartupError
from tests.conftest import HOME_DAY_START, HOME_ID, HOME_NIGHT_START, bearer, make_grid_settings, make_home_settings, running

TOKEN = "s3cret-home-token-for-tests"
JSON = {"content-type": "application/json"}
STEP = timedelta(minutes=15)

#: Direction in which each action moves the agent's net power.
DIRECTION = {"curtail_solar": +1, "charge_battery": +1, "shed_load": -1, "discharge_battery": -1}

#: Bodies /curtail must refuse with 422, each with the field the answer must name.
INVALID_BODIES = [
    pytest.param(b'{"command_id":"x","action":"shed_load","power_kw":NaN}', "power_kw", id="nan"),
    pytest.param(b'{"command_id":"x","action":"shed_load","power_kw":Infinity}', "power_kw", id="infinity"),
    pytest.param(b'{"command_id":"x","action":"shed_load","power_kw":-Infinity}', "power_kw", id="minus-infinity"),
    pytest.param(b'{"command_id":"x","action":"shed_load","power_kw":-1}', "power_kw", id="negative"),
    pytest.param(b'{"command_id":"x","action":"shed_load","power_kw":"lots"}', "power_kw", id="string"),
    pytest.param(b'{"command_id":"x","action":"shed_load","power_kw":null}', "power_kw", id="null"),
    pytest.param(b'{"command_id":"x","action":"shed_load"}', "power_kw", id="missing-power"),
    pytest.param(b'{"command_id":"x","action":"explode","power_kw":1}', "action", id="unknown-action"),
    pytest.param(b'{"command_id":"x","action":"shed_load","power_kw":1,"force":true}', "force", id="extra-field"),
    pytest.param(b'{"action":"shed_load","power_kw":1}', "command_id", id="missing-command-id"),
    pytest.param(b'{"command_id":"","action":"shed_load","power_kw":1}', "command_id", id="empty-command-id"),
    pytest.param(b'{"command_id":7,"action":"shed_load","power_kw":1}', "command_id", id="number-command-id"),
    pytest.param(b"[]", "body", id="array-body"),
    pytest.param(b"", "body", id="empty-body"),
]


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


async def curtail(client: httpx.AsyncClient, action: str, power_kw: float, command_id: str | None = None, **kwargs) -> httpx.Response:
    body = {"command_id": command_id or f"{action}-{power_kw}", "action": action, "power_kw": power_kw}
    return await client.post("/curtail", json=body, **kwargs)


def assert_error_shape(body: dict, error: str) -> None:
    assert set(body) >= {"error", "message", "agent_id"}
    assert body["error"] == error
    assert body["agent_id"] == HOME_ID
    assert isinstance(body["message"], str) and body["message"]


# -- read endpoints ------------------------------------------------------------------------------
async def test_root_describes_the_agent(client):
    response = await client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["agent_id"] == HOME_ID
    assert body["agent_type"] == "home"
    assert {"GET /health", "GET /status", "POST /simulate", "POST /curtail"} <= set(body["endpoints"])


async def test_health_answers_ok_with_agent_id(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["agent_id"] == HOME_ID


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
async def test_docs_answer_200(client, path):
    assert (await client.get(path)).status_code == 200


async def test_openapi_documents_the_routes(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/", "/health", "/status", "/simulate", "/curtail"} <= set(paths)


async def test_status_before_first_step_has_no_timestamp(client):
    body = (await client.get("/status")).json()
    assert body["step"] == 0
    assert body["timestamp"] is None
    assert body["agent_id"] == HOME_ID
    assert body["agent_type"] == "home"
    assert body["transformer_id"] == "T1"


async def test_status_has_the_contract_fields(day_client):
    body = (await day_client.get("/status")).json()
    assert {"agent_id", "agent_type", "transformer_id", "step", "timestamp", "net_power_kw", "solar", "load", "battery"} <= set(body)
    assert {"available_kw", "output_kw", "curtailed_kw"} <= set(body["solar"])
    assert {"demand_kw", "served_kw", "shed_kw", "flexible_kw"} <= set(body["load"])
    assert {"soc_fraction", "power_kw", "capacity_kwh", "max_charge_kw", "max_discharge_kw"} <= set(body["battery"])
    assert body["solar"]["available_kw"] == approx(4.0)
    assert body["load"]["demand_kw"] == approx(1.0)
    assert body["load"]["flexible_kw"] == approx(0.3)
    assert body["battery"]["capacity_kwh"] == approx(13.5)


async def test_status_net_power_is_load_minus_solar_plus_battery(day_client):
    body = (await day_client.get("/status")).json()
    expected = body["load"]["served_kw"] - body["solar"]["output_kw"] + body["battery"]["power_kw"]
    assert body["net_power_kw"] == approx(expected, abs=1e-9)


async def test_transformer_id_setting_is_reported(make_app, serve_app):
    c = await serve_app(make_app(transformer_id="T7", agent_id="home_42"))
    body = (await c.get("/status")).json()
    assert (body["transformer_id"], body["agent_id"]) == ("T7", "home_42")
    assert (await c.get("/health")).json()["agent_id"] == "home_42"


# -- /simulate -----------------------------------------------------------------------------------
async def test_simulate_advances_step_and_timestamp_by_15_min(client):
    stamps = []
    for expected_step in (1, 2, 3):
        response = await client.post("/simulate")
        assert response.status_code == 200
        body = response.json()
        assert body["step"] == expected_step
        stamps.append(datetime.fromisoformat(body["timestamp"]))
    assert stamps[0] == datetime.fromisoformat(HOME_NIGHT_START)
    assert [b - a for a, b in zip(stamps, stamps[1:])] == [STEP, STEP]
    assert (await client.get("/status")).json()["step"] == 3


async def test_simulate_self_consumption_policy_stores_the_surplus(day_client):
    body = (await day_client.get("/status")).json()
    assert body["battery"]["power_kw"] == approx(3.0)  # 4 kW PV - 1 kW load
    assert body["net_power_kw"] == approx(0.0, abs=1e-9)


async def test_simulate_at_night_covers_the_load_from_the_battery(client):
    body = (await client.post("/simulate")).json()
    assert body["battery"]["power_kw"] == approx(-1.0)
    assert body["net_power_kw"] == approx(0.0, abs=1e-9)


async def test_start_setting_picks_the_row(make_app, serve_app):
    c = await serve_app(make_app(start="2025-06-01T01:00"))
    body = (await c.post("/simulate")).json()
    assert body["timestamp"] == "2025-06-01T01:00:00"


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


# -- /curtail: the contract ----------------------------------------------------------------------
@pytest.mark.parametrize("action", sorted(DIRECTION))
async def test_curtail_shifts_net_power_by_applied_kw(day_client, action):
    before = (await day_client.get("/status")).json()["net_power_kw"]
    response = await curtail(day_client, action, 0.2)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "applied"
    assert body["applied_kw"] == approx(0.2)
    assert body["requested_kw"] == approx(0.2)
    assert body["reason"] is None
    after = (await day_client.get("/status")).json()
    assert after["net_power_kw"] == approx(before + DIRECTION[action] * 0.2, abs=1e-9)
    assert body["agent_status"] == after


async def test_curtail_answer_carries_the_command(day_client):
    body = (await curtail(day_client, "shed_load", 0.1, command_id="cmd-42")).json()
    assert body["command_id"] == "cmd-42"
    assert body["action"] == "shed_load"
    assert set(body) >= {"command_id", "status", "applied_kw", "agent_status"}


async def test_curtail_solar_moves_output_to_curtailed(day_client):
    body = (await curtail(day_client, "curtail_solar", 1.5)).json()
    assert body["agent_status"]["solar"]["output_kw"] == approx(2.5)
    assert body["agent_status"]["solar"]["curtailed_kw"] == approx(1.5)


async def test_shed_load_moves_served_to_shed(day_client):
    body = (await curtail(day_client, "shed_load", 0.25)).json()
    assert body["agent_status"]["load"]["served_kw"] == approx(0.75)
    assert body["agent_status"]["load"]["shed_kw"] == approx(0.25)


async def test_discharge_beyond_the_charging_setpoint_reverses_the_battery(day_client):
    # The contract's example: a battery charging at 3 kW told to discharge 4 kW ends discharging at 1 kW.
    body = (await curtail(day_client, "discharge_battery", 4.0)).json()
    assert body["status"] == "applied"
    assert body["agent_status"]["battery"]["power_kw"] == approx(-1.0)
    assert body["agent_status"]["net_power_kw"] == approx(-4.0)


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


async def test_commands_accumulate_within_a_step(day_client):
    await curtail(day_client, "curtail_solar", 1.0, command_id="a")
    await curtail(day_client, "curtail_solar", 1.0, command_id="b")
    body = (await day_client.get("/status")).json()
    assert body["solar"]["curtailed_kw"] == approx(2.0)
    assert body["net_power_kw"] == approx(2.0)


async def test_next_step_forgets_the_commands(day_client):
    await curtail(day_client, "curtail_solar", 1.0)
    body = (await day_client.post("/simulate")).json()
    assert body["solar"]["curtailed_kw"] == 0.0
    assert body["net_power_kw"] == approx(0.0, abs=1e-9)


async def test_zero_kw_command_is_applied_and_changes_nothing(day_client):
    before = (await day_client.get("/status")).json()
    body = (await curtail(day_client, "shed_load", 0.0)).json()
    assert body["status"] == "applied"
    assert body["applied_kw"] == 0.0
    assert body["agent_status"]["net_power_kw"] == approx(before["net_power_kw"])


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


async def test_charge_a_full_battery_is_rejected(make_app, serve_app):
    c = await serve_app(make_app(start=HOME_DAY_START, initial_soc_fraction=1.0))
    before = (await c.post("/simulate")).json()
    assert before["battery"]["power_kw"] == approx(0.0)  # nowhere to store the surplus
    body = (await curtail(c, "charge_battery", 1.0)).json()
    assert body["status"] == "rejected"
    assert body["applied_kw"] == 0.0
    assert "full" in body["reason"]
    assert body["agent_status"]["net_power_kw"] == approx(before["net_power_kw"])


async def test_charge_beyond_the_power_limit_is_partial(day_client):
    body = (await curtail(day_client, "charge_battery", 5.0)).json()  # charging 3 of 5 kW already
    assert body["status"] == "partial"
    assert body["applied_kw"] == approx(2.0)
    assert body["agent_status"]["battery"]["power_kw"] == approx(5.0)


async def test_discharge_an_empty_battery_is_rejected(make_app, serve_app):
    c = await serve_app(make_app(initial_soc_fraction=0.0))
    await c.post("/simulate")
    body = (await curtail(c, "discharge_battery", 1.0)).json()
    assert body["status"] == "rejected"
    assert "empty" in body["reason"]


async def test_home_without_battery_rejects_battery_commands(make_app, serve_app):
    c = await serve_app(make_app(start=HOME_DAY_START, battery_kwh=0.0))
    status = (await c.post("/simulate")).json()
    assert status["battery"] is None
    assert status["net_power_kw"] == approx(-3.0)
    body = (await curtail(c, "charge_battery", 1.0)).json()
    assert body["status"] == "rejected"
    assert "battery" in body["reason"]


@pytest.mark.parametrize("action", sorted(DIRECTION))
async def test_curtail_before_any_step_is_rejected(client, action):
    response = await curtail(client, action, 0.5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "rejected"
    assert body["applied_kw"] == 0.0
    assert "step" in body["reason"]
    assert body["agent_status"]["step"] == 0


# -- /curtail: validation ------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "field"), INVALID_BODIES)
async def test_curtail_rejects_bad_bodies_naming_the_field(day_client, raw, field):
    before = (await day_client.get("/status")).json()
    response = await day_client.post("/curtail", content=raw, headers=JSON)
    assert response.status_code == 422
    body = response.json()
    assert_error_shape(body, "validation_error")
    assert field in {d["field"] for d in body["detail"]}
    assert field in body["message"]
    assert (await day_client.get("/status")).json() == before


async def test_curtail_rejects_a_non_json_content_type(day_client):
    before = (await day_client.get("/status")).json()
    response = await day_client.post("/curtail", content=b"command_id=x&action=shed_load&power_kw=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 422
    assert (await day_client.get("/status")).json() == before


async def test_refused_command_id_is_not_remembered(day_client):
    await day_client.post("/curtail", content=b'{"command_id":"c1","action":"shed_load","power_kw":NaN}', headers=JSON)
    body = (await curtail(day_client, "shed_load", 0.1, command_id="c1")).json()
    assert body["status"] == "applied"


@pytest.mark.parametrize("raw", [b'{"command_id":"x","action":"shed_load","power_kw":"0.1"}', b'{"command_id":"x","action":"shed_load","power_kw":true}'], ids=["numeric-string", "boolean"])
async def test_curtail_rejects_power_kw_that_is_not_a_json_number(day_client, raw):
    response = await day_client.post("/curtail", content=raw, headers=JSON)
    assert response.status_code == 422


async def test_curtail_malformed_json_names_the_body(day_client):
    response = await day_client.post("/curtail", content=b'{"command_id": "x", ', headers=JSON)
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["detail"]] == ["body"]


# -- /curtail: idempotency -----------------------------------------------------------------------
async def test_repeated_command_is_a_duplicate_applied_once(day_client):
    first = (await curtail(day_client, "curtail_solar", 1.0, command_id="dup-1")).json()
    assert first["status"] == "applied"
    again = await curtail(day_client, "curtail_solar", 1.0, command_id="dup-1")
    assert again.status_code == 200
    body = again.json()
    assert body["status"] == "duplicate"
    assert body["applied_kw"] == approx(first["applied_kw"])
    assert body["command_id"] == "dup-1"
    status = (await day_client.get("/status")).json()
    assert status["net_power_kw"] == approx(first["agent_status"]["net_power_kw"])
    assert status["solar"]["curtailed_kw"] == approx(1.0)


async def test_reused_command_id_with_another_body_is_409(day_client):
    await curtail(day_client, "curtail_solar", 1.0, command_id="dup-2")
    before = (await day_client.get("/status")).json()
    response = await curtail(day_client, "curtail_solar", 2.0, command_id="dup-2")
    assert response.status_code == 409
    body = response.json()
    assert_error_shape(body, "conflict")
    assert "dup-2" in body["message"]
    other_action = await curtail(day_client, "shed_load", 1.0, command_id="dup-2")
    assert other_action.status_code == 409
    assert (await day_client.get("/status")).json() == before


async def test_duplicate_of_a_rejected_command_stays_rejected_in_a_later_step(client):
    first = (await curtail(client, "shed_load", 0.1, command_id="early")).json()
    assert first["status"] == "rejected"
    await client.post("/simulate")
    before = (await client.get("/status")).json()
    body = (await curtail(client, "shed_load", 0.1, command_id="early")).json()
    assert body["status"] == "duplicate"
    assert body["applied_kw"] == 0.0
    assert (await client.get("/status")).json() == before


async def test_command_ids_survive_a_restart(make_app, serve_app, tmp_path):
    async with running(make_app(start=HOME_DAY_START)) as c:
        await c.post("/simulate")
        assert (await curtail(c, "shed_load", 0.1, command_id="persist")).json()["status"] == "applied"
    c2 = await serve_app(make_app(start=HOME_DAY_START, fresh=False))
    assert (await curtail(c2, "shed_load", 0.1, command_id="persist")).json()["status"] == "duplicate"
    assert (await curtail(c2, "shed_load", 0.2, command_id="persist")).status_code == 409


# -- the step log --------------------------------------------------------------------------------
async def test_step_log_has_one_row_per_step(make_app, tmp_path):
    async with running(make_app(start=HOME_DAY_START)) as c:
        await c.post("/simulate")
        await curtail(c, "curtail_solar", 1.0, command_id="one")
        await curtail(c, "shed_load", 0.1, command_id="two")
        await c.post("/simulate")
        await c.post("/simulate")
        last = (await c.get("/status")).json()
    log = pd.read_csv(tmp_path / "logs" / f"{HOME_ID}_log.csv")
    assert list(log.columns) == list(STEP_LOG_COLUMNS)
    assert log["step"].tolist() == [1, 2, 3]
    assert log["commands"].tolist() == [2, 0, 0]
    assert log["solar_curtailed_kw"].iloc[0] == approx(1.0)
    assert log["load_shed_kw"].iloc[0] == approx(0.1)
    assert log["net_power_kw"].iloc[0] == approx(0.9)
    assert pd.to_datetime(log["timestamp"]).diff().dropna().tolist() == [STEP, STEP]
    assert log["battery_soc_fraction"].iloc[-1] == approx(last["battery"]["soc_fraction"], abs=1e-6)


async def test_step_log_of_an_agent_that_never_stepped_is_just_a_header(make_app, tmp_path):
    async with running(make_app()):
        pass
    log = pd.read_csv(tmp_path / "logs" / f"{HOME_ID}_log.csv")
    assert len(log) == 0
    assert list(log.columns) == list(STEP_LOG_COLUMNS)


async def test_step_log_has_one_row_per_step_across_a_restart(make_app, tmp_path):
    await _run_steps(make_app(start=HOME_DAY_START), 2)
    await _run_steps(make_app(start=HOME_DAY_START, fresh=False), 1)
    log = pd.read_csv(tmp_path / "logs" / f"{HOME_ID}_log.csv")
    assert log["step"].tolist() == [1, 2, 3]


# -- auth ----------------------------------------------------------------------------------------
@pytest.fixture
async def token_client(monkeypatch, make_app, serve_app) -> httpx.AsyncClient:
    monkeypatch.setenv("AGENT_TOKEN", TOKEN)
    return await serve_app(make_app(start=HOME_DAY_START))


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}], ids=["none", "wrong", "no-scheme", "basic"])
async def test_token_is_required_to_simulate_and_curtail(token_client, headers):
    for response in (
        await token_client.post("/simulate", headers=headers),
        await curtail(token_client, "shed_load", 0.1, headers=headers),
    ):
        assert response.status_code == 401
        assert_error_shape(response.json(), "unauthorized")
        assert TOKEN not in response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert (await token_client.get("/status")).json()["step"] == 0


async def test_token_lets_simulate_and_curtail_through(token_client):
    assert (await token_client.post("/simulate", headers=bearer(TOKEN))).status_code == 200
    response = await curtail(token_client, "shed_load", 0.1, headers=bearer(TOKEN))
    assert response.status_code == 200
    assert response.json()["status"] == "applied"


@pytest.mark.parametrize("path", ["/", "/health", "/status", "/docs", "/openapi.json"])
async def test_reads_stay_open_with_a_token(token_client, path):
    assert (await token_client.get(path)).status_code == 200


async def test_bearer_scheme_is_case_insensitive(token_client):
    response = await token_client.post("/simulate", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200


async def test_unauthorised_bad_body_gets_401_not_422(token_client):
    response = await token_client.post("/curtail", content=b'{"command_id":"x","action":"shed_load","power_kw":NaN}', headers=JSON)
    assert response.status_code == 401


# -- registration with the grid agent ------------------------------------------------------------
async def _registration_task(home_app, grid_app, settings):
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid")
    task = asyncio.create_task(register_forever(home_app.state.agent, client, settings))
    return client, task


async def _stop(client, task):
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.aclose()


async def test_register_forever_registers_with_the_grid_agent(tmp_path, home_csv, serve_app):
    settings = make_home_settings(tmp_path, data_file=home_csv, public_url="http://home.example:8101/", heartbeat_s=0.05)
    home_app = create_app(settings, register=False)
    await serve_app(home_app)
    grid_app = create_grid_app(make_grid_settings(tmp_path))
    grid = await serve_app(grid_app)
    client, task = await _registration_task(home_app, grid_app, settings)
    try:
        for _ in range(100):
            agents = (await grid.get("/agents")).json()
            if agents:
                break
            await asyncio.sleep(0.01)
    finally:
        await _stop(client, task)
    assert [(a["agent_id"], a["url"], a["healthy"]) for a in agents] == [(HOME_ID, "http://home.example:8101", True)]


async def test_register_forever_says_why_the_grid_agent_refuses_it(tmp_path, home_csv, serve_app, monkeypatch, caplog):
    monkeypatch.setenv("AGENT_TOKEN", "the-grid-agents-token")
    grid_app = create_grid_app(make_grid_settings(tmp_path))
    await serve_app(grid_app)
    monkeypatch.setenv("AGENT_TOKEN", "a-mistyped-token")  # the home agent was started with another token
    settings = make_home_settings(tmp_path, data_file=home_csv, heartbeat_s=0.05)
    home_app = create_app(settings, register=False)
    await serve_app(home_app)
    caplog.set_level(logging.INFO, logger="agents")
    client, task = await _registration_task(home_app, grid_app, settings)
    await asyncio.sleep(0.5)
    await _stop(client, task)
    assert any("401" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)


# -- durable state -------------------------------------------------------------------------------
async def test_new_app_resumes_at_the_saved_step_and_soc(make_app, serve_app):
    saved = await _run_steps(make_app(start=HOME_DAY_START), 3)
    assert saved["battery"]["soc_fraction"] > 0.5  # the surplus charged it
    c = await serve_app(make_app(start=HOME_DAY_START, fresh=False))
    resumed = (await c.get("/status")).json()
    assert resumed["step"] == 3
    assert resumed["timestamp"] == saved["timestamp"]
    assert resumed["battery"]["soc_fraction"] == approx(saved["battery"]["soc_fraction"])
    nxt = (await c.post("/simulate")).json()
    assert nxt["step"] == 4
    assert datetime.fromisoformat(nxt["timestamp"]) - datetime.fromisoformat(saved["timestamp"]) == STEP
    assert nxt["battery"]["soc_fraction"] > saved["battery"]["soc_fraction"]


async def test_resume_keeps_a_soc_changed_by_a_command(make_app, serve_app):
    async with running(make_app()) as c:
        await c.post("/simulate")
        saved = (await curtail(c, "discharge_battery", 4.0)).json()["agent_status"]  # -1 -> -5 kW
    c2 = await serve_app(make_app(fresh=False))
    resumed = (await c2.get("/status")).json()
    assert resumed["battery"]["soc_fraction"] == approx(saved["battery"]["soc_fraction"])
    assert resumed["battery"]["soc_fraction"] < 0.5 - 0.05


async def test_fresh_starts_over(make_app, serve_app):
    await _run_steps(make_app(start=HOME_DAY_START), 3)
    c = await serve_app(make_app(start=HOME_DAY_START, fresh=True))
    body = (await c.get("/status")).json()
    assert body["step"] == 0
    assert body["battery"]["soc_fraction"] == approx(0.5)
    assert (await c.post("/simulate")).json()["timestamp"] == "2025-06-01T00:30:00"


async def test_resumed_status_reports_the_saved_operating_point(make_app, serve_app):
    saved = await _run_steps(make_app(start=HOME_DAY_START), 2)
    c = await serve_app(make_app(start=HOME_DAY_START, fresh=False))
    resumed = (await c.get("/status")).json()
    assert resumed["load"]["demand_kw"] == approx(saved["load"]["demand_kw"])
    assert resumed["battery"]["power_kw"] == approx(saved["battery"]["power_kw"])


# -- start-up errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "column", "bad_row"),
    [
        (3, "solar_kw", "2025-06-01T00:15:00,abc,1.0,15.0"),
        (3, "load_kw", "2025-06-01T00:15:00,0.0,-1.0,15.0"),
        (3, "temp_air_c", "2025-06-01T00:15:00,0.0,1.0,nan"),
        (3, "timestamp", "yesterday,0.0,1.0,15.0"),
    ],
    ids=["not-a-number", "negative-load", "nan", "bad-timestamp"],
)
def test_malformed_data_file_names_file_line_and_column(tmp_path, line, column, bad_row):
    rows = ["timestamp,solar_kw,load_kw,temp_air_c", "2025-06-01T00:00:00,0.0,1.0,15.0", bad_row, "2025-06-01T00:30:00,0.0,1.0,15.0", "2025-06-01T00:45:00,0.0,1.0,15.0"]
    path = tmp_path / "broken_home.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(StartupError) as caught:
        create_app(make_home_settings(tmp_path, data_file=path), register=False)
    message = str(caught.value)
    assert "broken_home.csv" in message
    assert f"line {line}" in message
    assert f"column {column}" in message


def test_uneven_timestamps_name_the_first_uneven_line(tmp_path):
    rows = ["timestamp,solar_kw,load_kw,temp_air_c", "2025-06-01T00:00:00,0,1,15", "2025-06-01T00:15:00,0,1,15", "2025-06-01T00:20:00,0,1,15", "2025-06-01T00:45:00,0,1,15"]
    path = tmp_path / "uneven.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(StartupError, match=r"uneven\.csv, line 4, column timestamp"):
        create_app(make_home_settings(tmp_path, data_file=path), register=False)


def test_data_file_missing_a_column_is_named(tmp_path):
    path = tmp_path / "no_load.csv"
    path.write_text("timestamp,solar_kw,temp_air_c\n2025-06-01T00:00:00,0,1\n2025-06-01T00:15:00,0,1\n", encoding="utf-8")
    with pytest.raises(StartupError, match="load_kw"):
        create_app(make_home_settings(tmp_path, data_file=path), register=False)


def test_missing_data_file_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match="nowhere.csv"):
        create_app(make_home_settings(tmp_path, data_file=tmp_path / "nowhere.csv"), register=False)


@pytest.mark.parametrize("start", ["2030-01-01T00:00", "not a time"])
def test_start_outside_the_data_is_a_startup_error(tmp_path, home_csv, start):
    with pytest.raises(StartupError):
        create_app(make_home_settings(tmp_path, data_file=home_csv, start=start), register=False)


def test_unparsable_start_names_the_setting(tmp_path, home_csv):
    with pytest.raises(StartupError, match="start"):
        create_app(make_home_settings(tmp_path, data_file=home_csv, start="not a time"), register=False)


def test_unusable_log_dir_is_a_startup_error(tmp_path, home_csv):
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("x", encoding="utf-8")
    with pytest.raises(StartupError):
        create_app(make_home_settings(tmp_path, data_file=home_csv, log_dir=not_a_dir), register=False)


async def test_metrics_serves_prometheus_text(client):
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


# -- helpers -------------------------------------------------------------------------------------
async def _run_steps(app, steps: int) -> dict:
    """Run an app's lifespan, simulate ``steps`` steps, close it; return the last status."""
    async with running(app) as c:
        for _ in range(steps):
            status = (await c.post("/simulate")).json()
    return status
