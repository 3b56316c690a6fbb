"""The device contract, once for every kind of device agent: routes, curtail, validation, idempotency, log, state.

Each test runs for a home and for a storage system. What differs between the kinds (their ids, their
data, the actions they take, the figures they report) lives in ``DeviceKind`` or in a test's parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi import FastAPI
from pytest import approx

from agents.common.settings import StartupError
from agents.device.agent import STEP_LOG_COLUMNS
from agents.device.registration import register_forever
from agents.grid import create_app as create_grid_app
from tests.conftest import (
    BATTERY_CHEAP_START,
    BATTERY_DEAR_START,
    BATTERY_IDLE_START,
    BATTERY_KIND,
    DEVICE_KINDS,
    HOME_DAY_START,
    HOME_KIND,
    HOME_NIGHT_START,
    DeviceKind,
    HostRouter,
    bearer,
    make_grid_settings,
    running,
)

TOKEN = "s3cret-device-token-for-tests"
JSON = {"content-type": "application/json"}
STEP = timedelta(minutes=15)

#: Direction in which each action moves the agent's net power.
DIRECTION = {"curtail_solar": +1, "charge_battery": +1, "shed_load": -1, "discharge_battery": -1}

#: The fields of a status that the contract names, and each module's figures.
STATUS_FIELDS = {
    "agent_id",
    "agent_type",
    "transformer_id",
    "step",
    "timestamp",
    "net_power_kw",
    "solar",
    "load",
    "battery",
}
MODULE_FIELDS = {
    "solar": {"available_kw", "output_kw", "curtailed_kw"},
    "load": {"demand_kw", "served_kw", "shed_kw", "flexible_kw"},
    "battery": {"soc_fraction", "power_kw", "capacity_kwh", "max_charge_kw", "max_discharge_kw"},
}


@pytest.fixture(params=[pytest.param(k, id=k.name) for k in DEVICE_KINDS])
def kind(request: pytest.FixtureRequest) -> DeviceKind:
    """Each kind of device agent; a test that needs kind-specific facts parametrises ``kind`` itself."""
    return request.param


@pytest.fixture
def make_settings(tmp_path: Path, kind: DeviceKind) -> Callable[..., Any]:
    """Settings of the kind on its small data file, logs and state under tmp_path; overrides win."""
    data_file = tmp_path / f"{kind.name}_data.csv"
    data_file.write_text(kind.csv, encoding="utf-8")

    def build(**overrides: Any) -> Any:
        return kind.make_settings(tmp_path, data_file=data_file, **overrides)

    return build


@pytest.fixture
def make_app(make_settings, kind: DeviceKind) -> Callable[..., FastAPI]:
    """Build an app of the kind from ``make_settings(**overrides)``, not registering with a grid agent."""

    def build(**overrides: Any) -> FastAPI:
        return kind.create_app(make_settings(**overrides), register=False)

    return build


@pytest.fixture
async def client(make_app, serve_app) -> httpx.AsyncClient:
    """A client to an agent at its first row, before any step."""
    return await serve_app(make_app())


@pytest.fixture
async def stepped(make_app, serve_app, kind: DeviceKind) -> httpx.AsyncClient:
    """A client to an agent stepped once into its active row, where its battery charges."""
    c = await serve_app(make_app(start=kind.active_start))
    assert (await c.post("/simulate")).status_code == 200
    return c


async def curtail(
    client: httpx.AsyncClient, action: str, power_kw: float, command_id: str | None = None, **kwargs
) -> httpx.Response:
    body = {"command_id": command_id or f"{action}-{power_kw}", "action": action, "power_kw": power_kw}
    return await client.post("/curtail", json=body, **kwargs)


async def run_steps(app: FastAPI, steps: int) -> dict:
    """Run an app's lifespan, simulate ``steps`` steps, close it; return the last status."""
    async with running(app) as c:
        for _ in range(steps):
            status = (await c.post("/simulate")).json()
    return status


def assert_error_shape(body: dict, error: str, agent_id: str) -> None:
    assert set(body) >= {"error", "message", "agent_id"}
    assert body["error"] == error
    assert body["agent_id"] == agent_id
    assert isinstance(body["message"], str) and body["message"]


def figure(body: dict, path: str) -> Any:
    """A status's ``"module.figure"`` or top-level ``"figure"``."""
    for key in path.split("."):
        body = body[key]
    return body


def assert_figures(body: dict, expected: dict[str, float | None], abs_kw: float | None = None) -> None:
    """Each ``"module.figure"`` (or top-level ``"figure"``) of a status is approximately as expected."""
    for path, value in expected.items():
        assert figure(body, path) == approx(value, abs=abs_kw), path


