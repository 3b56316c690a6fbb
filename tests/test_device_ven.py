"""A home agent as an OpenADR 3 VEN (--protocol openadr3): it joins the VTN, steps with the feeder, follows events."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from agents import grid, home
from agents.common.settings import HomeSettings, StartupError
from agents.coordinator.report import run_kpis
from agents.device.ven import DeviceVen, Vtn, VtnError
from agents.openadr3.vtn import BASE_PATH
from models.schemas import AgentReport
from tests.conftest import HostRouter, make_grid_settings, make_home_settings
from tests.test_e2e import ROOT, Agent, child_env, free_port, stop, wait_until

CLIENTS = [
    {"client_id": "bl_client", "client_secret": "bl-s3cret", "role": "bl"},
    {"client_id": "home_1", "client_secret": "home-1-s3cret", "role": "ven"},
]
#: An evening with no battery: the home imports all its load, a share of it flexible.
EVENING = {"start": "2025-06-01T18:00:00", "battery_kwh": 0.0, "annual_load_kwh": 20000.0, "flexible_fraction": 0.5}


def test_openadr3_needs_a_vtn_url_and_a_client_id(tmp_path):
    with pytest.raises(ValueError, match="--vtn-url and --openadr3-client-id"):
        make_home_settings(tmp_path, protocol="openadr3")


def test_openadr3_needs_the_client_secret_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENADR3_CLIENT_SECRET", raising=False)
    settings = make_home_settings(tmp_path, protocol="openadr3", vtn_url="http://127.0.0.1:9/x", openadr3_client_id="h")
    with pytest.raises(StartupError, match="OPENADR3_CLIENT_SECRET"):
        home.create_app(settings)


async def coordinate_once_joined(client: httpx.AsyncClient, vens: list[DeviceVen], cycles: int) -> list[dict]:
    """Wait until every VEN has joined the feeder (from the next cycle on it is on it), then run ``cycles``
    cycles; their results."""
    async with asyncio.timeout(10):
        while not all(ven.telemetry_id for ven in vens):
            await asyncio.sleep(0.01)
    results = []
    for _ in range(cycles):
        response = await client.post("/coordinate")
        assert response.status_code == 200, response.text
        results.append(response.json())
    return results


async def run_feeder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cycles: int, rating_kw: float) -> list[dict]:
    """A grid agent with the VTN and one home agent as its VEN, in process; the results of ``cycles`` cycles."""
    monkeypatch.setenv("OPENADR3_CLIENTS", json.dumps(CLIENTS))
    grid_app = grid.create_app(
        make_grid_settings(tmp_path, openadr3=True, transformer_rating_kw=rating_kw, ven_report_timeout_s=5.0),
        transport=httpx.MockTransport(lambda request: httpx.Response(404)),
    )
    settings: HomeSettings = make_home_settings(tmp_path, **EVENING)
    home_app = home.create_app(settings, register=False)
    async with (
        LifespanManager(grid_app),
        LifespanManager(home_app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid") as client,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url=f"http://grid{BASE_PATH}") as to_vtn,
    ):
        ven = DeviceVen(home_app.state.agent, settings, Vtn(to_vtn, "home_1", "home-1-s3cret"))
        task = asyncio.create_task(ven.run())
        try:
            results = await coordinate_once_joined(client, [ven], cycles)
            async with asyncio.timeout(10):
                while home_app.state.agent.step <= cycles:  # it follows the last cycle's events, then steps on
                    await asyncio.sleep(0.01)
            agents = (await client.get("/agents")).json()
            form = {"grant_type": "client_credentials", "client_id": "bl_client", "client_secret": "bl-s3cret"}
            token = (await client.post(f"{BASE_PATH}/auth/token", data=form)).json()["access_token"]
            reports = (await client.get(f"{BASE_PATH}/reports", headers={"Authorization": f"Bearer {token}"})).json()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return results, agents, reports


async def test_a_home_agent_as_a_ven_steps_with_the_feeder_and_is_curtailed_by_events(tmp_path, monkeypatch):
    monkeypatch.setattr("agents.device.ven.PAGE", 2)  # its events come a page at a time, as in a long run
    results, agents, reports = await run_feeder(tmp_path, monkeypatch, cycles=4, rating_kw=0.5)
    assert [a["agent_id"] for a in agents] == ["home_1"] and agents[0]["agent_type"] == "ven"
    assert all(r["unreachable"] == [] for r in results)
    stamps = [r["timestamp"] for r in results]
    assert stamps == ["2025-06-01T18:00:00", "2025-06-01T18:15:00", "2025-06-01T18:30:00", "2025-06-01T18:45:00"]
    applied = {
        r["eventID"]: p["values"][0]
        for r in reports
        for p in r["resources"][0]["intervals"][0]["payloads"]
        if p["type"] == "DELTA_USAGE"
    }
    for result in results:
        (t1,) = result["transformers"]
        assert t1["state_before"] == "overload" and t1["loading_before_kw"] > 0.5
        (action,) = result["actions"]
        assert action["agent_id"] == "home_1" and action["action"] == "shed_load" and action["status"] == "sent"
        event_id = action["reason"].split()[3].rstrip(";")
        assert applied[event_id] == pytest.approx(-action["requested_kw"])  # it shed what the event asked


@pytest.mark.e2e
def test_home_agent_server_with_protocol_openadr3_joins_a_grid_agent_and_steps_with_it(tmp_path):
    """The real scripts: a grid agent with --openadr3, a home agent with --protocol openadr3, cycles by POST."""
    grid_port, home_port = free_port(), free_port()
    common = ["--log-dir", str(tmp_path / "logs"), "--state-dir", str(tmp_path / "state")]
    started = []
    try:
        for script, port, flags, env in (
            (
                "grid_agent_server.py",
                grid_port,
                ["--openadr3", "--transformer-rating-kw", "0.5"],
                {"OPENADR3_CLIENTS": json.dumps(CLIENTS)},
            ),
            (
                "home_agent_server.py",
                home_port,
                [
                    "--protocol",
                    "openadr3",
                    "--vtn-url",
                    f"http://127.0.0.1:{grid_port}{BASE_PATH}",
                    "--openadr3-client-id",
                    "home_1",
                    *(f"--{k.replace('_', '-')}={v}" for k, v in EVENING.items()),
                ],
                {"OPENADR3_CLIENT_SECRET": "home-1-s3cret"},
            ),
        ):
            output = tmp_path / f"{script}.out"
            with output.open("w") as sink:
                process = subprocess.Popen(
                    [sys.executable, script, "--port", str(port), *common, *flags],
                    cwd=ROOT,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=child_env(**env),
                )
            started.append(Agent(script, port, process, output))
            started[-1].wait_healthy()
        grid_agent = started[0]

        def joined() -> bool:
            httpx.post(f"{grid_agent.url}/coordinate", timeout=10.0).raise_for_status()
            return any(a["agent_id"] == "home_1" for a in httpx.get(f"{grid_agent.url}/agents").json())

        wait_until(joined, 20.0)
        results = [httpx.post(f"{grid_agent.url}/coordinate", timeout=10.0).json() for _ in range(3)]
        (record,) = httpx.get(f"{grid_agent.url}/agents").json()
        assert record["agent_type"] == "ven" and record["healthy"]
        assert all(r["unreachable"] == [] and r["transformers"][0]["agents_reporting"] == 1 for r in results)
        assert all(r["actions"] and r["actions"][0]["status"] == "sent" for r in results)
        assert len({r["timestamp"] for r in results}) == 3  # it stepped with the feeder
    finally:
        for agent in reversed(started):
            stop(agent.process)


#: Four homes of different sizes on one transformer through a winter evening.
HOMES = {
    "home_1": {"annual_load_kwh": 18000.0, "battery_kwh": 13.5, "battery_kw": 1.0},
    "home_2": {"annual_load_kwh": 14000.0, "battery_kwh": 10.0, "battery_kw": 1.0, "load_shift_steps": 2},
    "home_3": {"annual_load_kwh": 16000.0, "battery_kwh": 13.5, "battery_kw": 1.0, "load_shift_steps": 4},
    "home_4": {"annual_load_kwh": 12000.0, "battery_kwh": 5.0, "battery_kw": 1.0, "load_shift_steps": 6},
}
WINTER_EVENING = "2025-01-15T15:00:00"


async def run_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openadr: set[str], cycles: int) -> list[dict]:
    """The four homes on a 3 kW transformer, those in ``openadr`` as VENs, the rest on REST; every cycle's result."""
    clients = [*CLIENTS[:1], *({"client_id": h, "client_secret": f"{h}-s3cret", "role": "ven"} for h in HOMES)]
    monkeypatch.setenv("OPENADR3_CLIENTS", json.dumps(clients))
    home_apps = {
        h: home.create_app(make_home_settings(tmp_path, agent_id=h, start=WINTER_EVENING, **sizes), register=False)
        for h, sizes in HOMES.items()
    }
    router = HostRouter({h: httpx.ASGITransport(app=app) for h, app in home_apps.items() if h not in openadr})
    settings = make_grid_settings(
        tmp_path, openadr3=True, planner="optimal", transformer_rating_kw=3.0, ven_report_timeout_s=5.0
    )
    grid_app = grid.create_app(settings, transport=router)
    async with AsyncExitStack() as stack:
        for app in (grid_app, *home_apps.values()):
            await stack.enter_async_context(LifespanManager(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid")
        )
        to_vtn = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url=f"http://grid{BASE_PATH}")
        )
        for h in HOMES.keys() - openadr:
            status = home_apps[h].state.agent.status()
            report = AgentReport(url=f"http://{h}", status=status).model_dump(mode="json")
            assert (await client.post(f"/agents/{h}/status", json=report)).status_code == 200
        vens = [
            DeviceVen(home_apps[h].state.agent, home_apps[h].state.agent.settings, Vtn(to_vtn, h, f"{h}-s3cret"))
            for h in sorted(openadr)
        ]
        tasks = [asyncio.create_task(ven.run()) for ven in vens]
        try:
            results = await coordinate_once_joined(client, vens, cycles)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return results


