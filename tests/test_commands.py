"""Commands that hold, expire and fail safe; idempotency under concurrency; retries from the grid agent."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pytest import approx

from agents.home import create_app
from tests.conftest import BATTERY_ID, HOME_DAY_START, make_home_settings

JSON = {"content-type": "application/json"}


@pytest.fixture
async def home(tmp_path, home_csv, serve_app):
    """A home stepped once into the sun: solar 4 kW, load 1 kW, battery charging 3 kW, net 0."""

    async def build(**overrides) -> httpx.AsyncClient:
        settings = make_home_settings(tmp_path, data_file=home_csv, start=HOME_DAY_START, **overrides)
        client = await serve_app(create_app(settings, register=False))
        assert (await client.post("/simulate")).status_code == 200
        return client

    return build


async def test_command_with_duration_holds_over_later_steps_then_ends(home):
    c = await home()
    body = {"command_id": "hold-30min", "action": "curtail_solar", "power_kw": 1.5, "duration_s": 1800}
    answer = (await c.post("/curtail", json=body)).json()
    assert (answer["status"], answer["applied_kw"]) == ("applied", 1.5)
    assert answer["agent_status"]["control"] == "grid"
    assert [a["command_id"] for a in answer["agent_status"]["active_commands"]] == ["hold-30min"]
    assert answer["agent_status"]["active_commands"][0]["valid_until"] == "2025-06-01T01:00:00"

    second = (await c.post("/simulate")).json()  # 00:45: still held, re-applied after the local policy
    assert second["solar"]["curtailed_kw"] == approx(1.5)
    assert second["control"] == "grid"

    third = (await c.post("/simulate")).json()  # 01:00: the command has ended
    assert third["solar"]["curtailed_kw"] == 0.0
    assert third["control"] == "local"
    assert third["active_commands"] == []
    assert third["control_reason"] == "command hold-30min ended at 2025-06-01T01:00:00"


async def test_command_without_duration_holds_for_this_step_only(home):
    c = await home()
    await c.post("/curtail", json={"command_id": "one-step", "action": "shed_load", "power_kw": 0.2})
    assert (await c.get("/status")).json()["active_commands"] == []
    after = (await c.post("/simulate")).json()
    assert after["load"]["shed_kw"] == 0.0


async def test_expired_command_is_rejected_with_the_reason(home):
    c = await home()
    before = (await c.get("/status")).json()
    answer = (
        await c.post(
            "/curtail",
            json={"command_id": "late", "action": "shed_load", "power_kw": 0.2, "valid_until": "2025-06-01T00:15:00"},
        )
    ).json()
    assert answer["status"] == "rejected"
    assert answer["applied_kw"] == 0.0
    assert answer["reason"] == "expired: valid until 2025-06-01T00:15:00, the agent is at 2025-06-01T00:30:00"
    assert answer["agent_status"]["net_power_kw"] == before["net_power_kw"]


async def test_valid_until_later_holds_until_then(home):
    c = await home()
    answer = (
        await c.post(
            "/curtail",
            json={"command_id": "until", "action": "shed_load", "power_kw": 0.2, "valid_until": "2025-06-01T01:00:00"},
        )
    ).json()
    assert answer["status"] == "applied"
    assert (await c.post("/simulate")).json()["load"]["shed_kw"] == approx(0.2)
    assert (await c.post("/simulate")).json()["load"]["shed_kw"] == 0.0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"duration_s": 900, "valid_until": "2025-06-01T01:00:00"}, "body"),
        ({"duration_s": 0}, "duration_s"),
        ({"duration_s": -5}, "duration_s"),
        ({"duration_s": "900"}, "duration_s"),
        ({"valid_until": "tomorrow"}, "valid_until"),
    ],
)
async def test_bad_command_end_is_422_naming_the_field(home, extra, field):
    c = await home()
    before = (await c.get("/status")).json()
    response = await c.post("/curtail", json={"command_id": "bad", "action": "shed_load", "power_kw": 0.2, **extra})
    assert response.status_code == 422
    assert field in {d["field"] for d in response.json()["detail"]}
    assert (await c.get("/status")).json() == before


async def test_silent_grid_agent_makes_the_agent_fail_safe(home):
    c = await home(fail_safe_after_s=0.2)
    await c.post(
        "/curtail", json={"command_id": "hold", "action": "discharge_battery", "power_kw": 4.0, "duration_s": 3600}
    )
    held = (await c.get("/status")).json()
    assert held["control"] == "grid"
    assert held["battery"]["power_kw"] == approx(-1.0)  # 3 kW charging shifted by 4 kW
    await asyncio.sleep(0.3)
    safe = (await c.get("/status")).json()
    assert safe["control"] == "local"
    assert safe["active_commands"] == []
    assert safe["control_reason"].startswith("fail-safe: no word from the grid agent for")
    assert safe["battery"]["power_kw"] == approx(3.0)  # back to self-consumption
    assert safe["net_power_kw"] == approx(0.0)


async def test_agent_with_no_commands_does_not_fail_safe(home):
    c = await home(fail_safe_after_s=0.05)
    await asyncio.sleep(0.1)
    status = (await c.get("/status")).json()
    assert (status["control"], status["control_reason"]) == ("local", None)


async def test_eight_concurrent_copies_are_applied_once(home):
    c = await home()
    body = {"command_id": "burst", "action": "shed_load", "power_kw": 0.2}
    answers = await asyncio.gather(*(c.post("/curtail", json=body) for _ in range(8)))
    statuses = sorted(a.json()["status"] for a in answers)
    assert statuses == ["applied"] + ["duplicate"] * 7
    assert {a.json()["applied_kw"] for a in answers} == {0.2}
    assert (await c.get("/status")).json()["load"]["shed_kw"] == approx(0.2)


class FlakyTransport(httpx.AsyncBaseTransport):
    """Refuses the first ``failures`` /curtail connections to one host, then passes everything on."""

    def __init__(self, inner: httpx.AsyncBaseTransport, host: str, failures: int) -> None:
        self.inner, self.host, self.failures = inner, host, failures
        self.curtail_bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == self.host and request.url.path == "/curtail":
            self.curtail_bodies.append(request.content)
            if self.failures > 0:
                self.failures -= 1
                raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


async def test_grid_agent_retries_a_refused_curtail_with_the_same_command_id(make_feeder):
    feeder = await make_feeder()
    flaky = FlakyTransport(feeder.router, BATTERY_ID, failures=2)
    feeder.grid_app.state.agent.peers.client._transport = flaky
    result = await feeder.coordinate()
    battery_actions = [a for a in result["actions"] if a["agent_id"] == BATTERY_ID]
    assert battery_actions and battery_actions[0]["status"] == "applied"
    assert len(flaky.curtail_bodies) == 3
    assert len(set(flaky.curtail_bodies)) == 1  # the same command_id every time
    assert BATTERY_ID not in result["unreachable"]


async def test_grid_agent_gives_up_after_its_retries(make_feeder):
    feeder = await make_feeder(grid={"curtail_retries": 1})
    flaky = FlakyTransport(feeder.router, BATTERY_ID, failures=5)
    feeder.grid_app.state.agent.peers.client._transport = flaky
    result = await feeder.coordinate()
    assert len(flaky.curtail_bodies) == 2
    assert BATTERY_ID in result["unreachable"]
    assert [a["status"] for a in result["actions"] if a["agent_id"] == BATTERY_ID] == ["unreachable"]


async def test_resumed_agent_keeps_its_active_commands(tmp_path, home_csv, serve_app):
    settings = make_home_settings(tmp_path, data_file=home_csv, start=HOME_DAY_START)
    first = create_app(settings, register=False)
    from tests.conftest import running

    async with running(first) as c:
        await c.post("/simulate")
        await c.post(
            "/curtail", json={"command_id": "hold", "action": "curtail_solar", "power_kw": 1.0, "duration_s": 3600}
        )
    resumed = await serve_app(create_app(settings.model_copy(update={"fresh": False}), register=False))
    status = (await resumed.get("/status")).json()
    assert [a["command_id"] for a in status["active_commands"]] == ["hold"]
    assert status["solar"]["curtailed_kw"] == approx(1.0)
    assert (await resumed.post("/simulate")).json()["solar"]["curtailed_kw"] == approx(1.0)