# -- read endpoints ------------------------------------------------------------------------------
async def test_root_describes_the_agent(client, kind):
    response = await client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["agent_id"] == kind.agent_id
    assert body["agent_type"] == kind.name
    assert {"GET /health", "GET /status", "POST /simulate", "POST /curtail"} <= set(body["endpoints"])


async def test_health_answers_ok_with_agent_id(client, kind):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["agent_id"] == kind.agent_id


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
async def test_docs_answer_200(client, path):
    assert (await client.get(path)).status_code == 200


async def test_openapi_documents_the_routes(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/", "/health", "/status", "/simulate", "/curtail"} <= set(paths)


async def test_transformer_id_setting_is_reported(make_app, serve_app, kind):
    agent_id = f"{kind.name}_42"
    c = await serve_app(make_app(transformer_id="T7", agent_id=agent_id))
    body = (await c.get("/status")).json()
    assert (body["transformer_id"], body["agent_id"]) == ("T7", agent_id)
    assert (await c.get("/health")).json()["agent_id"] == agent_id


async def test_metrics_serves_prometheus_text(client):
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


async def test_status_before_first_step_has_no_timestamp(client, kind):
    body = (await client.get("/status")).json()
    assert body["step"] == 0
    assert body["timestamp"] is None
    assert body["agent_id"] == kind.agent_id
    assert body["agent_type"] == kind.name
    assert body["transformer_id"] == "T1"
    assert body["net_power_kw"] == 0.0
    assert body["battery"]["soc_fraction"] == approx(0.5)


@pytest.mark.parametrize(
    ("kind", "figures"),
    [
        pytest.param(
            HOME_KIND,
            {"solar.available_kw": 4.0, "load.demand_kw": 1.0, "load.flexible_kw": 0.3, "battery.capacity_kwh": 13.5},
            id="home",
        ),
        pytest.param(
            BATTERY_KIND, {"battery.capacity_kwh": 50.0, "price_per_kwh": 0.10, "temp_air_c": 20.0}, id="battery"
        ),
    ],
)
async def test_status_has_the_contract_fields(stepped, kind, figures):
    body = (await stepped.get("/status")).json()
    assert set(body) >= STATUS_FIELDS
    for module, fields in MODULE_FIELDS.items():
        if module in kind.modules:
            assert fields <= set(body[module]), module
        else:
            assert body[module] is None, module
    assert_figures(body, figures)


# -- /simulate -----------------------------------------------------------------------------------
async def test_simulate_advances_step_and_timestamp_by_15_min(client, kind):
    stamps = []
    for expected_step in (1, 2, 3):
        response = await client.post("/simulate")
        assert response.status_code == 200
        body = response.json()
        assert body["step"] == expected_step
        stamps.append(datetime.fromisoformat(body["timestamp"]))
    assert stamps[0] == datetime.fromisoformat(kind.first_start)
    assert [b - a for a, b in pairwise(stamps)] == [STEP, STEP]
    assert (await client.get("/status")).json()["step"] == 3


async def test_start_setting_picks_the_row(make_app, serve_app):
    c = await serve_app(make_app(start="2025-06-01T01:00"))
    body = (await c.post("/simulate")).json()
    assert body["timestamp"] == "2025-06-01T01:00:00"


# -- /curtail: the contract ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "start", "action", "power_kw", "figures"),
    [
        *[
            pytest.param(HOME_KIND, HOME_DAY_START, action, 0.2, {}, id=f"home-{action}")
            for action in HOME_KIND.actions
        ],
        pytest.param(
            BATTERY_KIND,
            BATTERY_DEAR_START,
            "charge_battery",
            10.0,
            {"battery.power_kw": -15.0, "net_power_kw": -15.0},
            id="battery-charge_battery",
        ),
        pytest.param(
            BATTERY_KIND,
            BATTERY_IDLE_START,
            "discharge_battery",
            10.0,
            {"battery.power_kw": -10.0, "net_power_kw": -10.0},
            id="battery-discharge_battery",
        ),
    ],
)
async def test_curtail_shifts_net_power_by_applied_kw(make_app, serve_app, start, action, power_kw, figures):
    c = await serve_app(make_app(start=start))
    before = (await c.post("/simulate")).json()["net_power_kw"]
    response = await curtail(c, action, power_kw)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "applied"
    assert body["applied_kw"] == approx(power_kw)
    assert body["requested_kw"] == approx(power_kw)
    assert body["reason"] is None
    after = (await c.get("/status")).json()
    assert after["net_power_kw"] == approx(before + DIRECTION[action] * power_kw, abs=1e-9)
    assert body["agent_status"] == after
    assert_figures(after, figures)