async def test_half_the_homes_on_openadr_give_the_kpis_of_an_all_rest_feeder_within_1_percent(tmp_path, monkeypatch):
    rest = run_kpis(await run_homes(tmp_path / "rest", monkeypatch, set(), cycles=24))
    mixed = run_kpis(await run_homes(tmp_path / "mixed", monkeypatch, {"home_2", "home_4"}, cycles=24))
    # the afternoon's solar pushes power back past the limit, the evening's load overloads the transformer
    assert rest["minutes_reverse_flow_before"] > 0 and rest["minutes_overload_before"] > 0
    assert mixed["unreachable_agent_cycles"] == 0
    for kpi in (
        "energy_imported_kwh",
        "energy_exported_kwh",
        "minutes_outside_limits_before",
        "energy_imported_without_coordination_kwh",
        "energy_outside_limits_after_kwh",
        "minutes_outside_limits_after",
    ):
        assert mixed[kpi] == pytest.approx(rest[kpi], rel=0.01, abs=1e-6), kpi


def test_with_tls_on_a_plain_http_vtn_beyond_loopback_is_refused(tmp_path, tls_files, monkeypatch):
    monkeypatch.setenv("OPENADR3_CLIENT_SECRET", "home-1-s3cret")
    flags = {"protocol": "openadr3", "openadr3_client_id": "home_1", "tls_ca_file": tls_files.ca}
    settings = make_home_settings(tmp_path, vtn_url="http://vtn.lab:8000/openadr3/3.0.1", **flags)
    with pytest.raises(StartupError, match=re.escape("--vtn-url http://vtn.lab:8000/openadr3/3.0.1: plain http://")):
        home.create_app(settings)
    home.create_app(make_home_settings(tmp_path, vtn_url="https://vtn.lab:8000/openadr3/3.0.1", **flags))


async def test_a_vtn_that_is_not_up_is_a_vtn_error_the_ven_retries_not_a_crash():
    """The token is the first call a VEN makes: a VTN not up yet (or a wrong --vtn-url) must be a VtnError,
    which the VEN's loop retries, not a connection error that ends its task."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}/openadr3/3.0.1/") as client:
        with pytest.raises(VtnError, match="auth/token"):
            await Vtn(client, "ven_a", "secret").call("GET", "programs")
