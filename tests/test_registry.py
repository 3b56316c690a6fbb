"""The grid agent's registry in process: callback URLs probed when new or changed, agents forgotten."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
import pytest

from agents.common.tls import PLAIN_HTTP_REFUSED
from models.schemas import AgentReport
from tests.conftest import BATTERY_ID, HOME_ID, Feeder

OK_HEALTH = {"status": "ok", "agent_id": "x", "agent_type": "home"}


def probes(feeder: Feeder, host: str | None = None) -> list[tuple[str, str]]:
    """The /health calls the grid agent made (to ``host`` only, if given)."""
    return [(h, path) for h, path in feeder.router.calls if path.endswith("/health") and host in (None, h)]


def refusal(response: httpx.Response) -> dict:
    """The error body of a refused registration, checked for the project's one shape."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "callback_refused"
    assert body["agent_id"] == "grid_agent"
    assert all(d["field"] == "url" for d in body["detail"])
    return body


def healthy_host(calls: list[str]) -> httpx.MockTransport:
    """A host whose /health answers ok; every request's path is appended to ``calls``."""

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json=OK_HEALTH)

    return httpx.MockTransport(answer)


# -- the probe -----------------------------------------------------------------------------------
async def test_registration_refuses_an_unreachable_url_naming_it(make_feeder):
    feeder = await make_feeder(register=False)
    body = refusal(await feeder.register(HOME_ID, url="http://nowhere:8001"))
    assert "http://nowhere:8001" in body["message"]
    assert body["detail"][0]["url"] == "http://nowhere:8001"
    assert "GET http://nowhere:8001/health failed (connect" in body["detail"][0]["message"]
    assert await feeder.agents() == {}
    assert probes(feeder) == [("nowhere", "/health")]


async def test_a_refusal_is_logged_once_not_at_every_retry(make_feeder, caplog):
    feeder = await make_feeder(register=False)
    with caplog.at_level("DEBUG", logger="agents.cycle.registry"):
        for _ in range(3):
            refusal(await feeder.register(HOME_ID, url="http://nowhere"))
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "refused a registration" in r.message]
    assert len(warnings) == 1
    assert "http://nowhere" in warnings[0].message


async def test_registration_refuses_a_url_whose_health_is_not_ok(make_feeder):
    feeder = await make_feeder(register=False)
    feeder.router.routes["teapot"] = httpx.MockTransport(lambda request: httpx.Response(418))
    body = refusal(await feeder.register(HOME_ID, url="http://teapot"))
    assert "HTTP 418" in body["message"]
    assert await feeder.agents() == {}


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:8000/", "http://127.0.0.1:8000/agents/home_1"]
)
async def test_registration_refuses_the_grid_agents_own_url_without_calling_it(make_feeder, url):
    feeder = await make_feeder(register=False)  # the grid agent's settings: 127.0.0.1:8000
    body = refusal(await feeder.register(HOME_ID, url=url))
    assert "grid agent's own address (127.0.0.1:8000)" in body["message"]
    assert probes(feeder) == []
    assert await feeder.agents() == {}


async def test_registration_takes_another_port_on_the_grid_agents_host(make_feeder):
    feeder = await make_feeder(register=False)
    calls: list[str] = []
    feeder.router.routes["127.0.0.1"] = healthy_host(calls)
    assert (await feeder.register(HOME_ID, url="http://127.0.0.1:8001")).status_code == 200
    assert calls == ["/health"]


async def test_probe_only_when_the_url_is_new_or_changed(make_feeder):
    feeder = await make_feeder(register=False)
    assert (await feeder.register(HOME_ID)).status_code == 200
    assert probes(feeder) == [(HOME_ID, "/health")]
    for _ in range(3):  # heartbeats
        assert (await feeder.register(HOME_ID)).status_code == 200
    assert len(probes(feeder)) == 1
    feeder.router.routes["home-moved"] = feeder.router.routes[HOME_ID]
    assert (await feeder.register(HOME_ID, url="http://home-moved")).status_code == 200
    assert probes(feeder) == [(HOME_ID, "/health"), ("home-moved", "/health")]
    assert (await feeder.agents())[HOME_ID]["url"] == "http://home-moved"
    assert (await feeder.register(HOME_ID, url="http://home-moved")).status_code == 200
    assert len(probes(feeder)) == 2


async def test_moving_to_an_unreachable_url_keeps_the_old_one(make_feeder):
    feeder = await make_feeder()
    refusal(await feeder.register(HOME_ID, url="http://gone"))
    assert (await feeder.agents())[HOME_ID]["url"] == f"http://{HOME_ID}"
    assert (await feeder.coordinate())["unreachable"] == []


