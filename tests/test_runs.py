"""Long runs as jobs of the grid agent: POST /runs, following, stopping, durability, and what they refuse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.cycle.runs import RunStore
from agents.grid import create_app
from models.schemas import BATCH_CYCLES_MAX, RunInfo, RunStatus
from tests.conftest import HOME_ID, Feeder, HostRouter, bearer, make_grid_settings, running

TOKEN = "s3cret-run-token-for-tests"


class Gate(httpx.AsyncBaseTransport):
    """Holds every request to one agent until the test opens it, so that a cycle stays in flight."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.reached.set()
        await self.opened.wait()
        return await self.inner.handle_async_request(request)


def gate(feeder: Feeder, agent_id: str = HOME_ID) -> Gate:
    """Put a gate in front of an agent of the feeder."""
    feeder.router.routes[agent_id] = held = Gate(feeder.router.routes[agent_id])
    return held


async def wait_for_run(
    client: httpx.AsyncClient, run_id: str, done: Callable[[dict], bool], timeout_s: float = 10.0
) -> dict:
    """Poll GET /runs/{run_id} until ``done`` holds; return the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = (await client.get(f"/runs/{run_id}")).json()
        if done(info) or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.01)


def finished(info: dict) -> bool:
    return info["status"] != "running"


async def start_run(client: httpx.AsyncClient, cycles: int, headers: dict[str, str] | None = None) -> dict:
    response = await client.post("/runs", json={"cycles": cycles}, headers=headers or {})
    assert response.status_code == 202, response.text
    return response.json()


def empty_grid(tmp_path: Path, **overrides: Any):
    """A grid agent with no agents registered: its cycles are empty and fast."""
    return create_app(make_grid_settings(tmp_path, **overrides), transport=HostRouter({}))


# -- starting and following ----------------------------------------------------------------------
async def test_post_runs_answers_202_at_once_with_the_run(feeder):
    held = gate(feeder)
    response = await asyncio.wait_for(feeder.client.post("/runs", json={"cycles": 3}), timeout=1.0)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "running"
    assert body["cycles"] == 3
    assert body["cycles_done"] == 0
    assert len(body["run_id"]) >= 8
    assert response.headers["location"] == f"/runs/{body['run_id']}"
    held.opened.set()
    info = await wait_for_run(feeder.client, body["run_id"], finished)
    assert info["status"] == "done"


async def test_run_progresses_until_done(feeder):
    run = await start_run(feeder.client, 4)
    info = await wait_for_run(feeder.client, run["run_id"], finished)
    assert info["status"] == "done"
    assert info["cycles_done"] == 4
    assert info["first_cycle"] == 1 and info["last_cycle"] == 4
    assert info["last_timestamp"] is not None
    assert info["error"] is None
    assert info["finished_at"] >= info["started_at"]
    assert (await feeder.device_status(HOME_ID))["step"] == 4  # the run really stepped the agents
    assert (await feeder.client.get("/status")).json()["cycles"] == 4


async def test_runs_are_listed_newest_first(tmp_path, serve_app):
    client = await serve_app(empty_grid(tmp_path))
    first = await start_run(client, 2)
    await wait_for_run(client, first["run_id"], finished)
    second = await start_run(client, 1)
    await wait_for_run(client, second["run_id"], finished)
    listed = (await client.get("/runs")).json()
    assert [r["run_id"] for r in listed] == [second["run_id"], first["run_id"]]
    assert [r["status"] for r in listed] == ["done", "done"]
    assert [r["run_id"] for r in (await client.get("/runs", params={"limit": 1})).json()] == [second["run_id"]]


async def test_results_since_n_are_the_cycles_after_n(feeder):
    run = await start_run(feeder.client, 4)
    await wait_for_run(feeder.client, run["run_id"], finished)
    every = (await feeder.client.get(f"/runs/{run['run_id']}/results")).json()
    assert [r["cycle"] for r in every["results"]] == [1, 2, 3, 4]
    assert every["status"] == "done" and every["cycles_done"] == 4 and every["first_kept_cycle"] == 1
    later = (await feeder.client.get(f"/runs/{run['run_id']}/results", params={"since": 2})).json()
    assert [r["cycle"] for r in later["results"]] == [3, 4]
    assert later["results"] == every["results"][2:]
    assert set(later["results"][0]) >= {"cycle", "timestamp", "planner", "transformers", "actions", "unreachable"}
    page = (await feeder.client.get(f"/runs/{run['run_id']}/results", params={"since": 1, "limit": 2})).json()
    assert [r["cycle"] for r in page["results"]] == [2, 3]


async def test_results_follow_a_run_as_it_goes(feeder):
    held = gate(feeder)
    run = await start_run(feeder.client, 2)
    await held.reached.wait()
    during = (await feeder.client.get(f"/runs/{run['run_id']}/results")).json()
    assert during["status"] == "running" and during["results"] == [] and during["first_kept_cycle"] is None
    held.opened.set()
    await wait_for_run(feeder.client, run["run_id"], finished)
    after = (await feeder.client.get(f"/runs/{run['run_id']}/results")).json()
    assert [r["cycle"] for r in after["results"]] == [1, 2]


# -- stopping ------------------------------------------------------------------------------------
async def test_delete_stops_the_run_after_the_cycle_in_flight(feeder):
    held = gate(feeder)
    run = await start_run(feeder.client, 5, feeder.headers)
    await held.reached.wait()  # cycle 1 is in flight
    stopping = asyncio.create_task(feeder.client.delete(f"/runs/{run['run_id']}", headers=feeder.headers))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # it waits for the cycle in flight
    held.opened.set()
    response = await stopping
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["status"] == "stopped"
    assert info["stop_requested"] is True
    assert info["cycles_done"] == 1 < info["cycles"]  # the cycle in flight finished, no other began
    assert (await feeder.client.get(f"/runs/{run['run_id']}")).json()["status"] == "stopped"
    results = (await feeder.client.get(f"/runs/{run['run_id']}/results")).json()["results"]
    assert [r["cycle"] for r in results] == [1]
    assert (await feeder.device_status(HOME_ID))["step"] == 1
    assert (await feeder.client.post("/coordinate")).status_code == 200  # the feeder is free again


async def test_delete_of_a_finished_run_answers_it_as_it_is(feeder):
    run = await start_run(feeder.client, 1)
    await wait_for_run(feeder.client, run["run_id"], finished)
    response = await feeder.client.delete(f"/runs/{run['run_id']}")
    assert response.status_code == 200
    assert response.json()["status"] == "done"


# -- one at a time: the feeder -------------------------------------------------------------------
async def test_second_run_while_one_runs_is_409(feeder):
    held = gate(feeder)
    run = await start_run(feeder.client, 3)
    started = time.monotonic()
    response = await feeder.client.post("/runs", json={"cycles": 2})
    assert time.monotonic() - started < 1.0  # refused at once, not after the wait
    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "feeder_busy"
    assert "one run at a time" in body["message"]
    assert run["run_id"] in body["message"] and f"DELETE /runs/{run['run_id']}" in body["message"]
    held.opened.set()
    await wait_for_run(feeder.client, run["run_id"], finished)
    assert len((await feeder.client.get("/runs")).json()) == 1


async def test_coordinate_during_a_run_is_409_after_the_bounded_wait(make_feeder):
    feeder = await make_feeder(grid={"coordinate_wait_s": 0.3})
    held = gate(feeder)
    run = await start_run(feeder.client, 3)
    for path, body in (("/coordinate", None), ("/coordinate/batch", {"cycles": 2})):
        started = time.monotonic()
        response = await feeder.client.post(path, json=body)
        waited_s = time.monotonic() - started
        assert response.status_code == 409, response.text
        assert 0.25 <= waited_s < 2.0
        message = response.json()["message"]
        assert response.json()["error"] == "feeder_busy"
        assert "after waiting 0.3 s" in message
        assert f"run {run['run_id']} holds it (0 of 3 cycles done)" in message
        assert f"DELETE /runs/{run['run_id']}" in message
    held.opened.set()
    info = await wait_for_run(feeder.client, run["run_id"], finished)
    assert info["status"] == "done" and info["cycles_done"] == 3  # the refused requests ran no cycle
    assert (await feeder.client.get("/status")).json()["cycles"] == 3


async def test_coordinate_waits_its_turn_behind_a_short_run(make_feeder):
    feeder = await make_feeder(grid={"coordinate_wait_s": 5.0})
    held = gate(feeder)
    run = await start_run(feeder.client, 1)
    asking = asyncio.create_task(feeder.client.post("/coordinate"))
    await asyncio.sleep(0.05)
    held.opened.set()
    response = await asking
    assert response.status_code == 200, response.text
    assert response.json()["cycle"] == 2
    assert (await feeder.client.get(f"/runs/{run['run_id']}")).json()["status"] == "done"


# -- bad input -----------------------------------------------------------------------------------
async def test_coordinate_batch_over_the_cap_is_422_naming_cycles(feeder):
    response = await feeder.client.post("/coordinate/batch", json={"cycles": BATCH_CYCLES_MAX + 1})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error"
    assert [d["field"] for d in body["detail"]] == ["cycles"]
    assert "cycles" in body["message"] and str(BATCH_CYCLES_MAX) in body["message"]
    assert (await feeder.client.get("/status")).json()["cycles"] == 0


async def test_coordinate_batch_within_the_cap_runs(feeder):
    response = await feeder.client.post("/coordinate/batch", json={"cycles": 3})
    assert response.status_code == 200
    assert [r["cycle"] for r in response.json()["results"]] == [1, 2, 3]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cycles": 0}, "cycles"),
        ({"cycles": "5"}, "cycles"),
        ({"cycles": True}, "cycles"),
        ({}, "cycles"),
        ({"cycles": 2_000_000}, "cycles"),
        ({"cycles": 2, "interval": 1}, "interval"),
    ],
)
async def test_bad_run_is_422_naming_the_field(feeder, body, field):
    response = await feeder.client.post("/runs", json=body)
    assert response.status_code == 422
    assert field in {d["field"] for d in response.json()["detail"]}
    assert (await feeder.client.get("/runs")).json() == []


@pytest.mark.parametrize("params", [{"since": -1}, {"since": "x"}, {"limit": 0}, {"limit": 100_000}])
async def test_bad_results_query_is_422(feeder, params):
    run = await start_run(feeder.client, 1)
    response = await feeder.client.get(f"/runs/{run['run_id']}/results", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == next(iter(params))


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/runs/nope"), ("GET", "/runs/nope/results"), ("DELETE", "/runs/nope")]
)
async def test_unknown_run_is_404(feeder, method, path):
    response = await feeder.client.request(method, path)
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not_found"
    assert "nope" in body["message"] and "GET /runs" in body["message"]


def test_run_routes_document_their_errors(tmp_path):
    paths = empty_grid(tmp_path).openapi()["paths"]
    expected = {
        ("/runs", "post"): {"202", "401", "409", "422"},
        ("/runs", "get"): {"200", "422"},
        ("/runs/{run_id}", "get"): {"200", "404"},
        ("/runs/{run_id}/results", "get"): {"200", "404", "422"},
        ("/runs/{run_id}", "delete"): {"200", "401", "404"},
        ("/coordinate", "post"): {"200", "401", "409"},
        ("/coordinate/batch", "post"): {"200", "401", "409", "422"},
    }
    for (path, method), codes in expected.items():
        responses = paths[path][method]["responses"]
        assert codes <= set(responses), (path, method, set(responses))
        for code in codes - {"200", "202"}:
            assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


# -- durable -------------------------------------------------------------------------------------
async def test_run_in_flight_at_shutdown_is_failed_after_restart(tmp_path):
    async with running(empty_grid(tmp_path)) as client:
        run = await start_run(client, 1_000_000)
        await wait_for_run(client, run["run_id"], lambda info: info["cycles_done"] >= 3)
    async with running(empty_grid(tmp_path)) as client:
        info = (await client.get(f"/runs/{run['run_id']}")).json()
        assert info["status"] == "failed"
        assert 3 <= info["cycles_done"] < info["cycles"]
        assert "stopped during the run" in info["error"]
        assert info["finished_at"] is not None
        assert [r["run_id"] for r in (await client.get("/runs")).json()] == [run["run_id"]]
        results = (await client.get(f"/runs/{run['run_id']}/results")).json()
        assert results["results"] == [] and results["first_kept_cycle"] is None  # results live in memory only
        assert (await client.post("/runs", json={"cycles": 1})).status_code == 202  # the feeder is free


async def test_run_left_running_by_a_killed_grid_agent_is_failed_at_start(tmp_path):
    settings = make_grid_settings(tmp_path)
    store = RunStore(settings.state_dir, settings.agent_id)
    started = RunInfo(
        run_id="killed1", status=RunStatus.running, cycles=100, cycles_done=7, started_at="2025-06-01T12:00:00Z"
    )
    store.save(started)
    store.close()  # as a SIGKILL leaves it: no orderly shutdown marked it
    async with running(empty_grid(tmp_path)) as client:
        info = (await client.get("/runs/killed1")).json()
    assert info["status"] == "failed"
    assert info["cycles_done"] == 7
    assert "found unfinished when it started again" in info["error"]
    assert info["finished_at"] is not None


async def test_run_records_survive_a_restart(tmp_path):
    async with running(empty_grid(tmp_path)) as client:
        run = await start_run(client, 2)
        done = await wait_for_run(client, run["run_id"], finished)
    async with running(empty_grid(tmp_path)) as client:
        again = (await client.get(f"/runs/{run['run_id']}")).json()
    assert again == done


async def test_grid_agent_with_resume_cycles_counts_on_and_a_cut_short_cycle_keeps_its_number(tmp_path):
    first = empty_grid(tmp_path)
    async with running(first) as client:
        assert [(await client.post("/coordinate")).json()["cycle"] for _ in range(2)] == [1, 2]
    RunStore(tmp_path / "state", "grid_agent").save_cycle(3)  # cycle 3 started, then the process was killed
    resumed = empty_grid(tmp_path, resume_cycles=True)
    async with running(resumed) as client:
        assert (await client.get("/status")).json()["cycles"] == 3
        assert (await client.post("/coordinate")).json()["cycle"] == 4
    # the same run to the agents (X-Cycle-Id, command ids), so a late call of the first process steps nothing
    assert resumed.state.agent.run_id == first.state.agent.run_id
    afresh = empty_grid(tmp_path)
    async with running(afresh) as client:
        assert (await client.post("/coordinate")).json()["cycle"] == 1  # without the flag a grid agent counts afresh
    assert afresh.state.agent.run_id != first.state.agent.run_id


async def test_dashboard_history_survives_a_grid_restart_with_resume_cycles(tmp_path):
    async with running(empty_grid(tmp_path)) as client:
        for _ in range(3):
            await client.post("/coordinate")
        before = (await client.get("/dashboard/data")).json()["history"]
    assert [row["cycle"] for row in before] == [1, 2, 3]
    async with running(empty_grid(tmp_path, resume_cycles=True)) as client:  # the process killed and restarted
        assert (await client.get("/dashboard/data")).json()["history"] == before
        await client.post("/coordinate")
        after = (await client.get("/dashboard/data")).json()["history"]
    assert after[:3] == before and [row["cycle"] for row in after] == [1, 2, 3, 4]
    async with running(empty_grid(tmp_path)) as client:  # started afresh: a new run, a new history
        assert (await client.get("/dashboard/data")).json()["history"] == []


def test_kept_history_is_trimmed_to_the_dashboards_length(tmp_path):
    store = RunStore(tmp_path, "grid_agent")
    for cycle in range(1, 301):
        store.save_history_row({"cycle": cycle}, keep=150)
    assert [row["cycle"] for row in store.history(1000)] == list(range(151, 301))  # trimmed at cycle 300
    assert [row["cycle"] for row in store.history(10)] == list(range(291, 301))
    store.close()


# -- auth ----------------------------------------------------------------------------------------
async def test_runs_need_the_token_to_start_and_stop(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENT_TOKEN", TOKEN)
    async with running(empty_grid(tmp_path)) as client:
        assert (await client.post("/runs", json={"cycles": 1})).status_code == 401
        run = await start_run(client, 1_000_000, bearer(TOKEN))
        assert (await client.delete(f"/runs/{run['run_id']}")).status_code == 401
        assert (await client.get(f"/runs/{run['run_id']}")).status_code == 200  # reads stay open
        response = await client.delete(f"/runs/{run['run_id']}", headers=bearer(TOKEN))
        assert response.json()["status"] == "stopped"


async def test_401_under_a_coordinators_own_token_says_how_to_set_agent_token(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("AGENT_TOKEN_GENERATED", "1")  # as the coordinator sets it for its agents
    async with running(empty_grid(tmp_path)) as client:
        for response in (
            await client.post("/coordinate"),
            await client.post("/runs", json={"cycles": 1}, headers=bearer("wrong")),
            await client.post("/coordinate/batch", json={"cycles": 1}),
        ):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            body = response.json()
            assert body["error"] == "unauthorized"
            assert "set AGENT_TOKEN before starting" in body["message"]
            assert "run_distributed_simulation.py" in body["message"]
            assert TOKEN not in response.text


async def test_401_without_a_coordinator_says_which_token(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENT_TOKEN", TOKEN)
    monkeypatch.delenv("AGENT_TOKEN_GENERATED", raising=False)
    async with running(empty_grid(tmp_path)) as client:
        response = await client.post("/coordinate")
    assert response.status_code == 401
    assert "the AGENT_TOKEN this agent was started with" in response.json()["message"]
    assert TOKEN not in response.text