@pytest.mark.parametrize(
    ("kind", "power_kw", "figures"),
    [
        pytest.param(HOME_KIND, 4.0, {"battery.power_kw": -1.0, "net_power_kw": -4.0}, id="home"),  # from +3 kW
        pytest.param(BATTERY_KIND, 30.0, {"battery.power_kw": -5.0, "net_power_kw": -5.0}, id="battery"),  # from +25 kW
    ],
)
async def test_discharge_beyond_the_charging_setpoint_reverses_the_battery(stepped, power_kw, figures):
    # The contract's example: a battery charging at 2 kW told to discharge 3 kW ends discharging at 1 kW.
    body = (await curtail(stepped, "discharge_battery", power_kw)).json()
    assert body["status"] == "applied"
    assert body["applied_kw"] == approx(power_kw)
    assert_figures(body["agent_status"], figures)
    assert (await stepped.get("/status")).json() == body["agent_status"]


async def test_curtail_answer_carries_the_command(stepped, kind):
    action, power_kw = kind.command
    body = (await curtail(stepped, action, power_kw, command_id="cmd-42")).json()
    assert body["command_id"] == "cmd-42"
    assert body["action"] == action
    assert set(body) >= {"command_id", "status", "applied_kw", "agent_status"}


@pytest.mark.parametrize(
    ("kind", "action", "power_kw", "figures"),
    [
        pytest.param(HOME_KIND, "curtail_solar", 1.0, {"solar.curtailed_kw": 2.0, "net_power_kw": 2.0}, id="home"),
        # charging at 25 kW, less 2 x 10 kW
        pytest.param(
            BATTERY_KIND, "discharge_battery", 10.0, {"battery.power_kw": 5.0, "net_power_kw": 5.0}, id="battery"
        ),
    ],
)
async def test_commands_accumulate_within_a_step(stepped, action, power_kw, figures):
    await curtail(stepped, action, power_kw, command_id="a")
    await curtail(stepped, action, power_kw, command_id="b")
    assert_figures((await stepped.get("/status")).json(), figures)


@pytest.mark.parametrize(
    ("kind", "action", "power_kw", "moved"),
    [
        pytest.param(
            HOME_KIND, "curtail_solar", 1.0, "solar.curtailed_kw", id="home"
        ),  # next row sunny: none curtailed
        pytest.param(
            BATTERY_KIND, "discharge_battery", 10.0, "battery.power_kw", id="battery"
        ),  # next row's price: idle
    ],
)
async def test_next_step_forgets_the_commands(stepped, action, power_kw, moved):
    await curtail(stepped, action, power_kw)
    body = (await stepped.post("/simulate")).json()
    assert figure(body, moved) == 0.0
    assert body["net_power_kw"] == approx(0.0, abs=1e-9)


async def test_zero_kw_command_is_applied_and_changes_nothing(stepped, kind):
    before = (await stepped.get("/status")).json()
    body = (await curtail(stepped, kind.command[0], 0.0)).json()
    assert body["status"] == "applied"
    assert body["applied_kw"] == 0.0
    assert body["agent_status"]["net_power_kw"] == approx(before["net_power_kw"])


# -- /curtail: the battery's limits --------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "start", "request_kw", "net_power_kw"),
    [
        pytest.param(HOME_KIND, HOME_DAY_START, 1.0, -3.0, id="home"),  # sunny: it exports the 3 kW it cannot store
        pytest.param(BATTERY_KIND, BATTERY_IDLE_START, 5.0, 0.0, id="battery"),
    ],
)
async def test_charge_a_full_battery_is_rejected(make_app, serve_app, start, request_kw, net_power_kw):
    c = await serve_app(make_app(start=start, initial_soc_fraction=1.0))
    before = (await c.post("/simulate")).json()
    assert before["battery"]["power_kw"] == approx(0.0)  # nowhere to store anything
    body = (await curtail(c, "charge_battery", request_kw)).json()
    assert body["status"] == "rejected"
    assert body["applied_kw"] == 0.0
    assert "full" in body["reason"]
    assert body["agent_status"]["net_power_kw"] == approx(before["net_power_kw"])
    assert body["agent_status"]["net_power_kw"] == net_power_kw


@pytest.mark.parametrize(
    ("kind", "start", "request_kw"),
    [
        pytest.param(HOME_KIND, HOME_NIGHT_START, 1.0, id="home"),
        pytest.param(BATTERY_KIND, BATTERY_IDLE_START, 5.0, id="battery"),
    ],
)
async def test_discharge_an_empty_battery_is_rejected(make_app, serve_app, start, request_kw):
    c = await serve_app(make_app(start=start, initial_soc_fraction=0.0))
    await c.post("/simulate")
    body = (await curtail(c, "discharge_battery", request_kw)).json()
    assert body["status"] == "rejected"
    assert "empty" in body["reason"]


