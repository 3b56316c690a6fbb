"""The DeviceAgent state machine without HTTP: steps, commands that hold and expire, fail-safe, restarts, the log.

Homes and storage systems are built straight from their settings (conftest's ``DeviceKind``), and each
test that is not about one kind runs for both. Nothing here starts an app or a server.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pytest import approx

from agents.common.errors import ConflictError
from agents.common.settings import StartupError
from agents.device.agent import DeviceAgent
from agents.device.home import HomeAgent
from models.schemas import AgentStatus, CommandStatus, CurtailCommand, FeederClock, StartedFrom
from tests.conftest import (
    BATTERY_KIND,
    DEVICE_KINDS,
    HOME_CSV,
    HOME_DAY_START,
    HOME_KIND,
    DeviceKind,
    make_home_settings,
)

STEP = timedelta(minutes=15)


@pytest.fixture(params=[pytest.param(k, id=k.name) for k in DEVICE_KINDS])
def kind(request: pytest.FixtureRequest) -> DeviceKind:
    """Each kind of device agent; a test that needs kind-specific facts parametrises ``kind`` itself."""
    return request.param


class Agents:
    """Builds agents of one kind on its small data file; closes at teardown those a test left open."""

    def __init__(self, kind: DeviceKind, tmp_path: Path) -> None:
        self.kind, self.tmp_path = kind, tmp_path
        self.data_file = tmp_path / f"{kind.name}_data.csv"
        self.data_file.write_text(kind.csv, encoding="utf-8")
        self.open: list[DeviceAgent] = []

    def __call__(self, **overrides: Any) -> DeviceAgent:
        """A new agent; logs and state under tmp_path, a fresh start unless ``fresh=False``."""
        settings = self.kind.make_settings(self.tmp_path, data_file=self.data_file, **overrides)
        return self._keep(self.kind.agent_class(settings))

    def restart(self, agent: DeviceAgent) -> DeviceAgent:
        """Close an agent as its process shuts down, then start it again with the same settings."""
        self.close(agent)
        return self.resume(agent)

    def resume(self, agent: DeviceAgent) -> DeviceAgent:
        """Start again, from its saved state, an agent that was shut down or killed."""
        return self._keep(self.kind.agent_class(agent.settings.model_copy(update={"fresh": False})))

    def close(self, agent: DeviceAgent) -> None:
        self.open.remove(agent)
        agent.close()

    def abandon(self, agent: DeviceAgent) -> None:
        """Forget an agent without closing it, as a killed process does."""
        self.open.remove(agent)

    def _keep(self, agent: DeviceAgent) -> DeviceAgent:
        self.open.append(agent)
        return agent


@pytest.fixture
def agents(kind: DeviceKind, tmp_path: Path) -> Iterator[Agents]:
    made = Agents(kind, tmp_path)
    yield made
    for agent in list(made.open):
        made.close(agent)


def command(action: str, power_kw: float, command_id: str, **end: Any) -> CurtailCommand:
    """A command as the grid agent sends it; ``end`` is ``duration_s=`` or ``valid_until=``."""
    return CurtailCommand(command_id=command_id, action=action, power_kw=power_kw, **end)


def figure(status: AgentStatus, path: str) -> Any:
    """A status's ``"module.figure"`` or top-level ``"figure"``."""
    for name in path.split("."):
        status = getattr(status, name)
    return status


def logged_steps(kind: DeviceKind, tmp_path: Path) -> list[int]:
    return pd.read_csv(tmp_path / "logs" / f"{kind.agent_id}_log.csv")["step"].tolist()


# -- simulate ------------------------------------------------------------------------------------
def test_simulate_advances_step_and_timestamp_through_the_data(agents, kind):
    agent = agents()
    assert (agent.step, agent.timestamp) == (0, None)
    first, second = agent.simulate(), agent.simulate()
    assert (first.step, second.step) == (1, 2)
    assert first.timestamp == datetime.fromisoformat(kind.first_start)
    assert second.timestamp - first.timestamp == STEP
    assert (agent.step, agent.timestamp) == (2, second.timestamp)
    assert agent.current_status() == second


