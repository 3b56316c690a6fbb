"""The grid agent's dashboard in process: the page, plotly.js served offline, and the JSON feed."""

from __future__ import annotations

import re

import pytest
from pytest import approx

from agents.cycle.dashboard import plotly_bundle
from agents.cycle.history import CycleHistory
from tests.conftest import BATTERY_ID, HOME_ID

#: Attributes and CSS through which a page could load something.
LOADS = re.compile(
    r"""(?:src|href|action|poster|data)\s*=\s*["']?([^"'\s>]+)|url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)""",
    re.IGNORECASE,
)


async def test_dashboard_page_loads_nothing_from_elsewhere(feeder):
    response = await feeder.client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html.lower()
    targets = [next(g for g in m.groups() if g) for m in LOADS.finditer(html)]
    assert "dashboard/plotly.min.js" in targets
    for target in targets:
        assert not re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", target, re.IGNORECASE), f"{target} points to another host"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy


async def test_dashboard_page_has_ids_for_the_live_numbers(feeder):
    html = (await feeder.client.get("/dashboard")).text
    for element_id in (
        "cycle",
        "sim-time",
        "planner",
        "agents-healthy",
        "fallback-reason",
        "actions",
        "agents",
        "soc-chart",
    ):
        assert f'id="{element_id}"' in html
    assert '"loading-" + tid' in html  # one live loading figure per transformer, id="loading-T1"


async def test_plotly_js_comes_from_the_installed_package_and_is_cached(feeder):
    first = await feeder.client.get("/dashboard/plotly.min.js")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/javascript")
    assert len(first.content) > 1_000_000
    assert b"plotly" in first.content[:2000].lower()
    body, etag = plotly_bundle()
    assert body is plotly_bundle()[0]  # read once, kept in memory
    assert first.headers["etag"] == etag
    again = await feeder.client.get("/dashboard/plotly.min.js", headers={"If-None-Match": etag})
    assert again.status_code == 304


async def test_dashboard_data_matches_status(feeder):
    results = [await feeder.coordinate() for _ in range(3)]
    data = (await feeder.client.get("/dashboard/data")).json()
    status = (await feeder.client.get("/status")).json()
    assert data["cycle"] == status["last_cycle"]["cycle"] == 3
    assert data["transformers"] == status["transformers"]
    assert data["last_cycle"]["actions"] == results[-1]["actions"]
    assert [row["cycle"] for row in data["history"]] == [1, 2, 3]
    for row, result in zip(data["history"], results, strict=True):
        (t,) = result["transformers"]
        assert row["transformers"]["T1"] == {
            "loading_before_kw": approx(t["loading_before_kw"]),
            "loading_after_kw": approx(t["loading_after_kw"]),
            "rating_kw": t["rating_kw"],
            "reverse_limit_kw": t["reverse_limit_kw"],
            "state_after": t["state_after"],
        }
    agents = {a["agent_id"]: a for a in data["agents"]}
    assert set(agents) == {HOME_ID, BATTERY_ID}
    battery = await feeder.device_status(BATTERY_ID)
    assert agents[BATTERY_ID]["soc_fraction"] == approx(battery["battery"]["soc_fraction"])
    assert agents[BATTERY_ID]["net_power_kw"] == approx(battery["net_power_kw"])
    assert data["history"][-1]["soc_fraction"][BATTERY_ID] == approx(battery["battery"]["soc_fraction"])
    assert data["soc_agents"][0] == BATTERY_ID  # storage first, then homes


async def test_dashboard_data_sends_only_new_cycles_of_the_same_run(feeder):
    for _ in range(3):
        await feeder.coordinate()
    run = (await feeder.client.get("/dashboard/data")).json()["run_id"]
    newer = (await feeder.client.get("/dashboard/data", params={"since": 2, "run": run})).json()
    assert [row["cycle"] for row in newer["history"]] == [3]
    other_run = (await feeder.client.get("/dashboard/data", params={"since": 2, "run": "another"})).json()
    assert [row["cycle"] for row in other_run["history"]] == [1, 2, 3]
    ahead = (await feeder.client.get("/dashboard/data", params={"since": 99, "run": run})).json()
    assert len(ahead["history"]) == 3  # a page ahead of this grid agent has seen another one: start over