@pytest.mark.parametrize(
    ("kind", "start", "request_kw", "applied_kw", "figures"),
    [
        # charging 3 of 5 kW already: net 1 kW load - 4 kW PV + 5 kW battery
        pytest.param(HOME_KIND, HOME_DAY_START, 5.0, 2.0, {"battery.power_kw": 5.0, "net_power_kw": 2.0}, id="home"),
        pytest.param(
            BATTERY_KIND, BATTERY_IDLE_START, 40.0, 25.0, {"battery.power_kw": 25.0, "net_power_kw": 25.0}, id="battery"
        ),
    ],
)
async def test_charge_beyond_the_power_limit_is_partial(make_app, serve_app, start, request_kw, applied_kw, figures):
    c = await serve_app(make_app(start=start))
    assert (await c.post("/simulate")).status_code == 200
    body = (await curtail(c, "charge_battery", request_kw)).json()
    assert body["status"] == "partial"
    assert body["applied_kw"] == approx(applied_kw)
    assert body["reason"]
    assert_figures(body["agent_status"], figures)


@pytest.mark.parametrize(
    ("kind", "action"), [pytest.param(k, a, id=f"{k.name}-{a}") for k in DEVICE_KINDS for a in k.actions]
)
async def test_curtail_before_any_step_is_rejected(client, action):
    response = await curtail(client, action, 0.5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "rejected"
    assert body["applied_kw"] == 0.0
    assert "step" in body["reason"]
    assert body["agent_status"]["step"] == 0
    assert (await client.get("/status")).json()["battery"]["soc_fraction"] == approx(0.5)


# -- /curtail: validation ------------------------------------------------------------------------
#: Bodies /curtail must refuse with 422, each with the field the answer must name; ACTION is the kind's own action.
BAD_BODIES = [
    ('{"command_id":"x","action":"ACTION","power_kw":NaN}', "power_kw", "nan"),
    ('{"command_id":"x","action":"ACTION","power_kw":Infinity}', "power_kw", "infinity"),
    ('{"command_id":"x","action":"ACTION","power_kw":-Infinity}', "power_kw", "minus-infinity"),
    ('{"command_id":"x","action":"ACTION","power_kw":-1}', "power_kw", "negative"),
    ('{"command_id":"x","action":"ACTION","power_kw":"lots"}', "power_kw", "string"),
    ('{"command_id":"x","action":"ACTION","power_kw":null}', "power_kw", "null"),
    ('{"command_id":"x","action":"ACTION"}', "power_kw", "missing-power"),
    ('{"command_id":"x","action":"explode","power_kw":1}', "action", "unknown-action"),
    ('{"command_id":"x","action":"self_destruct","power_kw":1}', "action", "another-unknown-action"),
    ('{"command_id":"x","action":"ACTION","power_kw":1,"force":true}', "force", "extra-field"),
    ('{"command_id":"x","action":"ACTION","power_kw":1,"priority":9}', "priority", "another-extra-field"),
    ('{"action":"ACTION","power_kw":1}', "command_id", "missing-command-id"),
    ('{"command_id":"","action":"ACTION","power_kw":1}', "command_id", "empty-command-id"),
    ('{"command_id":7,"action":"ACTION","power_kw":1}', "command_id", "number-command-id"),
    ("[]", "body", "array-body"),
    ("", "body", "empty-body"),
]


@pytest.mark.parametrize(
    ("kind", "raw", "field"),
    [
        pytest.param(k, raw.replace("ACTION", k.command[0]).encode(), field, id=f"{k.name}-{name}")
        for k in DEVICE_KINDS
        for raw, field, name in BAD_BODIES
    ],
)
async def test_curtail_rejects_bad_bodies_naming_the_field(stepped, kind, raw, field):
    before = (await stepped.get("/status")).json()
    response = await stepped.post("/curtail", content=raw, headers=JSON)
    assert response.status_code == 422
    body = response.json()
    assert_error_shape(body, "validation_error", kind.agent_id)
    assert field in {d["field"] for d in body["detail"]}
    assert field in body["message"]
    assert (await stepped.get("/status")).json() == before


async def test_curtail_rejects_a_non_json_content_type(stepped, kind):
    before = (await stepped.get("/status")).json()
    form = f"command_id=x&action={kind.command[0]}&power_kw=1".encode()
    response = await stepped.post(
        "/curtail", content=form, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 422
    assert (await stepped.get("/status")).json() == before


async def test_refused_command_id_is_not_remembered(stepped, kind):
    action, power_kw = kind.command
    await stepped.post(
        "/curtail", content=f'{{"command_id":"c1","action":"{action}","power_kw":NaN}}'.encode(), headers=JSON
    )
    body = (await curtail(stepped, action, power_kw, command_id="c1")).json()
    assert body["status"] == "applied"


@pytest.mark.parametrize("power_kw", ['"0.1"', "true"], ids=["numeric-string", "boolean"])
async def test_curtail_rejects_power_kw_that_is_not_a_json_number(stepped, kind, power_kw):
    raw = f'{{"command_id":"x","action":"{kind.command[0]}","power_kw":{power_kw}}}'.encode()
    response = await stepped.post("/curtail", content=raw, headers=JSON)
    assert response.status_code == 422


async def test_curtail_malformed_json_names_the_body(stepped):
    response = await stepped.post("/curtail", content=b'{"command_id": "x", ', headers=JSON)
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["detail"]] == ["body"]


# -- /curtail: idempotency -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "action", "power_kw", "figures"),
    [
        pytest.param(HOME_KIND, "curtail_solar", 1.0, {"solar.curtailed_kw": 1.0, "net_power_kw": 1.0}, id="home"),
        pytest.param(
            BATTERY_KIND, "discharge_battery", 10.0, {"battery.power_kw": 15.0, "net_power_kw": 15.0}, id="battery"
        ),
    ],
)
async def test_repeated_command_is_a_duplicate_applied_once(stepped, action, power_kw, figures):
    first = (await curtail(stepped, action, power_kw, command_id="dup-1")).json()
    assert first["status"] == "applied"
    again = await curtail(stepped, action, power_kw, command_id="dup-1")
    assert again.status_code == 200
    body = again.json()
    assert body["status"] == "duplicate"
    assert body["applied_kw"] == approx(first["applied_kw"])
    assert body["applied_kw"] == approx(power_kw)
    assert body["command_id"] == "dup-1"
    status = (await stepped.get("/status")).json()
    assert status["net_power_kw"] == approx(first["agent_status"]["net_power_kw"])
    assert status == first["agent_status"]
    assert_figures(status, figures)  # moved once, not twice