@pytest.mark.parametrize(
    ("kind", "battery_power_kw"),
    [
        pytest.param(HOME_KIND, 3.0, id="home"),  # sunny: it stores the 4 kW - 1 kW surplus
        pytest.param(BATTERY_KIND, 25.0, id="battery"),  # cheap: it charges at full power
    ],
)
def test_simulate_runs_the_local_policy(agents, kind, battery_power_kw):
    status = agents(start=kind.active_start).simulate()
    assert status.battery.power_kw == approx(battery_power_kw)
    assert (status.control, status.control_reason, status.active_commands) == ("local", None, [])


# -- curtail: idempotency ------------------------------------------------------------------------
def test_curtail_applies_a_command_once_and_answers_a_repeat_as_duplicate(agents, kind):
    agent = agents(start=kind.active_start)
    agent.simulate()
    action, power_kw = kind.command
    first = agent.curtail(command(action, power_kw, "once"))
    after = agent.current_status()
    again = agent.curtail(command(action, power_kw, "once"))
    assert first.status is CommandStatus.applied
    assert again.status is CommandStatus.duplicate
    assert again.applied_kw == first.applied_kw == power_kw
    assert agent.current_status() == after  # moved once, not twice
    assert agent.commands_this_step == 1


def test_curtail_reusing_an_id_with_another_body_raises_conflict(agents, kind):
    agent = agents(start=kind.active_start)
    agent.simulate()
    action, power_kw = kind.command
    agent.curtail(command(action, power_kw, "reused"))
    before = agent.current_status()
    with pytest.raises(ConflictError, match="reused"):
        agent.curtail(command(action, 2 * power_kw, "reused"))
    with pytest.raises(ConflictError, match="reused"):
        agent.curtail(command(action, power_kw, "reused", duration_s=3600))
    assert agent.current_status() == before


# -- commands that hold and expire ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "action", "power_kw", "moved", "held", "local"),
    [
        # sunny rows: 1.5 of 4 kW curtailed while the command holds, none after
        pytest.param(HOME_KIND, "curtail_solar", 1.5, "solar.curtailed_kw", [1.5, 1.5], 0.0, id="home"),
        # cheap (+25 kW), middling (0 kW), then dear (-25 kW) rows, each less 10 kW while the command holds
        pytest.param(BATTERY_KIND, "discharge_battery", 10.0, "battery.power_kw", [15.0, -10.0], -25.0, id="battery"),
    ],
)
def test_command_with_a_duration_holds_over_later_steps_then_ends(agents, kind, action, power_kw, moved, held, local):
    agent = agents(start=kind.active_start)
    start = agent.simulate().timestamp
    ends = start + timedelta(minutes=30)
    result = agent.curtail(command(action, power_kw, "hold-30min", duration_s=1800))
    assert result.status is CommandStatus.applied
    assert [c.command_id for c in result.agent_status.active_commands] == ["hold-30min"]
    assert agent.active["hold-30min"].valid_until == ends
    assert figure(result.agent_status, moved) == approx(held[0])
    assert result.agent_status.control == "grid"

    second = agent.simulate()  # still held: re-applied after the local policy
    assert figure(second, moved) == approx(held[1])
    assert second.control == "grid"

    third = agent.simulate()  # at its end: gone
    assert figure(third, moved) == approx(local)
    assert (third.control, third.active_commands) == ("local", [])
    assert third.control_reason == f"command hold-30min ended at {ends.isoformat()}"


def test_command_without_an_end_holds_for_this_step_only(agents, kind):
    agent = agents(start=kind.active_start)
    twin = agents(start=kind.active_start, agent_id=f"{kind.agent_id}_twin")  # never commanded
    agent.simulate()
    twin.simulate()
    agent.curtail(command(*kind.command, "one-step"))
    assert agent.active == {}
    assert agent.current_status().control == "grid"
    after, alone = agent.simulate(), twin.simulate()
    assert (after.control, after.active_commands, agent.commands_this_step) == ("local", [], 0)
    assert after.net_power_kw == approx(alone.net_power_kw)


