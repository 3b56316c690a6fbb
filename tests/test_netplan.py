"""Planners that see the network: sensitivities against AC power flows, and cycles that only they fix."""

from __future__ import annotations

import pytest

pytest.importorskip("pandapower", reason="--network needs pandapower: pip install -r requirements.txt")

import httpx
import numpy as np
from asgi_lifespan import LifespanManager

from agents.battery import create_app as create_battery_app
from agents.cycle.network import NetworkMonitor
from agents.grid import create_app as create_grid_app
from agents.home import create_app as create_home_app
from agents.network.feeder import network_feeder
from agents.network.load import load_network
from agents.network.powerflow import PowerFlow
from agents.network.sensitivity import SensitivityCache, sensitivities
from models.schemas import AgentReport
from tests.conftest import HostRouter, make_battery_settings, make_grid_settings, make_home_settings
from tests.test_network import RURAL1, RURAL1_PEAK_PV, peak_injections

SEMIURB4 = "1-LV-semiurb4--2-sw"
SEMIURB4_NOON = "2016-05-24T12:00"
#: Sensitivities against a perturbed AC power flow (1 kW at one bus), relative to the largest entry of each matrix
#: (at peak PV on rural1 the largest d vm / d p is 3.7e-4 p.u./kW).
SENSITIVITY_RTOL = 1e-3


@pytest.fixture(scope="module")
def networks():
    return {code: load_network(code) for code in (RURAL1, SEMIURB4)}


# -- sensitivities -----------------------------------------------------------------------------------
def test_sensitivities_match_perturbed_ac_power_flows(networks):
    net = networks[RURAL1].net
    flow = PowerFlow(net)
    p_kw, q_kvar = peak_injections(net)
    columns = np.flatnonzero(p_kw != 0)
    sens = sensitivities(flow, p_kw, q_kvar, columns)
    base = flow.solve(p_kw, q_kvar)
    for c, k in enumerate(columns):
        for step_kw in (1.0, -1.0):  # a forward step of 1 kW: about 5e-4 off, its own curvature
            moved = p_kw.copy()
            moved[k] += step_kw
            ac = flow.solve(moved, q_kvar)
            for got, now, s in (
                (ac.vm_pu, base.vm_pu, sens.vm),
                (ac.line_loading_percent, base.line_loading_percent, sens.line),
                (ac.trafo_loading_percent, base.trafo_loading_percent, sens.trafo),
            ):
                scale = np.abs(s).max()
                np.testing.assert_allclose((got - now) / step_kw, s[:, c], atol=SENSITIVITY_RTOL * scale, rtol=0)
    # voltage rises where power is exported: d vm / d p < 0 at every bus below the transformer
    assert (sens.vm[1:] <= 0).all()


def test_sensitivity_cache_reuses_until_the_injections_move(networks):
    net = networks[RURAL1].net
    p_kw, q_kvar = peak_injections(net)
    cache = SensitivityCache(PowerFlow(net), threshold_kw=5.0)
    columns = np.flatnonzero(p_kw != 0)
    first = cache.get(p_kw, q_kvar, columns)
    assert cache.get(p_kw + 1.0, q_kvar, columns) is first and cache.refreshes == 1
    assert cache.get(p_kw + 6.0, q_kvar, columns) is not first and cache.refreshes == 2


