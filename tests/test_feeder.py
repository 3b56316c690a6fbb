"""Feeders of many homes: scenarios, the generator, processes hosting many agents, batch calls, the coordinator."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pandas as pd
import pytest
from asgi_lifespan import LifespanManager

from agents.battery import create_app as create_battery_app
from agents.common.scenario import HomeSpec, Scenario, generate_feeder, load_scenario
from agents.common.settings import StartupError
from agents.device.fastpath import BatchFastPath
from agents.grid import create_app as create_grid_app
from agents.home import create_app as create_home_app
from models.schemas import AgentReport
from tests.conftest import HostRouter, make_battery_settings, make_grid_settings, make_home_settings
from tests.test_e2e import ROOT, child_env, coordinator_command, free_port_block

SCENARIO = """\
name = "two transformers"

[[transformers]]
id = "T1"
rating_kw = 8.0
reverse_limit_kw = 4.0

[[transformers]]
id = "T2"
rating_kw = 50.0

[[homes]]
id = "h1"
transformer = "T1"
pv_kwp = 6.0
battery_kwh = 13.5
battery_kw = 5.0

[[homes]]
id = "h2"
transformer = "T1"
pv_kwp = 9.0
solar_shift_steps = 2

[[homes]]
id = "h3"
transformer = "T2"
annual_load_kwh = 9000.0