@pytest.mark.parametrize("ago", [STEP, timedelta(0)], ids=["a-step-ago", "now"])
def test_expired_command_is_rejected_and_changes_nothing(agents, kind, ago):
    agent = agents(start=kind.active_start)
    now = agent.simulate().timestamp
    before = agent.current_status()
    result = agent.curtail(command(*kind.command, "late", valid_until=now - ago))
    assert result.status is CommandStatus.rejected
    assert result.applied_kw == 0.0
    assert result.reason == f"expired: valid until {(now - ago).isoformat()}, the agent is at {now.isoformat()}"
    assert agent.current_status() == before
    assert (agent.active, agent.commands_this_step) == ({}, 0)


# -- fail-safe -----------------------------------------------------------------------------------
def test_silent_grid_agent_makes_the_agent_revert_to_its_local_policy(agents, kind):
    agent = agents(start=kind.active_start)
    local = agent.simulate()
    agent.heard_from_grid()
    agent.curtail(command(*kind.command, "hold-1h", duration_s=3600))
    assert agent.current_status().control == "grid"
    assert not agent.check_fail_safe()  # heard from just now
    agent.last_grid_contact -= agent.settings.fail_safe_after_s + 1  # and silent ever since
    assert agent.check_fail_safe()
    safe = agent.current_status()
    assert (safe.control, safe.active_commands) == ("local", [])
    assert safe.control_reason.startswith("fail-safe: no word from the grid agent for")
    assert (agent.active, agent.commands_this_step) == ({}, 0)
    assert safe.net_power_kw == approx(local.net_power_kw)
    assert safe.battery.power_kw == approx(local.battery.power_kw)
    assert not agent.check_fail_safe()  # nothing left to drop
    assert agent.simulate().control == "local"  # the dropped command stays dropped


def test_fail_safe_needs_commands_and_a_grid_agent_that_went_silent(agents, kind):
    unheard = agents(start=kind.active_start)  # never heard from a grid agent: run by hand, nothing to fall back from
    unheard.simulate()
    unheard.curtail(command(*kind.command, "by-hand", duration_s=3600))
    assert not unheard.check_fail_safe()
    assert unheard.current_status().control == "grid"
    idle = agents(start=kind.active_start, agent_id=f"{kind.agent_id}_idle")  # silent grid agent, no commands
    idle.simulate()
    idle.heard_from_grid()
    idle.last_grid_contact -= idle.settings.fail_safe_after_s + 1
    assert not idle.check_fail_safe()
    assert idle.current_status().control_reason is None


# -- restarts ------------------------------------------------------------------------------------
def test_restart_resumes_step_operating_point_commands_and_answered_ids(agents, kind):
    agent = agents(start=kind.active_start)
    agent.simulate()
    agent.simulate()
    action, power_kw = kind.command
    held = agent.curtail(command(action, power_kw, "hold-1h", duration_s=3600))
    before = agent.current_status()
    resumed = agents.restart(agent)
    where = {"started_from", "start_note"}  # where it started: from its --start, then from its saved state
    # step, timestamp, SoC, the commanded operating point, control
    assert resumed.current_status().model_dump(exclude=where) == before.model_dump(exclude=where)
    assert (resumed.step, resumed.commands_this_step, list(resumed.active)) == (2, 1, ["hold-1h"])
    again = resumed.curtail(command(action, power_kw, "hold-1h", duration_s=3600))
    assert again.status is CommandStatus.duplicate
    assert again.applied_kw == held.applied_kw
    with pytest.raises(ConflictError):
        resumed.curtail(command(action, 2 * power_kw, "hold-1h", duration_s=3600))
    nxt = resumed.simulate()
    assert (nxt.step, nxt.timestamp) == (3, before.timestamp + STEP)
    assert [c.command_id for c in nxt.active_commands] == ["hold-1h"]


def test_fresh_start_discards_the_saved_state(agents, kind):
    agent = agents(start=kind.active_start)
    agent.simulate()
    agent.curtail(command(*kind.command, "before", duration_s=3600))
    agents.close(agent)
    again = agents(start=kind.active_start, fresh=True)
    assert (again.step, again.timestamp, again.active) == (0, None, {})
    assert again.current_status().battery.soc_fraction == approx(0.5)
    again.simulate()
    assert again.curtail(command(*kind.command, "before", duration_s=3600)).status is CommandStatus.applied


