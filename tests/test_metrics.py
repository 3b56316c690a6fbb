"""GET /metrics on every agent, parsed with prometheus-client's own parser, after real cycles in process."""

from __future__ import annotations

import math

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest import approx

from agents.common.metrics import GridMetrics, peer_error_kind
from agents.grid import create_app as create_grid_app
from models.schemas import CoordinationResult, FallbackKind
from tests.conftest import BATTERY_ID, HOME_ID, make_grid_settings, running

SUMMER_EVENING = "2025-07-15T17:00"


def scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of a Prometheus text page by sample name: [(labels, value), ...]."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for have, v in samples.get(name, []) if labels.items() <= have.items()]
    assert len(found) == 1, f"{name}{labels}: {samples.get(name)}"
    return found[0]


def families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


async def get_metrics(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


# -- the grid agent ------------------------------------------------------------------------------
async def test_grid_metrics_after_cycles(feeder):
    results = [await feeder.coordinate() for _ in range(3)]
    text = await get_metrics(feeder.client)
    kinds = families(text)
    assert kinds["ems_cycle_duration_seconds"] == "histogram"
    assert kinds["ems_transformer_loading_kw"] == "gauge"
    assert kinds["ems_commands"] == "counter"
    assert kinds["ems_planner_fallbacks"] == "counter"
    assert kinds["ems_peer_errors"] == "counter"
    s = scrape(text)

    assert value(s, "ems_cycle_duration_seconds_count") == 3
    assert value(s, "ems_cycle_duration_seconds_sum") == approx(sum(r["duration_ms"] for r in results) / 1000)
    assert value(s, "ems_cycle_duration_seconds_bucket", le="+Inf") == 3
    assert value(s, "ems_cycles_total", planner="optimal") == 3

    status = (await feeder.client.get("/status")).json()
    for t in status["transformers"]:
        tid = t["transformer_id"]
        assert value(s, "ems_transformer_loading_kw", transformer_id=tid) == approx(t["loading_after_kw"])
        assert value(s, "ems_transformer_loading_before_kw", transformer_id=tid) == approx(t["loading_before_kw"])
        assert value(s, "ems_transformer_rating_kw", transformer_id=tid) == approx(t["rating_kw"])
        assert value(s, "ems_transformer_reverse_limit_kw", transformer_id=tid) == approx(t["reverse_limit_kw"])
        outside_before = sum(
            x["state_before"] != "normal" for r in results for x in r["transformers"] if x["transformer_id"] == tid
        )
        assert value(s, "ems_transformer_outside_limits_total", transformer_id=tid, when="before") == outside_before

    actions = [a for r in results for a in r["actions"]]
    assert actions, "the shipped data overloads T1 from the first cycle"
    assert sum(v for _, v in s["ems_commands_total"]) == len(actions)
    for a in actions:
        expected = sum(b["action"] == a["action"] and b["status"] == a["status"] for b in actions)
        assert value(s, "ems_commands_total", action=a["action"], status=a["status"]) == expected

    assert value(s, "ems_agents_registered") == 2
    assert value(s, "ems_agents_healthy") == 2
    assert value(s, "ems_agent_up", agent_id=HOME_ID, agent_type="home", transformer_id="T1") == 1
    assert "ems_peer_errors_total" not in s  # no peer failed


async def test_peer_errors_are_counted_by_agent_and_kind(feeder):
    feeder.router.take_down(HOME_ID)
    result = await feeder.coordinate()
    assert result["unreachable"] == [HOME_ID]
    s = scrape(await get_metrics(feeder.client))
    assert value(s, "ems_peer_errors_total", peer=HOME_ID, kind="connect") == 1
    assert value(s, "ems_agent_up", agent_id=HOME_ID) == 0
    assert value(s, "ems_agents_healthy") == 1
    assert not [labels for labels, _ in s["ems_peer_errors_total"] if labels["peer"] == BATTERY_ID]


async def test_planner_fallbacks_are_counted_by_kind(make_feeder):
    feeder = await make_feeder(grid={"planner": "ai"})  # no OPENAI_API_KEY here: every troubled cycle falls back
    results = [await feeder.coordinate() for _ in range(2)]
    fallbacks = [r for r in results if r["fallback_reason"]]
    assert fallbacks
    assert {r["fallback_kind"] for r in fallbacks} == {"missing_key"}
    s = scrape(await get_metrics(feeder.client))
    assert value(s, "ems_planner_fallbacks_total", kind="missing_key") == len(fallbacks)
    assert value(s, "ems_cycles_total", planner="optimal") == len(fallbacks)


async def test_each_grid_app_has_its_own_registry(feeder, tmp_path):
    await feeder.coordinate()
    other = create_grid_app(make_grid_settings(tmp_path / "other"))
    async with running(other) as client:
        s = scrape(await get_metrics(client))
    assert value(s, "ems_cycle_duration_seconds_count") == 0
    assert "ems_transformer_loading_kw" not in s
    assert not [m for m in prometheus_client.REGISTRY.collect() if m.name.startswith("ems_")]


async def test_metrics_answer_openmetrics_when_asked(feeder):
    await feeder.coordinate()
    response = await feeder.client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


# -- home and battery agents ---------------------------------------------------------------------
async def test_device_metrics_count_commands_and_show_state(feeder):
    results = [await feeder.coordinate() for _ in range(2)]
    for agent_id in (HOME_ID, BATTERY_ID):
        s = scrape(await get_metrics(feeder.devices[agent_id]))
        status = await feeder.device_status(agent_id)
        mine = [a for r in results for a in r["actions"] if a["agent_id"] == agent_id]
        assert sum(v for _, v in s.get("ems_commands_total", [])) == len(mine)
        for a in mine:
            assert value(s, "ems_commands_total", action=a["action"], status=a["status"]) >= 1
        assert value(s, "ems_agent_info", agent_id=agent_id, transformer_id="T1") == 1
        assert value(s, "ems_agent_step") == status["step"] == 2
        assert value(s, "ems_agent_net_power_kw") == approx(status["net_power_kw"])
        assert value(s, "ems_battery_soc_fraction") == approx(status["battery"]["soc_fraction"])


async def test_device_metrics_count_a_duplicate_and_a_rejection(feeder):
    home = feeder.devices[HOME_ID]
    await home.post("/simulate")
    body = {"command_id": "metrics-1", "action": "shed_load", "power_kw": 0.01}
    assert (await home.post("/curtail", json=body)).json()["status"] == "applied"
    assert (await home.post("/curtail", json=body)).json()["status"] == "duplicate"
    battery = feeder.devices[BATTERY_ID]
    await battery.post("/simulate")
    refused = await battery.post(
        "/curtail", json={"command_id": "metrics-2", "action": "curtail_solar", "power_kw": 1.0}
    )
    assert refused.json()["status"] == "rejected"
    s = scrape(await get_metrics(home))
    assert value(s, "ems_commands_total", action="shed_load", status="applied") == 1
    assert value(s, "ems_commands_total", action="shed_load", status="duplicate") == 1
    s = scrape(await get_metrics(battery))
    assert value(s, "ems_commands_total", action="curtail_solar", status="rejected") == 1


# -- the labels ----------------------------------------------------------------------------------
def cycle_result(kind: FallbackKind | None) -> CoordinationResult:
    """A cycle with no transformers whose plan fell back (or not) for ``kind``."""
    return CoordinationResult(
        cycle=1,
        timestamp=None,
        planner="optimal" if kind else "ai",
        fallback_reason=f"in words: {kind.value}" if kind else None,
        fallback_kind=kind,
        transformers=[],
        actions=[],
        unreachable=[],
        agents_stepped=0,
        duration_ms=1.0,
        phase_ms={"step": 0.3, "plan": 0.3, "act": 0.4},
    )


def test_fallbacks_are_labelled_by_the_kind_the_cycle_carries():
    metrics = GridMetrics(lambda: [])
    for kind in (FallbackKind.timeout, FallbackKind.timeout, FallbackKind.bad_json, None):
        metrics.observe_cycle(cycle_result(kind))
    s = scrape(prometheus_client.generate_latest(metrics.registry).decode())
    assert value(s, "ems_planner_fallbacks_total", kind="timeout") == 2
    assert value(s, "ems_planner_fallbacks_total", kind="bad_json") == 1
    assert {labels["kind"] for labels, _ in s["ems_planner_fallbacks_total"]} == {"timeout", "bad_json"}
    assert value(s, "ems_cycles_total", planner="optimal") == 3


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "connect"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (
            httpx.HTTPStatusError("503", request=httpx.Request("POST", "http://x"), response=httpx.Response(503)),
            "http_status",
        ),
        (ValueError("answered as home_2"), "invalid_answer"),
        (RuntimeError("?"), "other"),
    ],
)
def test_peer_error_kind(exc, kind):
    assert peer_error_kind(exc) == kind