[[batteries]]
id = "store_T1"
transformer = "T1"
capacity_kwh = 30.0
power_kw = 10.0
"""


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "feeder.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


# -- the scenario and the generator ---------------------------------------------------------------
def test_load_scenario_homes_and_batteries(scenario_file):
    scenario = load_scenario(scenario_file)
    assert [h.id for h in scenario.homes] == ["h1", "h2", "h3"]
    assert scenario.homes[1].solar_shift_steps == 2
    assert scenario.homes[2].pv_kwp == 6.0  # the default
    assert [(b.id, b.capacity_kwh, b.power_kw) for b in scenario.batteries] == [("store_T1", 30.0, 10.0)]


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ('id = "h2"', 'id = "h1"', "homes[1].id 'h1' is used twice"),
        (
            'transformer = "T2"\nannual',
            'transformer = "T9"\nannual',
            "homes[2].transformer 'T9' is not one of the scenario's transformers",
        ),
        ("pv_kwp = 9.0", 'pv_kwp = "9"', "homes[1].pv_kwp: Input should be a valid number (got '9')"),
        (
            "solar_shift_steps = 2",
            "solar_shift_steps = 20",
            "homes[1].solar_shift_steps: Input should be less than or equal to 8",
        ),
        ("capacity_kwh = 30.0", "capacity_kwh = -1.0", "batteries[0].capacity_kwh: Input should be greater than 0"),
        ('id = "store_T1"', 'id = "h3"', "batteries[0].id 'h3' is used twice"),
        (
            "pv_kwp = 6.0\nbattery_kwh",
            "pv_kwp = 6.0\ncolour = 'red'\nbattery_kwh",
            "homes[0].colour: Extra inputs are not permitted",
        ),
    ],
)
def test_load_scenario_bad_entry_names_it(tmp_path, replace, by, message):
    path = tmp_path / "bad.toml"
    assert replace in SCENARIO
    path.write_text(SCENARIO.replace(replace, by, 1), encoding="utf-8")
    with pytest.raises(StartupError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "two transformers" not in str(info.value)  # names the entry, does not dump the file


def test_generate_feeder_is_deterministic_and_plausible():
    first, again = generate_feeder(200), generate_feeder(200)
    assert first == again
    assert len(first.homes) == 200 and len(first.transformers) == 10 and len(first.batteries) == 10
    assert len({h.id for h in first.homes}) == 200
    assert {h.transformer for h in first.homes} == {t.id for t in first.transformers}
    assert all(3.0 <= h.pv_kwp <= 9.0 or h.pv_kwp == 0 for h in first.homes)
    assert all(2500 <= h.annual_load_kwh <= 7000 for h in first.homes)
    assert len({(h.pv_kwp, h.annual_load_kwh, h.solar_shift_steps) for h in first.homes}) > 150  # homes differ
    assert 0.5 < sum(h.pv_kwp > 0 for h in first.homes) / 200 < 0.9
    assert generate_feeder(1000).transformers[-1].id == "T10"
    assert [(h.pv_kwp, h.annual_load_kwh) for h in generate_feeder(10).homes] == [
        (h.pv_kwp, h.annual_load_kwh) for h in first.homes[:10]
    ]


def test_generated_feeder_round_trips_through_toml(tmp_path):
    feeder = generate_feeder(30)
    path = tmp_path / "f.toml"
    path.write_text(feeder.to_toml(), encoding="utf-8")
    assert load_scenario(path) == feeder


def test_generate_feeder_refuses_no_homes():
    with pytest.raises(ValueError):
        generate_feeder(0)


# -- one process hosting many agents ----------------------------------------------------------------
async def test_host_serves_each_home_under_its_path_and_in_batches(tmp_path, scenario_file):
    app = create_home_app(
        make_home_settings(tmp_path, scenario=scenario_file, start="2025-07-15T12:00"), register=False
    )
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://homes") as c,
    ):
        root = (await c.get("/")).json()
        assert root["agent_ids"] == ["h1", "h2", "h3"]
        assert (await c.get("/health")).json()["status"] == "ok"
        assert (await c.get("/agents/h2/health")).json() == {"status": "ok", "agent_id": "h2", "agent_type": "home"}
        assert (await c.get("/agents/nobody/status")).status_code == 404
        stepped = (await c.post("/batch/simulate", json={"agent_ids": ["h1", "h2", "h3", "nobody"]})).json()
        by_id = {s["agent_id"]: s for s in stepped["statuses"]}
        assert set(by_id) == {"h1", "h2", "h3"}
        assert stepped["errors"] == [{"agent_id": "nobody", "command_id": None, "error": "not hosted here"}]
        assert by_id["h2"]["solar"]["capacity_kwp"] == 9.0 and by_id["h2"]["transformer_id"] == "T1"
        assert by_id["h3"]["battery"] is None
        assert by_id["h3"]["load"]["demand_kw"] == pytest.approx(
            2 * by_id["h1"]["load"]["demand_kw"]
        )  # 9,000 against 4,500 kWh
        assert (await c.get("/agents/h1/status")).json()["step"] == 1

        command = {"command_id": "c1", "action": "curtail_solar", "power_kw": 1.0}
        single = (await c.post("/agents/h2/curtail", json=command)).json()
        assert single["status"] == "applied"
        batch = (
            await c.post(
                "/batch/curtail",
                json={
                    "commands": [
                        {"agent_id": "h2", "command": command},
                        {"agent_id": "h1", "command": {**command, "command_id": "c2"}},
                    ]
                },
            )
        ).json()
        assert [r["status"] for r in batch["results"]] == ["duplicate", "applied"]
        assert (await c.get("/agents/h2/status")).json()["solar"]["curtailed_kw"] == pytest.approx(1.0)
    for home in ("h1", "h2", "h3"):
        log = pd.read_csv(tmp_path / "logs" / f"{home}_log.csv")
        assert log["step"].tolist() == [1]
    assert (tmp_path / "state" / "home-agents-0-of-1.sqlite3").exists()


async def _raw_post(app, path: str, chunks: list[bytes], headers: dict[str, str]) -> tuple[int, bytes]:
    """POST through the app's ASGI callable with the body in ``chunks``, as a server streams a large body."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("homes", 80),
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_batch_routes_answer_as_fastapi_does(tmp_path, scenario_file, monkeypatch):
    """The batch routes' fast path answers a good request as the FastAPI route does, and leaves every
    other request (wrong token, invalid body, not JSON) to FastAPI's own errors."""
    monkeypatch.setenv("AGENT_TOKEN", "s3cret")
    answers = []
    for fast in (True, False):
        # the same folders (each start is --fresh): the answers name the state file in start_note
        settings = make_home_settings(tmp_path, scenario=scenario_file, start="2025-07-15T12:00")
        app = create_home_app(settings, register=False)
        headers = {"authorization": "Bearer s3cret", "content-type": "application/json"}
        if not fast:  # every request left to FastAPI's route
            monkeypatch.setattr(BatchFastPath, "_answer", lambda *_: None)
        async with LifespanManager(app):
            body = b'{"agent_ids": ["h1", "h2", "nobody"]}'
            answers.append(await _raw_post(app, "/batch/simulate", [body[:9], body[9:]], headers))
    assert answers[0][0] == answers[1][0] == 200
    assert answers[0][1] == answers[1][1]  # the same JSON, byte for byte

    monkeypatch.undo()
    monkeypatch.setenv("AGENT_TOKEN", "s3cret")
    app = create_home_app(make_home_settings(tmp_path / "errors", scenario=scenario_file), register=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://homes") as c,
    ):
        wrong = await c.post("/batch/simulate", json={"agent_ids": ["h1"]}, headers={"Authorization": "Bearer no"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        invalid = await c.post(
            "/batch/curtail", json={"commands": [{"agent_id": "h1"}]}, headers={"Authorization": "Bearer s3cret"}
        )
        assert invalid.status_code == 422 and "commands.0.command" in invalid.json()["message"]
        text = await c.post(
            "/batch/simulate",
            content=b'{"agent_ids": ["h1"]}',
            headers={"Authorization": "Bearer s3cret", "Content-Type": "text/plain"},
        )
        assert text.status_code == 422 and text.json()["error"] == "validation_error"
        assert (await c.get("/agents/h1/status")).json()["step"] == 0  # nothing refused was stepped


async def test_batch_answers_leave_the_start_note_to_status(tmp_path, scenario_file):
    app = create_home_app(make_home_settings(tmp_path, scenario=scenario_file), register=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://homes") as c,
    ):
        stepped = (await c.post("/batch/simulate", json={"agent_ids": ["h1", "h2"]})).json()["statuses"]
        commanded = (
            await c.post(
                "/batch/curtail",
                json={
                    "commands": [
                        {"agent_id": "h1", "command": {"command_id": "c1", "action": "shed_load", "power_kw": 0.1}}
                    ]
                },
            )
        ).json()["results"]
        status = (await c.get("/agents/h1/status")).json()
    assert [("start_note" in s, s["started_from"]) for s in stepped] == [(False, "start"), (False, "start")]
    assert ("start_note" in commanded[0]["agent_status"], commanded[0]["agent_status"]["started_from"]) == (
        False,
        "start",
    )
    assert status["started_from"] == "start" and status["start_note"].startswith("--fresh: started without the state")


async def test_an_agent_steps_at_most_once_a_cycle(tmp_path, scenario_file):
    """``X-Cycle-Id``: a repeated call for a cycle, or a late one for an earlier cycle of the same grid agent's run
    (a request the grid agent gave up on, delivered after a partition healed), steps nothing; a new run does."""
    app = create_home_app(make_home_settings(tmp_path, scenario=scenario_file), register=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://homes") as c,
    ):

        async def batch(cycle_id: str) -> int:
            answer = await c.post("/batch/simulate", json={"agent_ids": ["h1"]}, headers={"X-Cycle-Id": cycle_id})
            assert answer.status_code == 200, answer.text
            return answer.json()["statuses"][0]["step"]

        async def single(cycle_id: str) -> int:
            answer = await c.post("/agents/h2/simulate", headers={"X-Cycle-Id": cycle_id})
            assert answer.status_code == 200, answer.text
            return answer.json()["step"]

        for step in (batch, single):
            assert [await step(i) for i in ("run1:1", "run1:1", "run1:2", "run1:1", "run1:3")] == [1, 1, 2, 2, 3]
            assert await step("run2:1") == 4  # a restarted grid agent: a new run, counting from 1 again
        assert (await c.post("/batch/simulate", json={"agent_ids": ["h1"]})).json()["statuses"][0]["step"] == 5
        bad = await c.post("/batch/simulate", json={"agent_ids": ["h1"]}, headers={"X-Cycle-Id": "run 1"})
        assert bad.status_code == 422 and "x-cycle-id" in bad.json()["message"]
        assert (await c.get("/agents/h1/status")).json()["step"] == 5

    again = create_home_app(make_home_settings(tmp_path, scenario=scenario_file, fresh=False), register=False)
    async with LifespanManager(again):  # a restart keeps the last cycle stepped for with the state
        assert again.state.agents["h1"].simulate("run2:1").step == 5


async def test_shards_split_the_homes(tmp_path, scenario_file):
    hosted = []
    for shard in ("0/2", "1/2"):
        app = create_home_app(make_home_settings(tmp_path, scenario=scenario_file, shard=shard), register=False)
        async with LifespanManager(app):
            hosted.append(sorted(app.state.agents))
    assert hosted == [["h1", "h3"], ["h2"]]


def test_empty_shard_is_a_startup_error(tmp_path, scenario_file):
    with pytest.raises(StartupError, match="shard 3/4 has no home agents"):
        create_home_app(make_home_settings(tmp_path, scenario=scenario_file, shard="3/4"), register=False)


async def test_solar_shift_moves_the_profile(tmp_path):
    scenario = Scenario(
        transformers=[],
        homes=[HomeSpec(id="a", transformer="T1"), HomeSpec(id="b", transformer="T1", solar_shift_steps=2)],
    )
    path = tmp_path / "s.toml"
    path.write_text(scenario.to_toml(), encoding="utf-8")
    app = create_home_app(make_home_settings(tmp_path, scenario=path, start="2025-07-15T08:00"), register=False)
    async with LifespanManager(app):
        a, b = app.state.agents["a"], app.state.agents["b"]
        seen = []
        for _ in range(3):
            seen.append((a.simulate().solar.available_kw, b.simulate().solar.available_kw))
    assert seen[2][1] == pytest.approx(seen[0][0])  # b sees a's morning two steps late


# -- the grid agent in front of hosting processes ------------------------------------------------------
async def test_grid_steps_and_commands_hosted_agents_in_batches(tmp_path, scenario_file):
    homes = create_home_app(
        make_home_settings(tmp_path, scenario=scenario_file, start="2025-07-15T12:00"), register=False
    )
    storage = create_battery_app(
        make_battery_settings(tmp_path, scenario=scenario_file, start="2025-07-15T12:00"), register=False
    )
    router = HostRouter({"homes": httpx.ASGITransport(app=homes), "storage": httpx.ASGITransport(app=storage)})
    grid = create_grid_app(make_grid_settings(tmp_path, scenario=scenario_file), transport=router)
    async with LifespanManager(homes), LifespanManager(storage), LifespanManager(grid):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=grid), base_url="http://grid") as c:
            reports = [
                AgentReport(
                    url=f"http://{host}/agents/{agent.agent_id}", batch_url=f"http://{host}", status=agent.status()
                ).model_dump(mode="json")
                for host, app in (("homes", homes), ("storage", storage))
                for agent in app.state.agents.values()
            ]
            assert (await c.post("/registrations", json={"reports": reports})).json()["registered"] == 4
            agents = {a["agent_id"]: a for a in (await c.get("/agents")).json()}
            assert agents["h1"]["batch_url"] == "http://homes"
            result = (await c.post("/coordinate")).json()
    assert result["agents_stepped"] == 4
    t1 = next(t for t in result["transformers"] if t["transformer_id"] == "T1")
    assert t1["state_before"] == "reverse_power_flow"  # midday: 15 kWp on a 4 kW reverse limit
    assert t1["state_after"] == "normal"
    assert t1["loading_after_kw"] == pytest.approx(-4.0)
    assert {a["agent_id"] for a in result["actions"]} <= {"h1", "h2", "store_T1"}
    calls = [path for _, path in router.calls]
    assert calls.count("/batch/simulate") == 2  # one request per hosting process
    assert "/simulate" not in calls and "/agents/h1/simulate" not in calls
    assert calls.count("/batch/curtail") >= 1