@pytest.mark.parametrize("since", ["-1", "x"])
async def test_dashboard_data_refuses_a_bad_since(feeder, since):
    response = await feeder.client.get("/dashboard/data", params={"since": since})
    assert response.status_code == 422
    assert "since" in {d["field"] for d in response.json()["detail"]}


async def test_dashboard_data_before_any_cycle(feeder):
    data = (await feeder.client.get("/dashboard/data")).json()
    assert data["cycle"] == 0
    assert data["history"] == []
    assert data["last_cycle"] is None
    assert len(data["agents"]) == 2


async def test_dashboard_data_shows_the_fallback_reason(make_feeder):
    feeder = await make_feeder(grid={"planner": "ai"})  # no key: the optimal plan is used, with the reason
    result = await feeder.coordinate()
    data = (await feeder.client.get("/dashboard/data")).json()
    assert data["last_cycle"]["fallback_reason"] == result["fallback_reason"] == "OPENAI_API_KEY is not set"
    assert data["last_cycle"]["planner"] == "optimal"
    assert data["ai"]["fallbacks"] == 1
    assert data["history"][0]["fallback"] is True


def test_cycle_history_is_bounded():
    from models.schemas import CoordinationResult

    history = CycleHistory(limit=5)
    for cycle in range(1, 9):
        history.append(
            CoordinationResult(
                cycle=cycle,
                timestamp=None,
                planner="rule",
                transformers=[],
                actions=[],
                unreachable=[],
                agents_stepped=0,
                duration_ms=1.0,
                phase_ms={},
            ),
            [],
        )
    assert [row["cycle"] for row in history.since(0)] == [4, 5, 6, 7, 8]
    assert [row["cycle"] for row in history.since(6)] == [7, 8]


def test_soc_series_are_storage_first_then_homes_and_stay_the_same_once_chosen():
    from datetime import UTC, datetime

    from models.schemas import AgentRecord, AgentStatus, AgentType, BatteryStatus, CoordinationResult

    def record(agent_id: str, kind: AgentType, soc: float) -> AgentRecord:
        battery = BatteryStatus(
            soc_fraction=soc, power_kw=0.0, capacity_kwh=10.0, max_charge_kw=5.0, max_discharge_kw=5.0,
            soc_min_fraction=0.1, soc_max_fraction=0.9,
        )  # fmt: skip
        status = AgentStatus(
            agent_id=agent_id, agent_type=kind, transformer_id="T1", step=1, timestamp=None, step_s=900.0,
            net_power_kw=0.0, battery=battery,
        )  # fmt: skip
        return AgentRecord(
            agent_id=agent_id, agent_type=kind, url="http://x", transformer_id="T1", healthy=True,
            last_seen=datetime.now(UTC), last_status=status,
        )  # fmt: skip

    def result(cycle: int) -> CoordinationResult:
        return CoordinationResult(
            cycle=cycle, timestamp=None, planner="rule", transformers=[], actions=[], unreachable=[],
            agents_stepped=0, duration_ms=1.0, phase_ms={},
        )  # fmt: skip

    history = CycleHistory(soc_series_limit=3)
    homes = [record(f"home_{i}", AgentType.home, i / 10) for i in (3, 1, 2)]
    history.append(result(1), [*homes, record("store", AgentType.battery, 0.5)])
    assert history.soc_agents == ["store", "home_1", "home_2"]
    later = [record("home_0", AgentType.home, 0.9), *homes, record("store", AgentType.battery, 0.6)]
    history.append(result(2), later)  # the series are full: a new home joins none
    assert history.soc_agents == ["store", "home_1", "home_2"]
    assert list(history.since(1)[0]["soc_fraction"].items()) == [("store", 0.6), ("home_1", 0.1), ("home_2", 0.2)]


async def test_dashboard_data_without_a_network_has_none(feeder):
    await feeder.coordinate()
    data = (await feeder.client.get("/dashboard/data")).json()
    assert data["network"] is None and data["history"][0]["network"] is None
