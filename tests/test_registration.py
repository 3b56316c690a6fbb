"""Joining the feeder: the grid agent's answer to a registration carries the feeder's clock, so that an agent
restarted without its saved state starts afresh at the feeder's step, and one with it resumes its own.

Everything runs in process: the grid agent calls the device agents through a HostRouter, and the devices
register through ``register_once`` over an ASGI transport, as their heartbeat does.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from agents.battery import create_app as create_battery_app
from agents.device.agent import DeviceAgent
from agents.device.registration import register_once
from agents.grid import create_app as create_grid_app
from agents.home import create_app as create_home_app
from models.schemas import AgentReport, FeederClock
from tests.conftest import BATTERY_ID, HOME_ID, Feeder, HostRouter, make_battery_settings, make_grid_settings
from tests.conftest import make_home_settings as home_settings
from tests.test_feeder import SCENARIO

START = "2025-07-15T12:00"
JOINED = "joined the running feeder afresh"


def grid_client(grid_app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid")


def afresh_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agents.cycle.registry" and JOINED in r.getMessage()]


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as apps:
        yield apps


async def restart_home(stack: AsyncExitStack, feeder: Feeder, folder: Path, **overrides: Any) -> DeviceAgent:
    """home_1 started again at the same URL, its state and log in ``folder`` (an empty one: its state is lost)."""
    app = create_home_app(home_settings(folder, start=START, **overrides), register=False)
    await stack.enter_async_context(LifespanManager(app))
    feeder.router.routes[HOME_ID] = httpx.ASGITransport(app=app)
    return app.state.agent


# -- one agent per process --------------------------------------------------------------------------
async def test_agent_with_lost_state_joins_a_running_feeder_at_its_step(make_feeder, stack, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    feeder = await make_feeder(start=START)
    for _ in range(3):  # 12:00, 12:15, 12:30
        last = await feeder.coordinate()
    home = await restart_home(stack, feeder, tmp_path / "lost", fresh=False)
    grid = await stack.enter_async_context(grid_client(feeder.grid_app))
    run_id = feeder.grid_app.state.agent.run_id

    clock = await register_once([home], grid, f"http://{HOME_ID}", feeder.headers)
    assert clock == FeederClock(run_id=run_id, cycle=3, timestamp=last["timestamp"], step_s=900.0)
    note = f"no saved state in {tmp_path / 'lost' / 'state' / 'home_1.sqlite3'}; started afresh at the feeder's step"
    waiting = home.current_status()
    assert (waiting.step, waiting.timestamp, waiting.started_from) == (0, None, "feeder")
    assert waiting.start_note == f"{note} 2025-07-15T12:45:00"

    result = await feeder.coordinate()
    assert (result["timestamp"], result["agents_stepped"], result["unreachable"]) == ("2025-07-15T12:45:00", 2, [])
    stepped = home.current_status()
    peer = await feeder.device_status(BATTERY_ID)
    assert (stepped.step, stepped.timestamp.isoformat()) == (1, peer["timestamp"])
    assert (stepped.started_from, stepped.start_note) == ("feeder", f"{note} 2025-07-15T12:45:00")
    assert peer["started_from"] == "start"

    await register_once([home], grid, f"http://{HOME_ID}", feeder.headers)  # a heartbeat: no second warning
    await feeder.coordinate()
    assert home.current_status().timestamp.isoformat() == (await feeder.device_status(BATTERY_ID))["timestamp"]
    assert afresh_warnings(caplog) == [  # from the step's batch answer, which leaves the note to /status
        "agent home_1 joined the running feeder afresh, not from saved state: started afresh at the feeder's step "
        "2025-07-15T12:45:00 (its /status names what it lacked)"
    ]


async def test_agent_with_saved_state_resumes_its_own_next_step(make_feeder, stack, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    feeder = await make_feeder(start=START)
    for _ in range(3):  # 12:00, 12:15, 12:30
        await feeder.coordinate()
    feeder.router.take_down(HOME_ID)  # home_1's process dies, its state committed at 12:30
    kept = tmp_path / "kept" / "state"
    kept.mkdir(parents=True)
    with (
        closing(sqlite3.connect(tmp_path / "state" / "home_1.sqlite3")) as committed,
        closing(sqlite3.connect(kept / "home_1.sqlite3")) as copy,  # where the restarted process finds it
    ):
        committed.backup(copy)
    down = await feeder.coordinate()  # 12:45 without home_1
    assert down["unreachable"] == [HOME_ID]
    home = await restart_home(stack, feeder, tmp_path / "kept", fresh=False)
    feeder.router.bring_up(HOME_ID)
    grid = await stack.enter_async_context(grid_client(feeder.grid_app))

    assert (await register_once([home], grid, f"http://{HOME_ID}", feeder.headers)).cycle == 4
    resumed = home.current_status()
    assert (resumed.step, resumed.timestamp.isoformat(), resumed.started_from) == (
        3,
        "2025-07-15T12:30:00",
        "saved_state",
    )
    path = kept / "home_1.sqlite3"
    assert resumed.start_note == f"resumed at step 3 (2025-07-15T12:30:00) from its state in {path}"
    await feeder.coordinate()
    assert home.current_status().timestamp.isoformat() == "2025-07-15T12:45:00"  # its own next step: no jump
    assert (await feeder.device_status(BATTERY_ID))["timestamp"] == "2025-07-15T13:00:00"
    assert afresh_warnings(caplog) == []


async def test_agents_of_a_new_run_start_at_start(make_feeder, stack):
    feeder = await make_feeder(start=START, register=False)
    grid = await stack.enter_async_context(grid_client(feeder.grid_app))
    for agent_id, app in ((HOME_ID, feeder.home_app), (BATTERY_ID, feeder.battery_app)):
        assert await register_once([app.state.agent], grid, f"http://{agent_id}", feeder.headers) is None
    result = await feeder.coordinate()
    assert result["timestamp"] == "2025-07-15T12:00:00"
    for agent_id, app in ((HOME_ID, feeder.home_app), (BATTERY_ID, feeder.battery_app)):
        status = await feeder.device_status(agent_id)
        assert (status["step"], status["timestamp"], status["started_from"]) == (1, result["timestamp"], "start")
        path = app.state.agent.store.path
        assert (
            status["start_note"]
            == f"--fresh: started without the state in {path}; a new run, started at --start {result['timestamp']}"
        )


# -- the grid agent's clock ---------------------------------------------------------------------------
async def test_feeder_clock_is_the_latest_step_and_stands_still_when_nobody_steps(make_feeder):
    feeder = await make_feeder(start=START)
    run_id = feeder.grid_app.state.agent.run_id
    assert (await feeder.register(HOME_ID)).json()["feeder_clock"] is None  # a new run
    await feeder.coordinate()
    await feeder.coordinate()
    at_12_15 = {"run_id": run_id, "cycle": 2, "timestamp": "2025-07-15T12:15:00", "step_s": 900.0}
    assert (await feeder.register(HOME_ID)).json()["feeder_clock"] == at_12_15
    feeder.router.take_down(HOME_ID)
    feeder.router.take_down(BATTERY_ID)
    assert (await feeder.coordinate())["agents_stepped"] == 0
    assert (await feeder.register(HOME_ID)).json()["feeder_clock"] == {**at_12_15, "cycle": 3}
    report = AgentReport(url="http://home_1", status=await feeder.device_status(HOME_ID)).model_dump(mode="json")
    batch = await feeder.client.post("/registrations", json={"reports": [report]}, headers=feeder.headers)
    assert batch.json() == {"registered": 1, "feeder_clock": {**at_12_15, "cycle": 3}}


async def test_restarted_grid_agent_takes_the_clock_from_its_agents(make_feeder, stack, tmp_path):
    feeder = await make_feeder(start=START)
    for _ in range(2):  # 12:00, 12:15
        await feeder.coordinate()
    old_run = feeder.grid_app.state.agent.run_id
    # the grid agent comes back (--resume-cycles) while the battery runs on and home_1 comes back without state
    grid_app = create_grid_app(make_grid_settings(tmp_path, resume_cycles=True), transport=feeder.router)
    await stack.enter_async_context(LifespanManager(grid_app))
    grid = await stack.enter_async_context(grid_client(grid_app))
    battery = feeder.battery_app.state.agent
    clock = await register_once([battery], grid, f"http://{BATTERY_ID}", feeder.headers)
    assert clock == FeederClock(run_id=old_run, cycle=2, timestamp="2025-07-15T12:15:00", step_s=900.0)
    home = await restart_home(stack, feeder, tmp_path / "lost", fresh=False)
    await register_once([home], grid, f"http://{HOME_ID}", feeder.headers)
    result = (await grid.post("/coordinate", headers=feeder.headers)).json()
    assert (result["cycle"], result["timestamp"], result["agents_stepped"]) == (3, "2025-07-15T12:30:00", 2)
    assert home.current_status().timestamp == battery.current_status().timestamp
    assert home.current_status().started_from == "feeder"


# -- many agents in one process ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "started_from", "home_at"),
    [
        pytest.param("lost", "feeder", "2025-07-15T13:15:00", id="state-lost"),  # the feeder's step
        pytest.param("kept", "saved_state", "2025-07-15T12:45:00", id="state-kept"),  # their own next step
    ],
)
async def test_hosted_agents_join_afresh_or_resume_as_their_state_allows(
    tmp_path, stack, caplog, state, started_from, home_at
):
    """A process hosting three homes stops after cycle 3 and comes back two cycles later."""
    caplog.set_level(logging.WARNING)
    scenario = tmp_path / "feeder.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    homes = create_home_app(home_settings(tmp_path, scenario=scenario, start=START), register=False)
    storage = create_battery_app(make_battery_settings(tmp_path, scenario=scenario, start=START), register=False)
    router = HostRouter({"homes": httpx.ASGITransport(app=homes), "storage": httpx.ASGITransport(app=storage)})
    grid_app = create_grid_app(make_grid_settings(tmp_path, scenario=scenario), transport=router)
    for app in (storage, grid_app):
        await stack.enter_async_context(LifespanManager(app))
    grid = await stack.enter_async_context(grid_client(grid_app))

    async def coordinate() -> dict[str, Any]:
        response = await grid.post("/coordinate")
        assert response.status_code == 200, response.text
        return response.json()

    async with LifespanManager(homes):
        for host, app in (("homes", homes), ("storage", storage)):
            assert await register_once(list(app.state.agents.values()), grid, f"http://{host}", {}) is None
        for _ in range(3):  # 12:00, 12:15, 12:30
            await coordinate()
    router.take_down("homes")
    for _ in range(2):  # 12:45, 13:00 without the homes
        assert (await coordinate())["unreachable"] == ["h1", "h2", "h3"]

    folder = tmp_path / "lost" if state == "lost" else tmp_path
    again = create_home_app(home_settings(folder, scenario=scenario, start=START, fresh=False), register=False)
    await stack.enter_async_context(LifespanManager(again))
    router.routes["homes"] = httpx.ASGITransport(app=again)
    router.bring_up("homes")
    hosted = list(again.state.agents.values())
    clock = await register_once(hosted, grid, "http://homes", {})
    assert (clock.cycle, clock.timestamp.isoformat()) == (5, "2025-07-15T13:00:00")
    result = await coordinate()
    assert (result["timestamp"], result["agents_stepped"], result["unreachable"]) == ("2025-07-15T13:15:00", 4, [])
    store = storage.state.agents["store_T1"].current_status()
    assert store.timestamp.isoformat() == "2025-07-15T13:15:00"
    path = folder / "state" / "home-agents-0-of-1.sqlite3"
    for agent in hosted:
        status = agent.current_status()
        assert (status.timestamp.isoformat(), status.started_from) == (home_at, started_from)
        if state == "lost":
            assert status.step == 1
            assert status.start_note == f"no saved state in {path}; started afresh at the feeder's step {home_at}"
        else:
            assert status.step == 4
            assert status.start_note == f"resumed at step 3 (2025-07-15T12:30:00) from its state in {path}"
    warned = sorted(afresh_warnings(caplog))
    assert [w.split(" joined")[0] for w in warned] == (["agent h1", "agent h2", "agent h3"] if state == "lost" else [])