def test_state_from_the_previous_release_resumes_or_is_a_clear_error(tmp_path):
    data = tmp_path / "home.csv"
    data.write_text(HOME_CSV, encoding="utf-8")
    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "home_1.sqlite3") as db:  # the seed's layout, one agent per file
        db.execute("CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL)")
        db.execute("CREATE TABLE commands (command_id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        db.execute("INSERT INTO state VALUES (1, ?)", (json.dumps({"step": 2, "logged_step": 1, "start_index": 2}),))
    settings = make_home_settings(tmp_path, data_file=data, start=HOME_DAY_START, fresh=False)
    try:
        agent = HomeAgent(settings)
    except StartupError as exc:
        assert "home_1.sqlite3" in str(exc)
    else:
        assert agent.step == 2
        agent.close()


# -- where it starts: --start, its saved state, or the running feeder's step ------------------------
def clock(timestamp: str, cycle: int = 5, run_id: str = "run1", step_s: float = 900.0) -> FeederClock:
    """The grid agent's clock: as of ``cycle`` of ``run_id`` the feeder stood at ``timestamp``."""
    return FeederClock(run_id=run_id, cycle=cycle, timestamp=datetime.fromisoformat(timestamp), step_s=step_s)


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        pytest.param({"fresh": False}, "no saved state in", id="nothing-saved"),
        pytest.param({"fresh": True}, "--fresh: started without the state in", id="fresh"),
    ],
)
def test_new_agent_starts_at_start_and_says_so(agents, kind, overrides, why):
    agent = agents(start=kind.active_start, **overrides)
    status = agent.current_status()
    start = datetime.fromisoformat(kind.active_start)
    assert status.started_from is StartedFrom.start
    assert status.start_note == f"{why} {agent.store.path}; a new run, started at --start {start.isoformat()}"
    agent.follow_feeder(None)  # a new run: the grid agent has no clock yet
    assert agent.simulate().timestamp == start
    assert agent.current_status().started_from is StartedFrom.start


def test_restarted_agent_says_it_resumed_from_saved_state_and_never_jumps(agents, kind):
    agent = agents(start=kind.active_start)
    agent.simulate()
    before = agent.simulate()
    resumed = agents.restart(agent)
    status = resumed.current_status()
    assert status.started_from is StartedFrom.saved_state
    assert status.start_note == (
        f"resumed at step 2 ({before.timestamp.isoformat()}) from its state in {resumed.store.path}"
    )
    resumed.follow_feeder(clock("2025-06-01T01:00:00"))  # another time: a resumed agent keeps its own
    assert resumed.simulate("run1:6").timestamp == before.timestamp + STEP
    assert resumed.current_status().started_from is StartedFrom.saved_state


def test_stepped_agent_never_jumps_to_the_feeder(agents, kind):
    agent = agents(start=kind.first_start)
    first = agent.simulate()
    agent.follow_feeder(clock("2025-06-01T01:00:00"))
    assert agent.simulate().timestamp == first.timestamp + STEP
    assert agent.current_status().started_from is StartedFrom.start


def test_new_agent_on_a_running_feeder_starts_at_its_next_step(agents, kind):
    agent = agents(start=kind.first_start, fresh=False)
    agent.follow_feeder(clock("2025-06-01T00:30:00"))
    waiting = agent.current_status()
    assert (waiting.step, waiting.timestamp, waiting.started_from) == (0, None, StartedFrom.feeder)
    assert waiting.start_note == (
        f"no saved state in {agent.store.path}; started afresh at the feeder's step 2025-06-01T00:45:00"
    )
    stepped = agent.simulate("run1:6")
    assert (stepped.step, stepped.timestamp) == (1, datetime(2025, 6, 1, 0, 45))
    assert stepped.temp_air_c == approx(20.0 if kind is HOME_KIND else -10.0)  # the data's row at 00:45
    assert agent.simulate("run1:7").timestamp == datetime(2025, 6, 1, 1, 0)
    assert stepped.started_from is StartedFrom.feeder


