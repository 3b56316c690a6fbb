"""Schemathesis against each agent's OpenAPI schema, in process, with every check it has.

Every operation of the home, battery and grid apps gets schema-valid (positive) and schema-invalid
(negative) requests. Every check runs on every answer: no server error, the status code, the
content type, the headers and the body are what the schema declares, valid data is accepted and
invalid data refused. Hypothesis is derandomized, so a run is the same on every machine.

The apps run their lifespans (schemathesis starts one per app on its first request and the test
stops them); the grid agent's ``/coordinate`` runs with a home and a storage system registered in
process, so each fuzzed cycle steps, plans and commands real agents.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import schemathesis
import schemathesis.core.failures
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.python import asgi as schemathesis_asgi

from agents import battery, grid, home
from models.schemas import AgentReport
from tests.conftest import (
    BATTERY_CSV,
    BATTERY_ID,
    HOME_CSV,
    HOME_DAY_START,
    HOME_ID,
    HostRouter,
    make_battery_settings,
    make_grid_settings,
    make_home_settings,
)

#: Generated requests per operation and generation mode: enough to hit every field's edges, few enough for CI.
EXAMPLES = 30
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
load_all_checks()


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,  # the same requests on every run and every machine
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture
def lifespans() -> Iterator[None]:
    """Stop every app's lifespan that schemathesis started, so each agent closes its log and state."""
    try:
        yield
    finally:
        schemathesis_asgi.shutdown_lifespans()


def start(app: Any) -> None:
    """Run an app's lifespan start-up now (schemathesis keeps it running until ``shutdown_lifespans``)."""
    with schemathesis_asgi.get_client(app):
        pass


#: Where a positive registration says the agent is: a host whose /health answers (see ``reachable_host``).
REACHABLE_URL = "http://fuzzed"


def reachable_host() -> httpx.MockTransport:
    """The host of REACHABLE_URL: /health answers ok, anything else 503 (the agent is then unreachable)."""
    health = {"status": "ok", "agent_id": "fuzzed", "agent_type": "home"}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=health) if request.url.path.endswith("/health") else httpx.Response(503)

    return httpx.MockTransport(answer)


def _reachable(report: Any) -> Any:
    if not isinstance(report, dict):
        return report
    urls = {"url": REACHABLE_URL, **({"batch_url": REACHABLE_URL} if report.get("batch_url") is not None else {})}
    return {**report, **urls}


def within_cross_field_rules(case: schemathesis.Case) -> None:
    """Make a positive case obey the rules between fields that OpenAPI cannot state.

    A registration's path names the agent its body reports (else 400, tested in test_grid.py), its
    URLs must answer the grid agent's probe (else 422, tested in test_registry.py), and batches and
    runs of cycles are kept short here (up to 100 and 1,000,000 are valid; each cycle steps the whole
    feeder, and a run holds the feeder until it ends).
    """
    body = case.body if isinstance(case.body, dict) else None
    if body is None:
        return
    if (
        case.operation.label == "POST /agents/{agent_id}/status"
        and isinstance(body.get("status"), dict)
        and isinstance(body["status"].get("agent_id"), str)
    ):
        case.path_parameters = {**(case.path_parameters or {}), "agent_id": body["status"]["agent_id"]}
    if case.operation.label == "POST /agents/{agent_id}/status":
        case.body = body = _reachable(body)
    if case.operation.label == "POST /registrations" and isinstance(body.get("reports"), list):
        case.body = body = {**body, "reports": [_reachable(report) for report in body["reports"]]}
    if case.operation.label in ("POST /coordinate/batch", "POST /runs") and isinstance(body.get("cycles"), int | float):
        case.body = {**body, "cycles": min(body["cycles"], 3)}  # JSON Schema's integers include 3.0


def all_checks() -> list[Any]:
    """Every check schemathesis has, negative_data_rejection included: no lax type slips through."""
    load_all_checks()
    return list(CHECKS.get_all())


def describe(exc: BaseException) -> str:
    """Schemathesis failures say what and how to reproduce; anything else (a crash in the app) gets its traceback."""
    if isinstance(exc, BaseExceptionGroup) and not isinstance(exc, schemathesis.core.failures.FailureGroup):
        return "\n".join(describe(sub) for sub in exc.exceptions)
    if isinstance(exc, schemathesis.core.failures.FailureGroup | AssertionError):
        return str(exc)
    return "".join(traceback.format_exception(exc)[-12:])


def fuzz(app: Any, *, before_each: Callable[[], None] | None = None, examples: int = EXAMPLES) -> list[str]:
    """Every operation of the app's schema, positive and negative, with every check; returns the failures."""
    checks = all_checks()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:
        for mode in MODES:

            @fuzz_settings(examples)
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                if before_each is not None:
                    before_each()
                if mode is GenerationMode.POSITIVE:
                    within_cross_field_rules(case)
                case.call_and_validate(checks=checks)

            try:
                run()
            except Unsatisfiable:
                pass  # nothing of this operation can be made invalid (no parameters, no body)
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} [{mode.value}]:\n{describe(exc)}")
    return failures