@pytest.mark.parametrize(
    ("kind", "action", "power_kw", "other_action"),
    [
        pytest.param(HOME_KIND, "curtail_solar", 1.0, "shed_load", id="home"),
        pytest.param(BATTERY_KIND, "discharge_battery", 10.0, "charge_battery", id="battery"),
    ],
)
async def test_reused_command_id_with_another_body_is_409(stepped, kind, action, power_kw, other_action):
    await curtail(stepped, action, power_kw, command_id="dup-2")
    before = (await stepped.get("/status")).json()
    response = await curtail(stepped, action, 2 * power_kw, command_id="dup-2")
    assert response.status_code == 409
    body = response.json()
    assert_error_shape(body, "conflict", kind.agent_id)
    assert "dup-2" in body["message"]
    other = await curtail(stepped, other_action, power_kw, command_id="dup-2")
    assert other.status_code == 409
    assert_error_shape(other.json(), "conflict", kind.agent_id)
    assert (await stepped.get("/status")).json() == before


async def test_duplicate_of_a_rejected_command_stays_rejected_in_a_later_step(client, kind):
    action, power_kw = kind.command
    first = (await curtail(client, action, power_kw, command_id="early")).json()
    assert first["status"] == "rejected"
    await client.post("/simulate")
    before = (await client.get("/status")).json()
    body = (await curtail(client, action, power_kw, command_id="early")).json()
    assert body["status"] == "duplicate"
    assert body["applied_kw"] == 0.0
    assert (await client.get("/status")).json() == before


async def test_command_ids_survive_a_restart(make_app, serve_app, kind):
    action, power_kw = kind.command
    async with running(make_app(start=kind.active_start)) as c:
        await c.post("/simulate")
        assert (await curtail(c, action, power_kw, command_id="persist")).json()["status"] == "applied"
    c2 = await serve_app(make_app(start=kind.active_start, fresh=False))
    assert (await curtail(c2, action, power_kw, command_id="persist")).json()["status"] == "duplicate"
    assert (await curtail(c2, action, 2 * power_kw, command_id="persist")).status_code == 409


