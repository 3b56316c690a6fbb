"""The grid agent in process, with a home and a battery agent behind a host-routing transport."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import pandas as pd
import pytest
from pytest import approx

from agents.cycle.recorder import GRID_LOG_COLUMNS
from agents.grid import create_app
from models.schemas import AgentReport
from tests.conftest import BATTERY_ID, HOME_ID, HostRouter, bearer, make_grid_settings, running

TOKEN = "s3cret-grid-token-for-tests"
JSON = {"content-type": "application/json"}
SUMMER_EVENING = "2025-07-15T17:00"


def transformer(result: dict, transformer_id: str = "T1") -> dict:
    (found,) = [t for t in result["transformers"] if t["transformer_id"] == transformer_id]
    return found


# -- read endpoints ------------------------------------------------------------------------------
async def test_root_and_health(feeder):
    root = (await feeder.client.get("/")).json()
    assert root["agent_type"] == "grid"
    assert "POST /coordinate" in root["endpoints"]
    health = (await feeder.client.get("/health")).json()
    assert health["status"] == "ok"
    assert health["agent_id"] == "grid_agent"


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
async def test_docs_answer_200(feeder, path):
    assert (await feeder.client.get(path)).status_code == 200


# -- registration --------------------------------------------------------------------------------
async def test_registered_agents_are_listed(feeder):
    agents = await feeder.agents()
    assert set(agents) == {HOME_ID, BATTERY_ID}
    for agent_id, agent_type in ((HOME_ID, "home"), (BATTERY_ID, "battery")):
        record = agents[agent_id]
        assert {"agent_id", "agent_type", "url", "transformer_id", "healthy", "last_seen"} <= set(record)
        assert record["agent_type"] == agent_type
        assert record["url"] == f"http://{agent_id}"
        assert record["transformer_id"] == "T1"
        assert record["healthy"] is True
        assert "last_status" not in record


async def test_registration_answers_the_record(make_feeder):
    feeder = await make_feeder(register=False)
    response = await feeder.register(HOME_ID, url="http://home_1/")
    assert response.status_code == 200
    body = response.json()
    assert body["agent_id"] == HOME_ID
    assert body["url"] == "http://home_1"  # the trailing slash is dropped
    assert body["healthy"] is True


async def test_heartbeat_refreshes_last_seen(feeder):
    first = datetime.fromisoformat((await feeder.agents())[HOME_ID]["last_seen"])
    await asyncio.sleep(0.01)
    await feeder.register(HOME_ID)
    assert datetime.fromisoformat((await feeder.agents())[HOME_ID]["last_seen"]) > first
    assert len(await feeder.agents()) == 2


async def test_agent_unheard_of_too_long_is_unhealthy(make_feeder):
    feeder = await make_feeder(grid={"stale_after_s": 0.05})
    await asyncio.sleep(0.1)
    agents = await feeder.agents()
    assert not agents[HOME_ID]["healthy"] and not agents[BATTERY_ID]["healthy"]
    await feeder.register(HOME_ID)
    assert (await feeder.agents())[HOME_ID]["healthy"] is True


async def test_mismatched_agent_id_is_refused_naming_both(feeder):
    status = await feeder.device_status(HOME_ID)
    response = await feeder.client.post("/agents/home_2/status", json={"url": "http://home_1", "status": status})
    assert 400 <= response.status_code < 500
    body = response.json()
    assert body["agent_id"] == "grid_agent"
    assert "home_2" in body["message"] and HOME_ID in body["message"]
    assert "home_2" not in await feeder.agents()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"url": "ftp://home_1"}, "url"),
        ({"url": ""}, "url"),
        ({"status": None}, "status"),
        ({"extra": 1}, "extra"),
        ({"status": {"agent_id": HOME_ID}}, "status.agent_type"),
        ({"status": "fine"}, "status"),
    ],
    ids=["ftp-url", "empty-url", "null-status", "extra-field", "partial-status", "string-status"],
)
async def test_bad_registration_body_is_422(make_feeder, change, field):
    feeder = await make_feeder(register=False)
    status = await feeder.device_status(HOME_ID)
    response = await feeder.client.post(
        f"/agents/{HOME_ID}/status", json={"url": "http://home_1", "status": status, **change}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error"
    assert field in {d["field"] for d in body["detail"]}
    assert await feeder.agents() == {}


@pytest.mark.parametrize("agent_id", [".", "..", ".hidden"])
async def test_agent_id_with_a_leading_dot_is_422(make_feeder, agent_id):
    """ "." and ".." cannot be a path segment: clients fold /agents/./status into /agents/status."""
    feeder = await make_feeder(register=False)
    status = {**(await feeder.device_status(HOME_ID)), "agent_id": agent_id}
    response = await feeder.client.post(
        "/registrations", json={"reports": [{"url": "http://home_1", "status": status}]}
    )
    assert response.status_code == 422
    assert any(d["field"].endswith("status.agent_id") for d in response.json()["detail"])
    assert await feeder.agents() == {}


async def test_registration_with_nan_net_power_is_422(make_feeder):
    feeder = await make_feeder(register=False)
    raw = AgentReport.model_validate(
        {"url": "http://home_1", "status": await feeder.device_status(HOME_ID)}
    ).model_dump_json()
    raw = raw.replace('"net_power_kw":0.0', '"net_power_kw":NaN')
    assert "NaN" in raw
    response = await feeder.client.post(f"/agents/{HOME_ID}/status", content=raw.encode(), headers=JSON)
    assert response.status_code == 422
    assert "status.net_power_kw" in {d["field"] for d in response.json()["detail"]}


@pytest.mark.parametrize("agent_id", [".x", "..", "a/b", "a b"], ids=["leading-dot", "dot-dot", "slash", "space"])
async def test_registration_under_an_id_unsafe_in_paths_is_refused(make_feeder, agent_id):
    """An id that a URL or a file name would rewrite ('.', '..', hidden files, slashes) is never registered."""
    feeder = await make_feeder(register=False)
    status = {**await feeder.device_status(HOME_ID), "agent_id": agent_id}
    response = await feeder.client.post(f"/agents/{agent_id}/status", json={"url": "http://home_1", "status": status})
    assert 400 <= response.status_code < 500  # 422 for the id, or a path the URL client rewrote elsewhere
    assert await feeder.agents() == {}


# -- the cycle -----------------------------------------------------------------------------------
async def test_coordinate_result_has_the_contract_fields(feeder):
    result = await feeder.coordinate()
    assert {
        "cycle",
        "timestamp",
        "planner",
        "fallback_reason",
        "transformers",
        "actions",
        "unreachable",
        "duration_ms",
    } <= set(result)
    assert result["cycle"] == 1
    assert result["planner"] == "optimal"
    assert result["fallback_reason"] is None
    assert result["unreachable"] == []
    assert result["duration_ms"] > 0
    t = transformer(result)
    assert {
        "transformer_id",
        "rating_kw",
        "loading_before_kw",
        "loading_after_kw",
        "state_before",
        "state_after",
    } <= set(t)
    for action in result["actions"]:
        assert {"agent_id", "action", "requested_kw", "applied_kw"} <= set(action)


async def test_first_step_overload_is_fixed_by_the_battery(feeder):
    # At 00:00 on 1 January the price is off-peak: the battery charges at 25 kW on a 15 kW transformer.
    result = await feeder.coordinate()
    assert result["timestamp"] == "2025-01-01T00:00:00"
    t = transformer(result)
    assert t["rating_kw"] == 15.0
    assert t["loading_before_kw"] == approx(25.0)
    assert t["state_before"] == "overload"
    assert t["state_after"] == "normal"
    assert t["loading_after_kw"] == approx(t["rating_kw"])
    assert [(a["agent_id"], a["action"]) for a in result["actions"]] == [(BATTERY_ID, "discharge_battery")]
    (action,) = result["actions"]
    assert action["requested_kw"] == approx(10.0)
    assert action["applied_kw"] == approx(10.0)
    battery = await feeder.device_status(BATTERY_ID)
    assert battery["battery"]["power_kw"] == approx(15.0)


async def test_cycle_steps_every_agent_once(feeder):
    for cycle in (1, 2, 3):
        result = await feeder.coordinate()
        assert result["cycle"] == cycle
    for agent_id in (HOME_ID, BATTERY_ID):
        status = await feeder.device_status(agent_id)
        assert status["step"] == 3
        assert status["timestamp"] == "2025-01-01T00:30:00"
    assert result["timestamp"] == "2025-01-01T00:30:00"


async def test_loading_after_matches_the_agents_net_power(feeder):
    result = await feeder.coordinate()
    total = sum([(await feeder.device_status(a))["net_power_kw"] for a in (HOME_ID, BATTERY_ID)])
    assert transformer(result)["loading_after_kw"] == approx(total)


async def test_summer_evening_reverse_flow_is_fixed(make_feeder):
    feeder = await make_feeder(start=SUMMER_EVENING)
    result = await feeder.coordinate()
    assert result["timestamp"] == "2025-07-15T17:00:00"
    t = transformer(result)
    assert t["state_before"] == "reverse_power_flow"
    assert t["loading_before_kw"] < -t["reverse_limit_kw"]
    assert t["state_after"] == "normal"
    assert t["loading_after_kw"] == approx(-t["reverse_limit_kw"])
    assert {a["action"] for a in result["actions"]} <= {"charge_battery", "curtail_solar"}
    assert sum(a["applied_kw"] for a in result["actions"]) == approx(t["loading_after_kw"] - t["loading_before_kw"])


async def test_rule_planner_fixes_the_overload_too(make_feeder):
    feeder = await make_feeder(grid={"planner": "rule"})
    result = await feeder.coordinate()
    assert result["planner"] == "rule"
    t = transformer(result)
    assert t["state_before"] == "overload"
    assert t["state_after"] == "normal"
    assert t["loading_after_kw"] == approx(15.0)
    assert {a["agent_id"] for a in result["actions"]} == {HOME_ID, BATTERY_ID}  # proportional: everyone helps
    assert all(a["action"] in ("discharge_battery", "shed_load") for a in result["actions"])


async def test_rating_setting_is_applied(make_feeder):
    feeder = await make_feeder(grid={"transformer_rating_kw": 30.0})
    result = await feeder.coordinate()
    t = transformer(result)
    assert t["rating_kw"] == 30.0
    assert t["state_before"] == "normal"
    assert result["actions"] == []


async def test_coordinate_without_agents_is_an_empty_cycle(make_feeder):
    feeder = await make_feeder(register=False)
    result = await feeder.coordinate()
    assert result["cycle"] == 1
    assert result["timestamp"] is None
    assert result["transformers"] == [] and result["actions"] == [] and result["unreachable"] == []


async def test_concurrent_cycles_do_not_overlap(feeder):
    results = await asyncio.gather(feeder.coordinate(), feeder.coordinate())
    assert sorted(r["cycle"] for r in results) == [1, 2]
    assert (await feeder.device_status(HOME_ID))["step"] == 2
    assert (await feeder.device_status(BATTERY_ID))["step"] == 2


# -- unreachable agents --------------------------------------------------------------------------
async def test_unreachable_agent_is_listed_and_the_cycle_goes_on(feeder):
    feeder.router.take_down(HOME_ID)
    result = await feeder.coordinate()
    assert result["unreachable"] == [HOME_ID]
    t = transformer(result)
    assert t["state_before"] == "overload"
    assert t["state_after"] == "normal"
    assert (await feeder.device_status(BATTERY_ID))["step"] == 1
    agents = await feeder.agents()
    assert agents[HOME_ID]["healthy"] is False
    assert agents[BATTERY_ID]["healthy"] is True
    status = (await feeder.client.get("/status")).json()
    assert status["agents_healthy"] == 1


async def test_unreachable_agent_is_healthy_again_after_it_registers(feeder):
    feeder.router.take_down(HOME_ID)
    await feeder.coordinate()
    feeder.router.bring_up(HOME_ID)
    response = await feeder.register(HOME_ID)
    assert response.status_code == 200
    assert (await feeder.agents())[HOME_ID]["healthy"] is True
    result = await feeder.coordinate()
    assert result["unreachable"] == []
    assert (await feeder.device_status(HOME_ID))["step"] == 1  # it missed the first cycle


async def test_unreachable_agent_is_still_tried_next_cycle(feeder):
    feeder.router.take_down(HOME_ID)
    await feeder.coordinate()
    feeder.router.bring_up(HOME_ID)
    result = await feeder.coordinate()
    assert result["unreachable"] == []
    assert (await feeder.agents())[HOME_ID]["healthy"] is True


async def test_agent_lost_while_acting_is_reported(feeder):
    feeder.router.take_down(BATTERY_ID, paths=["/curtail"])
    result = await feeder.coordinate()
    assert result["unreachable"] == [BATTERY_ID]
    (action,) = [a for a in result["actions"] if a["agent_id"] == BATTERY_ID]
    assert action["status"] == "unreachable"
    assert action["applied_kw"] == 0.0
    t = transformer(result)
    assert t["state_after"] == "overload"
    assert t["loading_after_kw"] == approx(t["loading_before_kw"])
    assert (await feeder.agents())[BATTERY_ID]["healthy"] is False


async def test_every_agent_unreachable_still_completes(feeder):
    feeder.router.take_down(HOME_ID)
    feeder.router.take_down(BATTERY_ID)
    result = await feeder.coordinate()
    assert result["unreachable"] == [BATTERY_ID, HOME_ID]
    assert result["actions"] == []
    assert result["timestamp"] is None


async def test_agent_answering_garbage_is_unreachable_not_a_crash(make_feeder):
    feeder = await make_feeder()
    garbage = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"status": "ok"} if request.url.path == "/health" else {"hi": "there"})
    )
    feeder.router.routes["liar"] = garbage
    status = await feeder.device_status(HOME_ID)
    liar = {**status, "agent_id": "home_9"}
    assert (
        await feeder.client.post("/agents/home_9/status", json={"url": "http://liar", "status": liar})
    ).status_code == 200
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=feeder.grid_app, raise_app_exceptions=False), base_url="http://grid"
    ) as c:
        response = await c.post("/coordinate")
    assert response.status_code == 200
    assert response.json()["unreachable"] == ["home_9"]


async def test_agent_registered_at_another_agents_url_is_not_double_counted(feeder):
    status = await feeder.device_status(HOME_ID)
    misdirected = {**status, "agent_id": "home_2"}
    assert (
        await feeder.client.post("/agents/home_2/status", json={"url": f"http://{HOME_ID}", "status": misdirected})
    ).status_code == 200
    result = await feeder.coordinate()
    assert (await feeder.device_status(HOME_ID))["step"] == 1
    assert "home_2" in result["unreachable"]


# -- status and the log --------------------------------------------------------------------------
async def test_status_before_any_cycle(feeder):
    body = (await feeder.client.get("/status")).json()
    assert body["cycles"] == 0
    assert body["last_cycle"] is None
    assert body["transformers"] == []
    assert body["agents_registered"] == 2
    assert body["agents_healthy"] == 2


async def test_status_reflects_the_last_cycle(feeder):
    await feeder.coordinate()
    last = await feeder.coordinate()
    body = (await feeder.client.get("/status")).json()
    assert body["cycles"] == 2
    assert body["planner"] == "optimal"
    assert body["last_cycle"]["cycle"] == 2
    assert body["last_cycle"]["timestamp"] == last["timestamp"]
    assert body["transformers"] == last["transformers"]
    assert body["median_cycle_ms"] > 0


async def test_grid_log_has_one_row_per_transformer_per_cycle(feeder):
    results = [await feeder.coordinate() for _ in range(3)]
    log = pd.read_csv(feeder.log_dir / "grid_agent_log.csv")  # every row is flushed as it is written
    assert list(log.columns) == list(GRID_LOG_COLUMNS)
    assert log["cycle"].tolist() == [1, 2, 3]
    assert (log["transformer_id"] == "T1").all()
    for (_, row), result in zip(log.iterrows(), results, strict=True):
        t = transformer(result)
        assert row["loading_before_kw"] == approx(t["loading_before_kw"], abs=1e-6)
        assert row["loading_after_kw"] == approx(t["loading_after_kw"], abs=1e-6)
        assert row["state_before"] == t["state_before"]
        assert row["state_after"] == t["state_after"]
        assert row["planner"] == "optimal"
        assert row["commands"] == len(result["actions"])
        assert row["applied_kw"] == approx(sum(a["applied_kw"] for a in result["actions"]), abs=1e-6)
        assert pd.Timestamp(row["timestamp"]) == pd.Timestamp(result["timestamp"])


async def test_grid_log_names_the_unreachable(feeder):
    feeder.router.take_down(HOME_ID)
    await feeder.coordinate()
    log = pd.read_csv(feeder.log_dir / "grid_agent_log.csv")
    assert log["unreachable"].tolist() == [HOME_ID]


async def test_grid_log_has_one_row_per_transformer(make_feeder):
    feeder = await make_feeder(home={"transformer_id": "T2"})
    result = await feeder.coordinate()
    assert sorted(t["transformer_id"] for t in result["transformers"]) == ["T1", "T2"]
    log = pd.read_csv(feeder.log_dir / "grid_agent_log.csv")
    assert sorted(log["transformer_id"]) == ["T1", "T2"]
    assert (log["cycle"] == 1).all()


async def test_scenario_rates_its_transformers(tmp_path, make_feeder):
    scenario = tmp_path / "feeder.toml"
    scenario.write_text('name = "test"\n[[transformers]]\nid = "T1"\nrating_kw = 40.0\n', encoding="utf-8")
    feeder = await make_feeder(grid={"scenario": scenario})
    t = transformer(await feeder.coordinate())
    assert t["rating_kw"] == 40.0
    assert t["state_before"] == "normal"


# -- auth ----------------------------------------------------------------------------------------
async def test_token_guards_coordinate_and_registration(monkeypatch, make_feeder):
    monkeypatch.setenv("AGENT_TOKEN", TOKEN)
    feeder = await make_feeder()  # registers with the token
    assert set(await feeder.agents()) == {HOME_ID, BATTERY_ID}
    status = await feeder.device_status(HOME_ID)
    for headers in ({}, bearer("wrong")):
        for response in (
            await feeder.client.post("/coordinate", headers=headers),
            await feeder.client.post(
                f"/agents/{HOME_ID}/status", json={"url": "http://home_1", "status": status}, headers=headers
            ),
        ):
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
            assert TOKEN not in response.text
    for path in ("/", "/health", "/status", "/agents", "/openapi.json"):
        assert (await feeder.client.get(path)).status_code == 200
    assert (await feeder.client.get("/status")).json()["cycles"] == 0
    result = await feeder.coordinate()  # with the token; the grid agent passes it on to the devices
    assert result["unreachable"] == []
    assert transformer(result)["state_after"] == "normal"
    assert result["actions"][0]["status"] == "applied"


# -- a grid agent on its own ---------------------------------------------------------------------
async def test_grid_agent_calls_agents_at_their_registered_url(tmp_path):
    seen: list[str] = []

    def agent(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/site/health":  # the registration's probe
            return httpx.Response(200, json={"status": "ok", "agent_id": "home_5", "agent_type": "home"})
        seen.append(str(request.url))
        return httpx.Response(503)

    app = create_app(make_grid_settings(tmp_path), transport=HostRouter({"elsewhere": httpx.MockTransport(agent)}))
    async with running(app) as c:
        status = {
            "agent_id": "home_5",
            "agent_type": "home",
            "transformer_id": "T1",
            "step": 0,
            "timestamp": None,
            "step_s": 900,
            "net_power_kw": 0,
        }
        assert (
            await c.post("/agents/home_5/status", json={"url": "http://elsewhere:9999/site", "status": status})
        ).status_code == 200
        result = (await c.post("/coordinate")).json()
    assert seen == ["http://elsewhere:9999/site/simulate"]
    assert result["unreachable"] == ["home_5"]


@pytest.mark.parametrize("path", ["/metrics", "/dashboard"])
async def test_metrics_and_dashboard_are_served(feeder, path):
    assert (await feeder.client.get(path)).status_code == 200