# -- with a network ------------------------------------------------------------------------------
async def test_network_metrics_follow_the_cycle_before_and_after(tmp_path, monkeypatch):
    pytest.importorskip("pandapower", reason="--network needs pandapower: pip install -r requirements.txt")
    from agents.network.load import load_network
    from agents.network.powerflow import PowerFlow, PowerFlowError
    from tests.test_network import RURAL1, network_grid

    # a tight upper limit at LV buses, so that the uncoordinated noon breaks voltage limits too
    async with network_grid(tmp_path, load_network(RURAL1), planner="rule", vm_max_pu=1.03) as client:
        start = scrape(await get_metrics(client))
        assert value(start, "ems_network_powerflow_failures_total", when="before") == 0
        assert value(start, "ems_network_replans_total") == 0
        result = (await client.post("/coordinate")).json()
        s = scrape(await get_metrics(client))
        network = result["network"]
        for when in ("before", "after"):
            assert value(s, "ems_network_bus_voltage_min_pu", when=when) == approx(network[f"vm_min_pu_{when}"])
            assert value(s, "ems_network_bus_voltage_max_pu", when=when) == approx(network[f"vm_max_pu_{when}"])
            assert value(s, "ems_network_line_loading_max_percent", when=when) == approx(
                network[f"line_loading_max_percent_{when}"]
            )
            assert value(s, "ems_network_transformer_loading_max_percent", when=when) == approx(
                network[f"transformer_loading_max_percent_{when}"]
            )
            assert value(s, "ems_network_buses_outside_limits", when=when) == network[f"buses_outside_{when}"]
            assert value(s, "ems_network_lines_outside_limits", when=when) == network[f"lines_outside_{when}"]
        assert value(s, "ems_network_buses_outside_limits", when="before") > 0
        assert value(s, "ems_network_replans_total") == (1 if network["replanned"] else 0)

        def diverge(self, p_kw, q_kvar):
            raise PowerFlowError("Iteration failed to converge after 30 iterations")

        monkeypatch.setattr(PowerFlow, "solve", diverge)
        assert (await client.post("/coordinate")).json()["network"]["converged"] is False
        s = scrape(await get_metrics(client))
    assert value(s, "ems_network_powerflow_failures_total", when="before") == 1
    assert value(s, "ems_network_powerflow_failures_total", when="after") == 1
    assert math.isnan(value(s, "ems_network_bus_voltage_max_pu", when="after"))


async def test_no_network_metrics_without_a_network(feeder):
    await feeder.coordinate()
    assert not any(name.startswith("ems_network") for name in families(await get_metrics(feeder.client)))