# -- the step log --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "start", "commands", "columns", "empty_columns"),
    [
        pytest.param(
            HOME_KIND,
            HOME_DAY_START,
            [[("curtail_solar", 1.0), ("shed_load", 0.1)], [], []],  # the commands after each step
            {"solar_curtailed_kw": [1.0, 0.0, 0.0], "load_shed_kw": [0.1, 0.0, 0.0], "net_power_kw": [0.9, 0.0, 0.0]},
            ["price_per_kwh"],
            id="home",
        ),
        pytest.param(
            BATTERY_KIND,
            BATTERY_CHEAP_START,
            [[], [], [("charge_battery", 5.0)]],
            {"battery_power_kw": [25.0, 0.0, -20.0], "price_per_kwh": [0.10, 0.20, 0.40]},
            ["solar_output_kw"],
            id="battery",
        ),
    ],
)
async def test_step_log_has_one_row_per_step(make_app, tmp_path, kind, start, commands, columns, empty_columns):
    async with running(make_app(start=start)) as c:
        for step, step_commands in enumerate(commands, start=1):
            await c.post("/simulate")
            for action, power_kw in step_commands:
                assert (await curtail(c, action, power_kw, command_id=f"{action}-{step}")).status_code == 200
        last = (await c.get("/status")).json()
    log = pd.read_csv(tmp_path / "logs" / f"{kind.agent_id}_log.csv")
    assert list(log.columns) == list(STEP_LOG_COLUMNS)
    assert log["step"].tolist() == [1, 2, 3]
    assert log["commands"].tolist() == [len(step_commands) for step_commands in commands]  # each applied
    for column, values in columns.items():
        assert log[column].tolist() == approx(values), column
    for column in empty_columns:
        assert log[column].isna().all(), column
    assert pd.to_datetime(log["timestamp"]).diff().dropna().tolist() == [STEP, STEP]
    assert log["battery_soc_fraction"].iloc[-1] == approx(last["battery"]["soc_fraction"], abs=1e-6)


async def test_step_log_of_an_agent_that_never_stepped_is_just_a_header(make_app, tmp_path, kind):
    async with running(make_app()):
        pass
    log = pd.read_csv(tmp_path / "logs" / f"{kind.agent_id}_log.csv")
    assert len(log) == 0
    assert list(log.columns) == list(STEP_LOG_COLUMNS)


async def test_step_log_has_one_row_per_step_across_a_restart(make_app, tmp_path, kind):
    await run_steps(make_app(start=kind.active_start), 2)
    await run_steps(make_app(start=kind.active_start, fresh=False), 1)
    log = pd.read_csv(tmp_path / "logs" / f"{kind.agent_id}_log.csv")
    assert log["step"].tolist() == [1, 2, 3]


# -- auth ----------------------------------------------------------------------------------------
@pytest.fixture
async def token_client(monkeypatch, make_app, serve_app, kind) -> httpx.AsyncClient:
    """A client to an agent started with AGENT_TOKEN set, at its active row, before any step."""
    monkeypatch.setenv("AGENT_TOKEN", TOKEN)
    return await serve_app(make_app(start=kind.active_start))


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "no-scheme", "basic"],
)
async def test_token_is_required_to_simulate_and_curtail(token_client, kind, headers):
    for response in (
        await token_client.post("/simulate", headers=headers),
        await curtail(token_client, *kind.command, headers=headers),
    ):
        assert response.status_code == 401
        assert_error_shape(response.json(), "unauthorized", kind.agent_id)
        assert TOKEN not in response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert (await token_client.get("/status")).json()["step"] == 0


async def test_token_lets_simulate_and_curtail_through(token_client, kind):
    assert (await token_client.post("/simulate", headers=bearer(TOKEN))).status_code == 200
    response = await curtail(token_client, *kind.command, headers=bearer(TOKEN))
    assert response.status_code == 200
    assert response.json()["status"] == "applied"
    assert (await token_client.get("/status")).json()["step"] == 1


@pytest.mark.parametrize("path", ["/", "/health", "/status", "/docs", "/openapi.json"])
async def test_reads_stay_open_with_a_token(token_client, path):
    assert (await token_client.get(path)).status_code == 200