# -- cycles on a network ----------------------------------------------------------------------------------------
async def run_cycle(tmp_path, network, start: str, *, storage: bool = True, **grid) -> dict:
    """One cycle of ``network``'s feeder from ``start``, in process; answers the cycle's result with GET /status's.

    ``storage=False`` registers the homes only: the feeder's battery agents then take no part.
    """
    feeder = network_feeder(network, tmp_path / "network")
    path = tmp_path / "feeder.toml"
    path.write_text(feeder.scenario.to_toml(), encoding="utf-8")
    homes = create_home_app(make_home_settings(tmp_path, scenario=path, start=start), register=False)
    batteries = create_battery_app(make_battery_settings(tmp_path, scenario=path, start=start), register=False)
    router = HostRouter({"homes": httpx.ASGITransport(app=homes), "storage": httpx.ASGITransport(app=batteries)})
    grid_app = create_grid_app(make_grid_settings(tmp_path, network=network.source, **grid), transport=router)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid")
    async with LifespanManager(homes), LifespanManager(batteries), LifespanManager(grid_app), client as c:
        reports = [
            AgentReport(url=f"http://{host}/agents/{a.agent_id}", batch_url=f"http://{host}", status=a.status())
            for host, app in (("homes", homes), ("storage", batteries))
            for a in app.state.agents.values()
            if storage or host == "homes"
        ]
        await c.post("/registrations", json={"reports": [r.model_dump(mode="json") for r in reports]})
        response = await c.post("/coordinate")
        assert response.status_code == 200, response.text
        return {**response.json(), "status": (await c.get("/status")).json()}


def outside_after(report: dict) -> tuple[int, int, int]:
    return report["buses_outside_after"], report["lines_outside_after"], report["transformers_outside_after"]


async def test_optimal_at_peak_pv_leaves_nothing_outside_limits(networks, tmp_path):
    result = await run_cycle(tmp_path, networks[RURAL1], RURAL1_PEAK_PV, planner="optimal")
    report = result["network"]
    assert report["transformers_outside_before"] == 1  # uncoordinated, the PV breaks the transformer's rating
    assert outside_after(report) == (0, 0, 0)
    assert report["transformer_loading_max_percent_after"] <= 100.0


@pytest.mark.parametrize("planner", ["optimal", "rule", "mpc"])
async def test_voltage_only_violation_is_fixed(networks, tmp_path, planner):
    result = await run_cycle(
        tmp_path, networks[SEMIURB4], SEMIURB4_NOON, storage=False, planner=planner, slack_vm_pu=1.045, vm_max_pu=1.05
    )  # the homes only: the feeder's batteries would charge at noon and hold the voltage down by themselves
    report = result["network"]
    # only the voltage limit is broken: lines and the transformer are far from theirs
    assert report["buses_outside_before"] > 0 and report["vm_max_pu_before"] > 1.05  # 1.052
    assert report["lines_outside_before"] == 0 and report["line_loading_max_percent_before"] < 50  # 32 %
    assert report["transformers_outside_before"] == 0 and report["transformer_loading_max_percent_before"] < 20  # 8 %
    assert all(t["state_before"] == "normal" for t in result["transformers"])  # kW sums see nothing wrong
    assert outside_after(report) == (0, 0, 0)
    assert report["vm_max_pu_after"] <= 1.05


@pytest.mark.parametrize("planner", ["optimal", "rule", "mpc"])
async def test_a_plan_the_ac_check_finds_short_is_made_once_more(networks, tmp_path, monkeypatch, planner):
    view = NetworkMonitor.view

    def blind_before_planning(self, statuses, solved=None):  # the first plan sees no network: kW sums only
        return view(self, statuses, solved) if solved is not None else None

    monkeypatch.setattr(NetworkMonitor, "view", blind_before_planning)
    result = await run_cycle(
        tmp_path, networks[SEMIURB4], SEMIURB4_NOON, storage=False, planner=planner, slack_vm_pu=1.045, vm_max_pu=1.05
    )
    report = result["network"]
    assert report["buses_outside_before"] > 0 and report["constraint_rows"] == 0
    assert report["replanned"] is True and report["replans"] == 1 and result["status"]["network_replans"] == 1
    assert outside_after(report) == (0, 0, 0)
    assert result["actions"] and all(a["status"] == "applied" for a in result["actions"])


async def test_no_replan_when_the_first_plan_holds(networks, tmp_path):
    result = await run_cycle(
        tmp_path, networks[SEMIURB4], SEMIURB4_NOON, storage=False, planner="optimal", slack_vm_pu=1.045, vm_max_pu=1.05
    )
    report = result["network"]
    assert report["constraint_rows"] > 0 and report["sensitivity_refreshes"] == 1
    assert report["replanned"] is False and result["status"]["network_replans"] == 0