async def test_grid_lists_every_agent_of_a_failed_host_as_unreachable(tmp_path, scenario_file):
    homes = create_home_app(make_home_settings(tmp_path, scenario=scenario_file), register=False)
    router = HostRouter({"homes": httpx.ASGITransport(app=homes)})
    grid = create_grid_app(make_grid_settings(tmp_path, scenario=scenario_file), transport=router)
    async with LifespanManager(homes), LifespanManager(grid):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=grid), base_url="http://grid") as c:
            reports = [
                AgentReport(
                    url=f"http://homes/agents/{a.agent_id}", batch_url="http://homes", status=a.status()
                ).model_dump(mode="json")
                for a in homes.state.agents.values()
            ]
            await c.post("/registrations", json={"reports": reports})
            router.take_down("homes")
            result = (await c.post("/coordinate")).json()
            agents = (await c.get("/agents")).json()
    assert result["unreachable"] == ["h1", "h2", "h3"]
    assert not any(a["healthy"] for a in agents)
    t1 = next(t for t in result["transformers"] if t["transformer_id"] == "T1")
    assert (t1["agents_reporting"], t1["agents_unreachable"]) == (0, 2)


# -- the coordinator with a generated feeder --------------------------------------------------------------
@pytest.mark.e2e
def test_coordinator_runs_a_generated_feeder_over_several_processes(tmp_path):
    base = free_port_block(6)
    command = coordinator_command(
        tmp_path, base, "--homes", "12", "--homes-per-process", "5", "--cycles", "4", "--interval", "0", "--exit"
    )
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=child_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("up homes") == 3  # ceil(12 / 5) home processes
    assert "up storage" in result.stdout
    scenario = load_scenario(tmp_path / "logs" / "feeder.toml")
    assert len(scenario.homes) == 12
    grid_log = pd.read_csv(tmp_path / "logs" / "grid_agent_log.csv")
    assert grid_log["cycle"].max() == 4
    assert (
        grid_log["agents_reporting"].groupby(grid_log["cycle"]).sum() == 13
    ).all()  # 12 homes and the storage system
    for home in scenario.homes:
        assert len(pd.read_csv(tmp_path / "logs" / f"{home.id}_log.csv")) == 4