@pytest.mark.parametrize(
    ("cycle_id", "expected"),
    [
        pytest.param("run1:8", "2025-06-01T01:15:00", id="three-cycles-on"),  # cycles ran between answer and step
        pytest.param("run1:6", "2025-06-01T00:45:00", id="next-cycle"),
        pytest.param("run2:1", "2025-06-01T00:45:00", id="another-run"),  # its numbers say nothing of the clock's
        pytest.param(None, "2025-06-01T00:45:00", id="no-cycle-id"),  # a POST /simulate by hand
    ],
)
def test_first_step_lands_on_the_feeders_step_in_the_cycle_that_makes_it(agents, kind, cycle_id, expected):
    agent = agents(start=kind.first_start)
    agent.follow_feeder(clock("2025-06-01T00:30:00", cycle=5))
    stepped = agent.simulate(cycle_id)
    assert stepped.timestamp == datetime.fromisoformat(expected)
    assert stepped.start_note.endswith(f"started afresh at the feeder's step {expected}")


@pytest.mark.parametrize(
    ("feeder_at", "expected", "caveat"),
    [
        pytest.param(
            "2025-06-03T00:30:00",  # 2 days on: row 194, which wraps to row 194 % len
            "2025-06-03T00:45:00",
            "2025-06-03T00:45:00 is outside its data (2025-06-01T00:00:00 to {last}): its data wraps, row {row} of {n}",
            id="past-its-end",
        ),
        pytest.param(
            "2025-06-01T00:22:00",
            "2025-06-01T00:30:00",
            "2025-06-01T00:37:00 falls between two rows of its data: it takes the one before",
            id="between-rows",
        ),
    ],
)
def test_feeder_time_its_data_lacks_wraps_or_takes_the_row_before_and_says_so(
    agents, kind, feeder_at, expected, caveat
):
    agent = agents(start=kind.first_start)
    n = len(agent.data)
    agent.follow_feeder(clock(feeder_at))
    next_at = datetime.fromisoformat(feeder_at) + STEP
    row = int((next_at - agent.data.start) / STEP)
    last = agent.data.timestamp(n - 1).isoformat()
    assert agent.current_status().start_note.endswith(caveat.format(last=last, row=row % n, n=n))
    stepped = agent.simulate()
    assert stepped.timestamp == datetime.fromisoformat(expected)
    assert stepped.temp_air_c == approx(agent.data.row(row)["temp_air_c"])


def test_feeder_with_another_step_length_is_named_in_the_note(agents, kind):
    agent = agents(start=kind.first_start)
    agent.follow_feeder(clock("2025-06-01T00:00:00", step_s=1800.0))
    assert agent.current_status().start_note.endswith(
        "started afresh at the feeder's step 2025-06-01T00:30:00; its data's step (900 s) is not the feeder's (1800 s)"
    )
    assert agent.simulate().timestamp == datetime(2025, 6, 1, 0, 30)


# -- the step log --------------------------------------------------------------------------------
def test_each_step_is_logged_once_when_it_is_final(agents, kind, tmp_path):
    agent = agents(start=kind.active_start)
    agent.simulate()
    assert logged_steps(kind, tmp_path) == []  # step 1 may still take commands
    agent.simulate()
    assert logged_steps(kind, tmp_path) == [1]
    assert agent.curtail(command(*kind.command, "late")).status is CommandStatus.applied
    resumed = agents.restart(agent)  # shutting down writes step 2's row, with its command
    assert logged_steps(kind, tmp_path) == [1, 2]
    agents.close(resumed)  # nothing new to write
    log = pd.read_csv(tmp_path / "logs" / f"{kind.agent_id}_log.csv")
    assert log["step"].tolist() == [1, 2]
    assert log["commands"].tolist() == [0, 1]


def test_crash_between_log_row_and_commit_repeats_no_row(agents, kind, tmp_path):
    """A kill after a finished step's row is written but before the next step is committed."""
    agent = agents(start=kind.active_start)
    agent.simulate()
    agent.simulate()

    def killed(*args: Any, **kwargs: Any) -> None:
        raise SystemExit("killed")  # the process dies here; nothing after this line runs

    agent.store.save = killed
    with pytest.raises(SystemExit):
        agent.simulate()  # writes step 2's row, then dies before committing step 3
    agents.abandon(agent)
    agent.log.close()
    resumed = agents.resume(agent)
    assert resumed.step == 2
    resumed.simulate()
    agents.close(resumed)
    assert logged_steps(kind, tmp_path) == [1, 2, 3]