async def test_bearer_scheme_is_case_insensitive(token_client):
    response = await token_client.post("/simulate", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200


async def test_unauthorised_bad_body_gets_401_not_422(token_client, kind):
    raw = f'{{"command_id":"x","action":"{kind.command[0]}","power_kw":NaN}}'.encode()
    response = await token_client.post("/curtail", content=raw, headers=JSON)
    assert response.status_code == 401


# -- registration with the grid agent ------------------------------------------------------------
async def _registration_task(app: FastAPI, grid_app: FastAPI, settings: Any) -> tuple[httpx.AsyncClient, asyncio.Task]:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid")
    task = asyncio.create_task(register_forever(app.state.agent, client, settings))
    return client, task


async def _stop(client: httpx.AsyncClient, task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.aclose()


async def test_register_forever_registers_with_the_grid_agent(tmp_path, make_settings, serve_app, kind):
    settings = make_settings(public_url=f"http://{kind.name}.example:8101/", heartbeat_s=0.05)
    app = kind.create_app(settings, register=False)
    await serve_app(app)
    router = HostRouter({f"{kind.name}.example": httpx.ASGITransport(app=app)})  # the grid agent probes the URL
    grid_app = create_grid_app(make_grid_settings(tmp_path), transport=router)
    grid = await serve_app(grid_app)
    client, task = await _registration_task(app, grid_app, settings)
    try:
        for _ in range(100):
            agents = (await grid.get("/agents")).json()
            if agents:
                break
            await asyncio.sleep(0.01)
    finally:
        await _stop(client, task)
    assert [(a["agent_id"], a["url"], a["healthy"]) for a in agents] == [
        (kind.agent_id, f"http://{kind.name}.example:8101", True)
    ]


async def test_register_forever_says_why_the_grid_agent_refuses_it(
    tmp_path, make_settings, serve_app, kind, monkeypatch, caplog
):
    monkeypatch.setenv("AGENT_TOKEN", "the-grid-agents-token")
    grid_app = create_grid_app(make_grid_settings(tmp_path))
    await serve_app(grid_app)
    monkeypatch.setenv("AGENT_TOKEN", "a-mistyped-token")  # the device agent was started with another token
    settings = make_settings(heartbeat_s=0.05)
    app = kind.create_app(settings, register=False)
    await serve_app(app)
    caplog.set_level(logging.INFO, logger="agents")
    client, task = await _registration_task(app, grid_app, settings)
    await asyncio.sleep(0.5)
    await _stop(client, task)
    assert any("401" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)


async def test_no_heartbeat_while_the_grid_agent_calls_and_heartbeats_again_when_it_goes_quiet(make_settings, kind):
    settings = make_settings(heartbeat_s=0.05)
    app = kind.create_app(settings, register=False)
    agent = app.state.agent
    posts: list[float] = []

    def grid(request: httpx.Request) -> httpx.Response:
        posts.append(time.monotonic())
        return httpx.Response(200, json={})

    client = httpx.AsyncClient(transport=httpx.MockTransport(grid), base_url="http://grid")
    task = asyncio.create_task(register_forever(agent, client, settings))
    try:
        while not posts:  # registered
            await asyncio.sleep(0.005)
        calls_began = time.monotonic()
        while time.monotonic() - calls_began < 0.5:  # the grid agent steps it ten times a heartbeat interval
            agent.heard_from_grid()
            await asyncio.sleep(0.005)
        quiet_began = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        await _stop(client, task)
    while_called = [t for t in posts if calls_began < t <= quiet_began]
    while_quiet = [t for t in posts if t > quiet_began]
    assert len(while_called) <= 1  # at most the one already due when the calls began
    assert len(while_quiet) >= 4  # about one every 0.05 s once nobody calls


# -- durable state -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "steps", "soc_direction", "next_price_per_kwh"),
    [
        pytest.param(HOME_KIND, 3, +1, None, id="home"),  # still sunny after the restart: it goes on charging
        pytest.param(BATTERY_KIND, 2, -1, 0.40, id="battery"),  # the third row, dear: resumed, not restarted
    ],
)
async def test_new_app_resumes_at_the_saved_step_and_soc(
    make_app, serve_app, kind, steps, soc_direction, next_price_per_kwh
):
    saved = await run_steps(make_app(start=kind.active_start), steps)
    assert saved["battery"]["soc_fraction"] > 0.5  # the active rows charged it
    c = await serve_app(make_app(start=kind.active_start, fresh=False))
    resumed = (await c.get("/status")).json()
    assert resumed["step"] == steps
    assert resumed["timestamp"] == saved["timestamp"]
    assert resumed["battery"]["soc_fraction"] == approx(saved["battery"]["soc_fraction"])
    nxt = (await c.post("/simulate")).json()
    assert nxt["step"] == steps + 1
    assert datetime.fromisoformat(nxt["timestamp"]) - datetime.fromisoformat(saved["timestamp"]) == STEP
    assert (nxt["battery"]["soc_fraction"] - saved["battery"]["soc_fraction"]) * soc_direction > 0
    assert nxt["price_per_kwh"] == approx(next_price_per_kwh)


async def test_fresh_starts_over(make_app, serve_app, kind):
    await run_steps(make_app(start=kind.active_start), 3)
    c = await serve_app(make_app(start=kind.active_start, fresh=True))
    body = (await c.get("/status")).json()
    assert body["step"] == 0
    assert body["battery"]["soc_fraction"] == approx(0.5)
    assert (await c.post("/simulate")).json()["timestamp"] == datetime.fromisoformat(kind.active_start).isoformat()


@pytest.mark.parametrize(
    ("kind", "power_kw"),
    [
        pytest.param(HOME_KIND, 4.0, id="home"),  # at night: -1 -> -5 kW
        pytest.param(BATTERY_KIND, 50.0, id="battery"),  # on cheap energy: +25 -> -25 kW
    ],
)
async def test_resume_keeps_a_soc_changed_by_a_command(make_app, serve_app, power_kw):
    async with running(make_app()) as c:
        await c.post("/simulate")
        saved = (await curtail(c, "discharge_battery", power_kw)).json()["agent_status"]
    c2 = await serve_app(make_app(fresh=False))
    resumed = (await c2.get("/status")).json()
    assert resumed["battery"]["soc_fraction"] == approx(saved["battery"]["soc_fraction"])
    assert resumed["battery"]["soc_fraction"] < 0.5 - 0.05


@pytest.mark.parametrize(
    ("kind", "steps", "figures"),
    [
        pytest.param(HOME_KIND, 2, ("load.demand_kw", "battery.power_kw"), id="home"),
        pytest.param(BATTERY_KIND, 1, ("battery.power_kw", "price_per_kwh"), id="battery"),
    ],
)
async def test_resumed_status_reports_the_saved_operating_point(make_app, serve_app, kind, steps, figures):
    saved = await run_steps(make_app(start=kind.active_start), steps)
    c = await serve_app(make_app(start=kind.active_start, fresh=False))
    resumed = (await c.get("/status")).json()
    assert_figures(resumed, {path: figure(saved, path) for path in figures})


# -- start-up errors -----------------------------------------------------------------------------
HOME_HEADER = "timestamp,solar_kw,load_kw,temp_air_c"


def _home_rows(bad_row: str) -> list[str]:
    """A home data file whose line 3 is ``bad_row``."""
    return [
        HOME_HEADER,
        "2025-06-01T00:00:00,0.0,1.0,15.0",
        bad_row,
        "2025-06-01T00:30:00,0.0,1.0,15.0",
        "2025-06-01T00:45:00,0.0,1.0,15.0",
    ]


@pytest.mark.parametrize(
    ("kind", "rows", "line", "column"),
    [
        pytest.param(HOME_KIND, _home_rows("2025-06-01T00:15:00,abc,1.0,15.0"), 3, "solar_kw", id="home-not-a-number"),
        pytest.param(HOME_KIND, _home_rows("2025-06-01T00:15:00,0.0,-1.0,15.0"), 3, "load_kw", id="home-negative-load"),
        pytest.param(HOME_KIND, _home_rows("2025-06-01T00:15:00,0.0,1.0,nan"), 3, "temp_air_c", id="home-nan"),
        pytest.param(HOME_KIND, _home_rows("yesterday,0.0,1.0,15.0"), 3, "timestamp", id="home-bad-timestamp"),
        pytest.param(
            BATTERY_KIND,
            [
                "timestamp,price_per_kwh,temp_air_c",
                "2025-06-01T00:00:00,0.10,20",
                "2025-06-01T00:15:00,0.10,20",
                "2025-06-01T00:30:00,cheap,20",
            ],
            4,
            "price_per_kwh",
            id="battery-not-a-number",
        ),
    ],
)
def test_malformed_data_file_names_file_line_and_column(tmp_path, kind, rows, line, column):
    path = tmp_path / f"broken_{kind.name}.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(StartupError) as caught:
        kind.create_app(kind.make_settings(tmp_path, data_file=path), register=False)
    message = str(caught.value)
    assert f"broken_{kind.name}.csv" in message
    assert f"line {line}" in message
    assert f"column {column}" in message


def test_missing_data_file_is_a_startup_error(tmp_path, kind):
    with pytest.raises(StartupError, match=r"nowhere\.csv"):
        kind.create_app(kind.make_settings(tmp_path, data_file=tmp_path / "nowhere.csv"), register=False)


@pytest.mark.parametrize("start", ["2030-01-01T00:00", "not a time"])
def test_start_outside_the_data_is_a_startup_error(make_app, start):
    with pytest.raises(StartupError):
        make_app(start=start)


def test_unparsable_start_names_the_setting(make_app):
    with pytest.raises(StartupError, match="start"):
        make_app(start="not a time")


def test_unusable_log_dir_is_a_startup_error(make_app, tmp_path):
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("x", encoding="utf-8")
    with pytest.raises(StartupError):
        make_app(log_dir=not_a_dir)