def device_apps(tmp_path: Path) -> dict[str, Any]:
    """A home in the sun and a storage system at a cheap price, each stepped once, so commands do real work."""
    home_csv = tmp_path / "home.csv"
    battery_csv = tmp_path / "battery.csv"
    home_csv.write_text(HOME_CSV, encoding="utf-8")
    battery_csv.write_text(BATTERY_CSV, encoding="utf-8")
    apps = {
        HOME_ID: home.create_app(
            make_home_settings(tmp_path, data_file=home_csv, start=HOME_DAY_START), register=False
        ),
        BATTERY_ID: battery.create_app(make_battery_settings(tmp_path, data_file=battery_csv), register=False),
    }
    for app in apps.values():
        app.state.agent.simulate()
    return apps


def check_files_whole(tmp_path: Path, agent_id: str) -> None:
    """After the fuzzing and the shutdown, the agent's step log still reads as one gapless table."""
    log = pd.read_csv(tmp_path / "logs" / f"{agent_id}_log.csv")
    assert log["step"].tolist() == list(range(1, len(log) + 1))


@pytest.mark.parametrize("agent_id", [HOME_ID, BATTERY_ID])
def test_device_agent_answers_match_its_schema(tmp_path, lifespans, agent_id):
    app = device_apps(tmp_path)[agent_id]
    failures = fuzz(app)
    assert not failures, "\n\n".join(failures)
    schemathesis_asgi.shutdown_lifespans()
    check_files_whole(tmp_path, agent_id)


def test_grid_agent_answers_match_its_schema_while_coordinating_real_agents(tmp_path, lifespans):
    devices = device_apps(tmp_path)
    router = HostRouter({agent_id: httpx.ASGITransport(app=app) for agent_id, app in devices.items()})
    router.routes["fuzzed"] = reachable_host()
    grid_app = grid.create_app(make_grid_settings(tmp_path), transport=router)
    for app in (*devices.values(), grid_app):
        start(app)

    def register_devices() -> None:
        """Register both devices again (fuzzed registrations may have moved or replaced them)."""
        with schemathesis_asgi.get_client(grid_app) as client:
            for agent_id, app in devices.items():
                report = AgentReport(url=f"http://{agent_id}", status=app.state.agent.status())
                response = client.post(f"/agents/{agent_id}/status", json=report.model_dump(mode="json"))
                assert response.status_code == 200, response.text

    register_devices()
    failures = fuzz(grid_app, before_each=register_devices)
    assert not failures, "\n\n".join(failures)
    agent = grid_app.state.agent
    assert agent.cycle > 0  # /coordinate ran
    assert {HOME_ID, BATTERY_ID} <= set(agent.registry.records)
    assert devices[HOME_ID].state.agent.step > 1  # and stepped the real agents


def test_mutating_endpoints_refuse_fuzzed_requests_without_the_token(tmp_path, lifespans, monkeypatch):
    """With AGENT_TOKEN set, whatever is sent without it is a documented 401 and changes nothing."""
    monkeypatch.setenv("AGENT_TOKEN", "s3cret-token")
    apps = device_apps(tmp_path)
    apps["grid"] = grid.create_app(make_grid_settings(tmp_path), transport=HostRouter({}))
    before = {agent_id: app.state.agent.status() for agent_id, app in apps.items() if agent_id != "grid"}
    checks = all_checks()
    for name, app in apps.items():
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.method.upper() not in ("POST", "DELETE"):
                continue

            @fuzz_settings(10)
            @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
            def run(case: schemathesis.Case) -> None:
                case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
                response = case.call_and_validate(checks=checks)
                assert response.status_code == 401, (name, operation.label, response.status_code, response.text)

            run()
    for agent_id, status in before.items():
        assert apps[agent_id].state.agent.status() == status
    assert apps["grid"].state.agent.registry.records == {}
    assert apps["grid"].state.agent.cycle == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("price_per_kwh", True), ("net_power_kw", "1.5"), ("step", True), ("timestamp", 1_750_000_000)],
)
async def test_registration_refuses_lax_json_types(make_feeder, field, value):
    feeder = await make_feeder(register=False)
    status = await feeder.device_status(BATTERY_ID)
    report = {"url": "http://battery_agent_1", "status": {**status, field: value}}
    response = await feeder.client.post(f"/agents/{BATTERY_ID}/status", json=report)
    assert response.status_code == 422, f"{field}={value!r} was taken: {response.status_code}"


async def test_command_refuses_a_number_for_valid_until(tmp_path, serve_app):
    app = device_apps(tmp_path)[HOME_ID]
    client = await serve_app(app)
    response = await client.post(
        "/curtail", json={"command_id": "unix", "action": "shed_load", "power_kw": 0.1, "valid_until": 1_750_000_000}
    )
    assert response.status_code == 422, response.text


async def test_coordinate_batch_refuses_a_boolean_for_cycles(feeder):
    response = await feeder.client.post("/coordinate/batch", json={"cycles": True})
    assert response.status_code == 422, response.text


async def test_a_fuzzers_long_batch_is_refused_at_once(feeder):
    """{"cycles": 9999} once held the grid agent for minutes; now it is a 422 and long runs are jobs."""
    started = time.monotonic()
    response = await feeder.client.post("/coordinate/batch", json={"cycles": 9999})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"] == "cycles"
    run = await feeder.client.post("/runs", json={"cycles": 9999})
    assert run.status_code == 202, run.text
    stopped = await feeder.client.delete(f"/runs/{run.json()['run_id']}")
    assert stopped.json()["status"] == "stopped"
    assert time.monotonic() - started < 10