async def test_probe_has_a_bounded_timeout(make_feeder):
    feeder = await make_feeder(register=False, grid={"probe_timeout_s": 0.2})

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=OK_HEALTH)

    feeder.router.routes["hung"] = httpx.MockTransport(hang)
    started = time.monotonic()
    body = refusal(await feeder.register(HOME_ID, url="http://hung"))
    assert time.monotonic() - started < 2.0
    assert "timeout: no answer within 0.2 s" in body["message"]


async def test_batch_registration_probes_each_process_once(make_feeder):
    feeder = await make_feeder(register=False)
    calls: list[str] = []
    feeder.router.routes["homes"] = healthy_host(calls)
    status = await feeder.device_status(HOME_ID)
    reports = [
        AgentReport.model_validate(
            {"url": f"http://homes/agents/h{i}", "batch_url": "http://homes", "status": {**status, "agent_id": f"h{i}"}}
        ).model_dump(mode="json")
        for i in range(5)
    ]
    response = await feeder.client.post("/registrations", json={"reports": reports}, headers=feeder.headers)
    assert response.json() == {"registered": 5, "feeder_clock": None}  # a new run: no step yet
    assert calls == ["/health"]  # the process's batch URL, once for its five agents
    await feeder.client.post("/registrations", json={"reports": reports}, headers=feeder.headers)
    assert calls == ["/health"]  # a heartbeat probes nothing
    assert set(await feeder.agents()) == {f"h{i}" for i in range(5)}


async def test_batch_with_an_unreachable_url_registers_nothing(make_feeder):
    feeder = await make_feeder(register=False)
    status = await feeder.device_status(HOME_ID)
    reports = [
        {"url": "http://home_1", "status": status},
        {"url": "http://nowhere/agents/h2", "batch_url": "http://nowhere", "status": {**status, "agent_id": "h2"}},
    ]
    body = refusal(await feeder.client.post("/registrations", json={"reports": reports}, headers=feeder.headers))
    assert [d["url"] for d in body["detail"]] == ["http://nowhere"]
    assert await feeder.agents() == {}


async def test_plain_http_callback_beyond_loopback_is_refused_with_tls_on(make_feeder, tls_files):
    feeder = await make_feeder(register=False, grid={"tls_ca_file": tls_files.ca})
    body = refusal(await feeder.register(HOME_ID, url=f"http://{HOME_ID}"))
    assert PLAIN_HTTP_REFUSED in body["message"]
    assert probes(feeder) == []
    assert (await feeder.register(HOME_ID, url=f"https://{HOME_ID}")).status_code == 200


# -- forgetting ----------------------------------------------------------------------------------
async def test_agents_unheard_of_are_forgotten_with_their_metrics_and_come_back(make_feeder):
    feeder = await make_feeder(grid={"forget_after_s": 60.0})
    registry = feeder.grid_app.state.agent.registry
    feeder.router.take_down(HOME_ID)
    await feeder.coordinate()  # a failed call: a peer-error series labelled home_1
    metrics = (await feeder.client.get("/metrics")).text
    assert 'ems_peer_errors_total{kind="connect",peer="home_1"}' in metrics
    assert 'ems_agent_up{agent_id="home_1"' in metrics

    real_clock = registry.clock
    registry.clock = lambda: real_clock() + timedelta(seconds=59)
    assert set(await feeder.agents()) == {HOME_ID, BATTERY_ID}  # unhealthy, not yet forgotten
    registry.clock = lambda: real_clock() + timedelta(seconds=61)
    assert await feeder.agents() == {}
    metrics = (await feeder.client.get("/metrics")).text
    assert 'peer="home_1"' not in metrics and 'agent_id="home_1"' not in metrics
    assert "ems_agents_registered 0.0" in metrics

    feeder.router.bring_up(HOME_ID)
    probed = len(probes(feeder, HOME_ID))
    assert (await feeder.register(HOME_ID)).status_code == 200  # its next heartbeat
    assert len(probes(feeder, HOME_ID)) == probed + 1  # a forgotten agent is new again
    assert (await feeder.agents())[HOME_ID]["healthy"] is True
    assert (await feeder.coordinate())["agents_stepped"] == 1


async def test_forgetting_one_agent_keeps_its_hosts_other_series(make_feeder):
    feeder = await make_feeder(grid={"forget_after_s": 60.0})
    metrics = feeder.grid_app.state.agent.metrics
    metrics.peer_errors.labels(peer=BATTERY_ID, kind="timeout").inc()
    metrics.peer_errors.labels(peer=HOME_ID, kind="timeout").inc()
    registry = feeder.grid_app.state.agent.registry
    registry.records[HOME_ID].last_seen -= timedelta(seconds=120)
    assert set(await feeder.agents()) == {BATTERY_ID}
    text = (await feeder.client.get("/metrics")).text
    assert f'peer="{BATTERY_ID}"' in text and f'peer="{HOME_ID}"' not in text
