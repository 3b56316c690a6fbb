"""The network (``--network``): loading and checking it, homes from it, the AC power flow, and a cycle on it.

The three SimBench grids take seconds each to load, so they are loaded once per module (load_network caches
them for the process, too).
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import warnings
from pathlib import Path

import pytest

# without requirements.txt's pandapower (an environment on pandas 3), skip these rather than fail collection
pytest.importorskip("pandapower", reason="--network needs pandapower: pip install -r requirements.txt")

import httpx
import numpy as np
import pandapower as pp
import pandas as pd
import simbench
from asgi_lifespan import LifespanManager

from agents.battery import create_app as create_battery_app
from agents.common.scenario import load_scenario
from agents.common.settings import StartupError
from agents.cycle.grid_agent import GridAgent
from agents.cycle.network import NetworkMonitor
from agents.grid import create_app as create_grid_app
from agents.home import create_app as create_home_app
from agents.network.feeder import network_feeder, prepare_network_run
from agents.network.load import load_network
from agents.network.powerflow import PowerFlow, PowerFlowError
from agents.network.sensitivity import sensitivities
from models.schemas import AgentReport
from tests.conftest import HostRouter, make_battery_settings, make_grid_settings, make_home_settings
from tests.test_e2e import ROOT, child_env, coordinator_command, free_port_block

LV_GRIDS = ["1-LV-rural1--2-sw", "1-LV-semiurb4--0-sw", "1-LV-rural3--2-sw"]
RURAL1 = "1-LV-rural1--2-sw"
#: The step of 2016 with the most PV surplus on 1-LV-rural1--2-sw (export of some 237 kW through a 160 kVA
#: transformer when no one coordinates).
RURAL1_PEAK_PV = "2016-05-20T12:00"
VOLTAGE_TOLERANCE_PU = 1e-4


@pytest.fixture(scope="module")
def lv_networks():
    """The three example LV grids, loaded once."""
    return {code: load_network(code) for code in LV_GRIDS}


def small_net(*, trafo: bool = True) -> pp.pandapowerNet:
    """A 20 kV external grid, a 0.4 MVA transformer and a 0.4 kV cable to one house with a load and PV."""
    net = pp.create_empty_network(name="small")
    mv = pp.create_bus(net, 20.0, name="MV")
    lv = pp.create_bus(net, 0.4, name="LV busbar")
    house = pp.create_bus(net, 0.4, name="House")
    roof = pp.create_bus(net, 0.4, name="Roof only")
    pp.create_ext_grid(net, mv, vm_pu=1.02)
    if trafo:
        pp.create_transformer(net, mv, lv, std_type="0.4 MVA 20/0.4 kV", name="T small")
    else:
        pp.create_line(net, mv, lv, 0.1, std_type="NAYY 4x150 SE")
    pp.create_line(net, lv, house, 0.2, std_type="NAYY 4x150 SE", name="Cable")
    pp.create_line(net, lv, roof, 0.1, std_type="NAYY 4x150 SE", name="Roof cable")
    pp.create_load(net, house, p_mw=0.004, q_mvar=0.001, name="House load")
    pp.create_sgen(net, house, p_mw=0.008, sn_mva=0.01, name="House PV", type="PV")
    pp.create_sgen(net, roof, p_mw=0.02, sn_mva=0.025, name="Barn PV", type="PV")
    pp.create_sgen(net, roof, p_mw=0.5, name="Wind", type="Wind_MV")
    return net


def write_net(tmp_path: Path, net: pp.pandapowerNet, name: str = "net.json") -> Path:
    path = tmp_path / name
    pp.to_json(net, str(path))
    return path


def pandapower_reference(net: pp.pandapowerNet, p_kw: np.ndarray, q_kvar: np.ndarray) -> pp.pandapowerNet:
    """The same injections in pandapower: the network's own injections replaced by one load per bus."""
    ref = copy.deepcopy(net)
    for table in ("load", "sgen", "storage"):
        ref[table] = ref[table].iloc[0:0]
    for bus, p, q in zip(ref.bus.index, p_kw, q_kvar, strict=True):
        pp.create_load(ref, bus, p_mw=p / 1e3, q_mvar=q / 1e3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(ref, numba=False, calculate_voltage_angles=True, trafo_loading="power", tolerance_mva=1e-10)
    return ref


def peak_injections(net: pp.pandapowerNet) -> tuple[np.ndarray, np.ndarray]:
    """Per-bus p and q (kW, kvar, load convention) at the step of the year with the most PV."""
    absolute = simbench.get_absolute_values(net, profiles_instead_of_study_cases=True)
    load_p, load_q, sgen_p = absolute[("load", "p_mw")], absolute[("load", "q_mvar")], absolute[("sgen", "p_mw")]
    step = int(sgen_p.sum(axis=1).to_numpy().argmax())
    p = np.zeros(len(net.bus))
    q = np.zeros(len(net.bus))
    position = {bus: k for k, bus in enumerate(net.bus.index)}
    for table, values, sign, target in ((net.load, load_p, 1, p), (net.load, load_q, 1, q), (net.sgen, sgen_p, -1, p)):
        for element, value in values.iloc[step].items():
            target[position[table.at[element, "bus"]]] += sign * value * 1e3
    return p, q


# -- the power flow agrees with pandapower ---------------------------------------------------------
@pytest.mark.parametrize("code", LV_GRIDS)
@pytest.mark.parametrize("injections", ["peak_pv", "random"])
def test_powerflow_matches_pandapower_runpp(lv_networks, code, injections):
    net = lv_networks[code].net
    if injections == "peak_pv":
        p_kw, q_kvar = peak_injections(net)
    else:
        rng = np.random.default_rng(7)
        p_kw, q_kvar = rng.uniform(-12.0, 8.0, len(net.bus)), rng.uniform(-1.0, 3.0, len(net.bus))
    result = PowerFlow(net).solve(p_kw, q_kvar)
    ref = pandapower_reference(net, p_kw, q_kvar)
    np.testing.assert_allclose(result.vm_pu, ref.res_bus.vm_pu.to_numpy(), atol=VOLTAGE_TOLERANCE_PU, rtol=0)
    np.testing.assert_allclose(result.line_loading_percent, ref.res_line.loading_percent.to_numpy(), atol=0.01)
    np.testing.assert_allclose(result.trafo_loading_percent, ref.res_trafo.loading_percent.to_numpy(), atol=0.01)
    np.testing.assert_allclose(result.trafo_p_kw, ref.res_trafo.p_hv_mw.to_numpy() * 1e3, atol=0.05)


def test_powerflow_slack_voltage_override(lv_networks):
    net = lv_networks[RURAL1].net
    zero = np.zeros(len(net.bus))
    assert np.nanmax(PowerFlow(net).solve(zero, zero).vm_pu) == pytest.approx(1.025, abs=1e-4)  # the network's own
    assert np.nanmax(PowerFlow(net, slack_vm_pu=1.0).solve(zero, zero).vm_pu) == pytest.approx(1.0, abs=1e-4)


def test_powerflow_that_cannot_converge_raises_its_own_error(lv_networks):
    net = lv_networks[RURAL1].net
    p_kw = np.zeros(len(net.bus))
    p_kw[-1] = 1e6  # a gigawatt at the end of a rural cable
    with pytest.raises(PowerFlowError):
        PowerFlow(net).solve(p_kw, np.zeros(len(net.bus)))


# -- loading and checking ----------------------------------------------------------------------------
def test_load_network_prepares_simbench_transformers(lv_networks):
    trafo = lv_networks[RURAL1].net.trafo
    assert trafo["vector_group"].tolist() == ["Dyn5"]  # SimBench leaves it empty; its shift is 150 degrees
    assert trafo["tap_changer_type"].tolist() == ["Ratio"]  # so that pandapower applies the tap, as PGM does
    assert lv_networks[RURAL1].transformer_ids == {0: "mv1_101_lv1_101_trafo_1"}


def test_unknown_simbench_code_names_the_closest():
    with pytest.raises(StartupError, match=r"1-LV-rural1--2-sx.*closest: 1-LV-rural1--2-sw"):
        load_network("1-LV-rural1--2-sx")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(StartupError, match="no such file"):
        load_network(str(tmp_path / "absent.json"))


@pytest.mark.parametrize("text", ["not json at all", json.dumps({"hello": "world"}), "[1, 2]"])
def test_file_that_is_not_a_pandapower_network(tmp_path, text):
    path = tmp_path / "bogus.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StartupError, match="not a pandapower network") as info:
        load_network(str(path))
    assert str(path) in str(info.value)


def test_network_without_transformer_is_refused(tmp_path):
    with pytest.raises(StartupError, match="no transformer"):
        load_network(str(write_net(tmp_path, small_net(trafo=False))))


def test_isolated_bus_is_refused(tmp_path):
    net = small_net()
    pp.create_bus(net, 0.4, name="Nowhere")
    with pytest.raises(StartupError, match=r"isolated bus\(es\) 4 \(Nowhere\)"):
        load_network(str(write_net(tmp_path, net)))


def test_load_on_missing_bus_is_refused(tmp_path):
    net = small_net()
    net.load.at[0, "bus"] = 99
    with pytest.raises(StartupError, match=r"load 0 \(House load\) on missing bus\(es\) 99"):
        load_network(str(write_net(tmp_path, net)))


def test_grid_agent_stops_at_start_on_a_bad_network(tmp_path):
    with pytest.raises(StartupError, match="1-LV-nowhere"):
        create_grid_app(make_grid_settings(tmp_path, network="1-LV-nowhere"))


# -- homes from the network ----------------------------------------------------------------------------
def test_network_feeder_rural1_homes_storage_and_profiles(lv_networks, tmp_path):
    network = lv_networks[RURAL1]
    feeder = network_feeder(network, tmp_path)
    homes, batteries = feeder.scenario.homes, feeder.scenario.batteries
    net = network.net
    assert [h.id for h in homes] == [f"lv1_101_load_{i}" for i in range(1, 29)]  # LV1.101 Load 3 -> lv1_101_load_3
    assert [b.id for b in batteries] == [f"lv1_101_storage_{i}" for i in range(1, 6)]
    assert {h.transformer for h in homes} == {"mv1_101_lv1_101_trafo_1"}
    assert [t.rating_kw for t in feeder.scenario.transformers] == [160.0]
    assert [h.bus for h in homes] == net.load["bus"].tolist()
    # PV goes to the first load at its bus: all 470 kWp of it, to eight homes
    with_pv = {h.bus: h.pv_kwp for h in homes if h.pv_kwp > 0}
    assert sum(with_pv.values()) == pytest.approx(net.sgen["sn_mva"].sum() * 1e3)
    assert with_pv[8] == pytest.approx(19.0) and homes[1].id == "lv1_101_load_2" and homes[1].pv_kwp == 19.0
    assert homes[13].bus == 8 and homes[13].pv_kwp == 0.0  # Load 14 shares bus 8 with Load 2
    values = np.load(feeder.homes_file)
    meta = json.loads(feeder.homes_file.with_suffix(".json").read_text())
    assert values.shape == (28, 3, 35_136) and values.dtype == np.float32
    assert (meta["start"], meta["step_s"]) == ("2016-01-01T00:00:00", 900.0)  # SimBench's 2016, quarter hours
    assert meta["columns"] == ["solar_kw", "load_kw", "load_kvar"]
    absolute = simbench.get_absolute_values(net, profiles_instead_of_study_cases=True)
    np.testing.assert_allclose(values[2, 1], absolute[("load", "p_mw")][2].to_numpy() * 1e3, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values[2, 2], absolute[("load", "q_mvar")][2].to_numpy() * 1e3, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values[1, 0], absolute[("sgen", "p_mw")][2].to_numpy() * 1e3, rtol=1e-6, atol=1e-6)
    assert batteries[0].capacity_kwh == pytest.approx(146.7) and batteries[0].power_kw == pytest.approx(73.4)


def test_network_feeder_pv_only_home_and_left_out_generators(tmp_path):
    path = write_net(tmp_path, small_net())
    feeder = prepare_network_run(str(path), tmp_path / "run")
    homes = {h.id: h for h in feeder.scenario.homes}
    assert set(homes) == {"house_load", "barn_pv"}  # the roof's PV has no load at its bus: a PV-only home
    assert homes["house_load"].pv_kwp == pytest.approx(10.0) and homes["barn_pv"].pv_kwp == pytest.approx(25.0)
    assert homes["barn_pv"].annual_load_kwh == 0.0
    assert {h.transformer for h in homes.values()} == {"t_small"}
    assert feeder.left_out == ["sgen 2 (Wind, Wind_MV)"]
    # a network without profiles holds its elements' values: 4 kW of load, 20 kW of PV
    values = np.load(feeder.homes_file)
    assert values[0, 1, 0] == pytest.approx(4.0) and values[1, 0, 0] == pytest.approx(20.0)
    assert load_network(str(feeder.network_file)).name == "small"


async def test_network_homes_host_from_their_profile_row(lv_networks, tmp_path):
    feeder = network_feeder(lv_networks[RURAL1], tmp_path / "network")
    scenario = tmp_path / "feeder.toml"
    scenario.write_text(feeder.scenario.to_toml(), encoding="utf-8")
    assert load_scenario(scenario) == feeder.scenario
    app = create_home_app(make_home_settings(tmp_path, scenario=scenario, start=RURAL1_PEAK_PV), register=False)
    async with LifespanManager(app):
        home = app.state.agents["lv1_101_load_2"]
        status = home.simulate()
    values = np.load(feeder.homes_file, mmap_mode="r")
    step = (np.datetime64(RURAL1_PEAK_PV) - np.datetime64("2016-01-01T00:00")) // np.timedelta64(15, "m")
    assert status.timestamp.isoformat(timespec="minutes") == RURAL1_PEAK_PV
    assert status.bus == 8
    assert status.solar.available_kw == pytest.approx(float(values[1, 0, step]), rel=1e-6)  # its own, not scaled
    assert status.load.demand_kw == pytest.approx(float(values[1, 1, step]), rel=1e-6)
    assert status.load.served_kvar == pytest.approx(float(values[1, 2, step]), rel=1e-6)


# -- a cycle on a network ------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def network_grid(tmp_path, network, **grid):
    """The rural1 feeder at peak PV, in process, its 33 agents registered: yields a client of the grid agent."""
    feeder = network_feeder(network, tmp_path / "network")
    path = tmp_path / "feeder.toml"
    path.write_text(feeder.scenario.to_toml(), encoding="utf-8")
    homes = create_home_app(make_home_settings(tmp_path, scenario=path, start=RURAL1_PEAK_PV), register=False)
    storage = create_battery_app(make_battery_settings(tmp_path, scenario=path, start=RURAL1_PEAK_PV), register=False)
    router = HostRouter({"homes": httpx.ASGITransport(app=homes), "storage": httpx.ASGITransport(app=storage)})
    grid_app = create_grid_app(make_grid_settings(tmp_path, network=network.source, **grid), transport=router)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid")
    async with LifespanManager(homes), LifespanManager(storage), LifespanManager(grid_app), client as c:
        reports = [
            AgentReport(url=f"http://{host}/agents/{a.agent_id}", batch_url=f"http://{host}", status=a.status())
            for host, app in (("homes", homes), ("storage", storage))
            for a in app.state.agents.values()
        ]
        body = {"reports": [r.model_dump(mode="json") for r in reports]}
        assert (await c.post("/registrations", json=body)).json()["registered"] == 33
        yield c


async def run_network_cycle(tmp_path, network, **grid):
    """One cycle of the rural1 feeder at peak PV, in process; answers (result, GET /network, GET /agents)."""
    async with network_grid(tmp_path, network, **grid) as c:
        response = await c.post("/coordinate")
        assert response.status_code == 200, response.text
        return response.json(), (await c.get("/network")).json(), (await c.get("/agents")).json()


async def test_cycle_at_peak_pv_breaks_a_limit_and_says_so(lv_networks, tmp_path):
    result, network, agents = await run_network_cycle(tmp_path, lv_networks[RURAL1], planner="rule")
    report = result["network"]
    assert report["converged"] is True and report["error"] is None
    assert report["agents_placed"] == 33 and report["agents_unplaced"] == []
    # uncoordinated, the PV pushes the 160 kVA transformer far past its rating, backwards
    assert report["transformers_outside_before"] == 1
    assert report["transformer_loading_max_percent_before"] > 130
    (transformer,) = result["transformers"]
    assert transformer["state_before"] == "reverse_power_flow"
    assert transformer["loading_percent_before"] == pytest.approx(report["transformer_loading_max_percent_before"])
    assert transformer["ac_power_kw_before"] < -200
    for field in (
        "vm_min_pu_before",
        "vm_max_pu_before",
        "vm_min_pu_after",
        "vm_max_pu_after",
        "line_loading_max_percent_before",
        "line_loading_max_percent_after",
        "buses_outside_before",
        "buses_outside_after",
        "lines_outside_before",
        "lines_outside_after",
    ):
        assert report[field] is not None, field
    assert report["vm_max_pu_after"] < report["vm_max_pu_before"]  # curtailing PV lowers the voltage rise
    assert report["most_loaded_transformer_before"] == transformer["transformer_id"]

    # GET /network: every bus, line and transformer as of the power flow after acting
    assert (network["network"], network["cycle"], network["converged"]) == (RURAL1, 1, True)
    assert len(network["buses"]) == 15 and len(network["lines"]) == 13
    bus = network["buses"][1]
    assert set(bus) == {"bus", "name", "vn_kv", "vm_pu", "min_vm_pu", "max_vm_pu", "p_kw", "q_kvar"}
    assert (bus["bus"], bus["name"], bus["vn_kv"]) == (1, "LV1.101 Bus 1", 0.4)
    assert (bus["min_vm_pu"], bus["max_vm_pu"]) == (0.9, 1.1)
    assert max(b["vm_pu"] for b in network["buses"]) == pytest.approx(report["vm_max_pu_after"])
    assert set(network["lines"][0]) == {"line", "from_bus", "to_bus", "loading_percent"}
    most_loaded = max(network["lines"], key=lambda line: line["loading_percent"])
    assert report["most_loaded_line_after"] == most_loaded["line"]
    assert most_loaded["loading_percent"] == pytest.approx(report["line_loading_max_percent_after"])
    (trafo,) = network["transformers"]
    assert trafo["transformer"] == 0 and trafo["name"] == "MV1.101-LV1.101-Trafo 1"
    assert trafo["loading_percent"] == pytest.approx(transformer["loading_percent_after"])
    # p_kw at a bus is the sum of its agents' net power after acting (load convention)
    with_agents = {a["bus"] for a in agents}
    assert all(b["p_kw"] == 0.0 and b["q_kvar"] == 0.0 for b in network["buses"] if b["bus"] not in with_agents)
    assert sum(b["p_kw"] for b in network["buses"]) == pytest.approx(transformer["loading_after_kw"])
    assert {a["agent_id"]: a["bus"] for a in agents}["lv1_101_load_2"] == 8


async def test_dashboard_data_draws_the_network_and_its_worst_feeders(lv_networks, tmp_path):
    async with network_grid(tmp_path, lv_networks[RURAL1], planner="rule") as c:
        assert (await c.get("/dashboard/data")).json()["network"]["cycle"] == 0  # the unloaded network, at start
        result = (await c.post("/coordinate")).json()
        data = (await c.get("/dashboard/data")).json()
        network = (await c.get("/network")).json()
        quiet = (await c.get("/dashboard/data", params={"since": 1, "run": data["run_id"]})).json()
        (await c.post("/coordinate")).raise_for_status()
        update = (await c.get("/dashboard/data", params={"since": 1, "run": data["run_id"]})).json()
    net = data["network"]
    assert (net["network"], net["cycle"], net["converged"]) == (RURAL1, 1, True)
    assert net["vm_pu"] == [b["vm_pu"] for b in network["buses"]]
    assert net["line_loading_percent"] == [line["loading_percent"] for line in network["lines"]]
    assert net["transformer_loading_percent"] == [t["loading_percent"] for t in network["transformers"]]
    topology = net["topology"]
    assert topology["layout"] == "geodata"  # SimBench ships coordinates for every bus
    assert topology["bus"] == [b["bus"] for b in network["buses"]] and len(topology["x"]) == 15
    ends = [[topology["bus"][k] for k in pair] for pair in topology["line_ends"]]
    assert ends == [[line["from_bus"], line["to_bus"]] for line in network["lines"]]
    # the feeders run from the transformer's LV busbar out to the buses of highest and lowest voltage
    feeders = {f["to"]: f for f in net["feeders"]}
    assert set(feeders) == {"highest", "lowest"}
    lv = [v for v, kv in zip(net["vm_pu"], topology["vn_kv"], strict=True) if kv < 1]  # behind the transformer
    assert net["vm_pu"][feeders["highest"]["buses"][-1]] == max(lv)
    assert net["vm_pu"][feeders["lowest"]["buses"][-1]] == min(lv)
    (trafo_ends,) = topology["transformer_ends"]
    assert feeders["highest"]["buses"][0] == trafo_ends[1] and feeders["highest"]["distance_ohm"][0] == 0
    assert feeders["highest"]["distance_ohm"] == sorted(feeders["highest"]["distance_ohm"])
    # each history row keeps the cycle's voltage band; nothing new, no network; a new cycle, no topology again
    row = data["history"][-1]["network"]
    assert row["vm_max_pu_before"] == result["network"]["vm_max_pu_before"]
    assert row["vm_min_pu_after"] == result["network"]["vm_min_pu_after"]
    assert quiet["history"] == [] and quiet["network"] is None
    assert update["network"]["cycle"] == 2 and "topology" not in update["network"]


async def test_voltage_limits_and_cosphi_p_at_peak_pv(lv_networks, tmp_path):
    unity, network, _ = await run_network_cycle(tmp_path / "unity", lv_networks[RURAL1], planner="rule", vm_max_pu=1.03)
    assert unity["network"]["buses_outside_before"] > 0  # a tighter limit at LV buses: the PV's voltage rise breaks it
    lv_limits = {b["max_vm_pu"] for b in network["buses"] if b["vn_kv"] < 1}
    assert lv_limits == {1.03} and network["buses"][0]["max_vm_pu"] == 1.055  # the MV bus keeps its own
    cosphi, network, _ = await run_network_cycle(tmp_path / "cosphi", lv_networks[RURAL1], pv_reactive="cosphi_p")
    # PV near full power draws reactive power (underexcited), which holds the voltage rise down
    assert cosphi["network"]["vm_max_pu_before"] < unity["network"]["vm_max_pu_before"] - 1e-3
    assert sum(b["q_kvar"] for b in network["buses"]) > 0


async def test_failed_power_flow_is_reported_and_the_cycle_goes_on(lv_networks, tmp_path, monkeypatch):
    def diverge(self, p_kw, q_kvar):
        raise PowerFlowError("Iteration failed to converge after 30 iterations")

    monkeypatch.setattr(PowerFlow, "solve", diverge)  # at start-up too: logged, and the agent starts all the same
    result, network, _ = await run_network_cycle(tmp_path, lv_networks[RURAL1], planner="rule")
    report = result["network"]
    assert report["converged"] is False and "converge" in report["error"]
    assert report["vm_max_pu_before"] is None and report["buses_outside_after"] is None
    (transformer,) = result["transformers"]
    assert transformer["loading_percent_before"] is None
    assert transformer["state_before"] == "reverse_power_flow"  # the transformer-only assessment stands
    assert network["converged"] is False and network["buses"][1]["vm_pu"] is None


def test_sensitivities_perturb_only_the_lv_grids_near_their_limits(tmp_path):
    net = pp.create_empty_network(name="two LV grids")
    mv = pp.create_bus(net, 20.0, name="MV")
    pp.create_ext_grid(net, mv, vm_pu=1.02)
    houses = []
    for grid in ("A", "B"):
        busbar = pp.create_bus(net, 0.4, name=f"{grid} busbar")
        house = pp.create_bus(net, 0.4, name=f"{grid} house")
        pp.create_transformer(net, mv, busbar, std_type="0.4 MVA 20/0.4 kV", name=f"T {grid}")
        pp.create_line(net, busbar, house, 0.2, std_type="NAYY 4x150 SE")
        pp.create_load(net, house, p_mw=0.004)
        houses.append(house)
    monitor = NetworkMonitor(make_grid_settings(tmp_path, network=str(write_net(tmp_path, net))))
    columns = np.array([monitor._position[h] for h in houses])
    buses, lines, trafos = np.zeros(5, dtype=bool), np.zeros(2, dtype=bool), np.zeros(2, dtype=bool)

    def near(bus=(), line=(), trafo=()):
        b, ln, t = buses.copy(), lines.copy(), trafos.copy()
        b[list(bus)], ln[list(line)], t[list(trafo)] = True, True, True
        perturbed, source = monitor.perturbation(columns, b, ln, t)
        return [int(monitor.buses[perturbed[k]]) if k >= 0 else None for k in source]

    a, b = houses
    assert near(bus=[monitor._position[a]]) == [a, None]  # A's house: only A's agents, B's read 0
    assert near(line=[1], trafo=[0]) == [a, b]  # B's line and A's transformer
    assert near(trafo=[1]) == [None, b]
    # the MV bus: every agent moves it; those of a grid with nothing near take their LV busbar's sensitivity
    busbars = net.trafo["lv_bus"].tolist()
    assert near(bus=[monitor._position[mv]]) == busbars
    assert near(bus=[monitor._position[mv], monitor._position[b]]) == [busbars[0], b]


def test_an_lv_grids_busbar_stands_for_its_agents_at_mv(tmp_path):
    """What the shared column assumes: an MV bus and MV line see an LV house's kW as they see its busbar's, within
    10 % (the LV grid's marginal losses: 6 % here, a house exporting 60 kW at the end of a 200 m cable)."""
    net = pp.create_empty_network(name="MV line, one LV grid")
    slack = pp.create_bus(net, 20.0, name="substation")
    mv = pp.create_bus(net, 20.0, name="MV node")
    busbar = pp.create_bus(net, 0.4, name="busbar")
    house = pp.create_bus(net, 0.4, name="house")
    pp.create_ext_grid(net, slack, vm_pu=1.02)
    pp.create_line(net, slack, mv, 5.0, std_type="NA2XS2Y 1x95 RM/25 12/20 kV")
    pp.create_transformer(net, mv, busbar, std_type="0.4 MVA 20/0.4 kV")
    pp.create_line(net, busbar, house, 0.2, std_type="NAYY 4x150 SE")
    pp.create_load(net, house, p_mw=0.004)
    flow = PowerFlow(load_network(write_net(tmp_path, net)).net)
    p_kw, q_kvar = np.array([0.0, 0.0, 0.0, -60.0]), np.zeros(4)  # the house exports 60 kW
    sens = sensitivities(flow, p_kw, q_kvar, np.array([2, 3]))  # busbar, house
    assert sens.vm[1, 1] == pytest.approx(sens.vm[1, 0], rel=0.1)  # the MV node's voltage
    assert sens.line[0, 1] == pytest.approx(sens.line[0, 0], rel=0.1)  # the MV line's loading
    assert abs(sens.vm[3, 1]) > 5 * abs(sens.vm[3, 0])  # at the house itself, its own column is what counts


async def test_get_network_without_a_network_is_a_404(feeder):
    response = await feeder.client.get("/network")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not_found" and "--network" in body["message"] and body["agent_id"] == "grid_agent"


async def test_agents_carry_their_bus(feeder):
    agents = await feeder.agents()
    assert all("bus" in a for a in agents.values())
    assert {a["bus"] for a in agents.values()} == {None}  # the seed's agents are on no network


def test_grid_agent_takes_the_network_transformers_as_its_limits(lv_networks, tmp_path):
    agent = GridAgent(make_grid_settings(tmp_path, network=RURAL1))
    try:
        assert agent.registry.limits("mv1_101_lv1_101_trafo_1") == (160.0, 160.0)
        assert agent.network.state().cycle == 0  # the unloaded network, solved at start-up
    finally:
        agent.close()


# -- the coordinator on a network ------------------------------------------------------------------------
@pytest.mark.e2e
def test_coordinator_runs_a_simbench_grid(lv_networks, tmp_path):
    # the grid as pandapower JSON with its SimBench profiles: the file path, and ten seconds quicker than the code
    network = write_net(tmp_path, lv_networks[RURAL1].net, "rural1.json")
    base = free_port_block(4)
    flags = ["--network", str(network), "--start", RURAL1_PEAK_PV, "--cycles", "2", "--interval", "0", "--exit"]
    flags += ["--report", str(tmp_path / "report")]
    command = coordinator_command(tmp_path, base, *flags)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, env=child_env())
    assert result.returncode == 0, result.stdout + result.stderr
    logs = tmp_path / "logs"
    scenario = load_scenario(logs / "feeder.toml")
    assert (len(scenario.homes), len(scenario.batteries)) == (28, 5)
    grid_log = pd.read_csv(logs / "grid_agent_log.csv")
    assert grid_log["cycle"].tolist() == [1, 2]
    assert (grid_log["agents_reporting"] == 33).all() and (grid_log["network_converged"] == 1).all()
    assert (grid_log["loading_percent_before"] > 100).all()  # the uncoordinated noon of May overloads it
    assert (grid_log["most_loaded_transformer_before"] == "mv1_101_lv1_101_trafo_1").all()
    assert (grid_log["vm_max_pu_before"] > grid_log["vm_max_pu_after"]).all()
    home_log = pd.read_csv(logs / "lv1_101_load_2_log.csv")
    assert home_log["timestamp"].tolist() == ["2016-05-20T12:00:00", "2016-05-20T12:15:00"]
    # the run summary, the report's summary and its cycles carry the power flows; the voltage plot is drawn
    assert "highest bus voltage" in result.stdout and "network V " in result.stdout, result.stdout
    summary = json.loads((tmp_path / "report" / "summary.json").read_text(encoding="utf-8"))
    kpis = summary["kpis"]["network"]
    assert kpis["cycles"] == 2 and kpis["power_flows_failed"] == 0
    assert kpis["transformer_loading_max_percent_before"] > 100
    assert kpis["hours_transformers_outside_before"] == 0.5
    assert kpis["most_loaded_transformer_before"] == "mv1_101_lv1_101_trafo_1"
    assert {(g["min_vm_pu"], g["max_vm_pu"]) for g in summary["voltage_limits"]} == {(0.9, 1.1), (0.965, 1.055)}
    assert (tmp_path / "report" / "voltage.png").stat().st_size > 10_000
    first = json.loads((tmp_path / "report" / "cycles.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["network"]["vm_max_pu_after"] == pytest.approx(grid_log["vm_max_pu_after"][0])
