"""The coordinator supervises its agent processes: a kill -9 mid-run costs some cycles, never the run.

Each test starts the real coordinator on free ports, waits for the grid agent to count cycle 15
of 60 (GET /status), kills one child with SIGKILL and checks that the run still completes with
exit code 0, that the summary and summary.json list the restart, the cycles that could not run
and the agents that were unreachable, and that no agent logged a step twice.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest

from agents.coordinator.supervise import Restart, RestartPolicy, Supervisor
from tests.test_e2e import (
    HOST,
    ROOT,
    child_env,
    child_pids,
    coordinator_command,
    free_port_block,
    leftover_pids,  # noqa: F401 (a fixture)
    pid_gone,
    wait_until,
)

pytestmark = pytest.mark.e2e

CYCLES = 60
KILL_AT_CYCLE = 15
RESTARTED = re.compile(r"started the (?P<name>.+?) again, pid (?P<pid>\d+)")


def run_and_kill(
    tmp_path: Path,
    leftover: list[int],
    victim: str,
    *flags: str,
    base: int,
    after_kill: Callable[[], None] = lambda: None,
) -> tuple[str, str, int]:
    """Run the coordinator, SIGKILL the child named ``victim`` at cycle 15 (then call ``after_kill``, before the
    supervisor's first restart, 0.5 s on); return its output and exit code."""
    command = coordinator_command(
        tmp_path, base, "--cycles", str(CYCLES), "--exit", "--heartbeat-s", "0.5", "--report", str(tmp_path / "r")
    )
    errors = tmp_path / "coordinator.err"
    with errors.open("w") as sink:
        process = subprocess.Popen(
            [*command, *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=sink, text=True, env=child_env(COLUMNS="200")
        )
    lines: list[str] = []  # stdout, read as it comes: the pids are on it
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60.0
        while _grid_cycles(base) < KILL_AT_CYCLE:  # a tight loop: as a run, cycles take milliseconds
            assert time.monotonic() < deadline, "the run never reached cycle 15"
            time.sleep(0.002)
        pids = child_pids("".join(lines))
        leftover.extend(pids.values())
        os.kill(pids[victim], signal.SIGKILL)
        after_kill()
        process.wait(timeout=120)
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        reader.join(timeout=5)
        err = errors.read_text()
        restarted = [int(m["pid"]) for m in RESTARTED.finditer(err)]
        leftover.extend(restarted)
    out = "".join(lines)
    for pid in [*child_pids(out).values(), *restarted]:
        assert wait_until(lambda pid=pid: pid_gone(pid), 5.0), f"pid {pid} outlived the coordinator"
    return out, err, process.returncode


def _grid_cycles(base: int) -> int:
    try:
        return httpx.get(f"http://{HOST}:{base}/status", timeout=1.0).json()["cycles"]
    except (httpx.HTTPError, ValueError):
        return 0


def faults(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "r" / "summary.json").read_text())["run"]["faults"]


def steps_once_each(log: Path) -> None:
    steps = pd.read_csv(log)["step"].tolist()
    assert steps == sorted(set(steps)), f"{log.name} logged a step twice or out of order"


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.parametrize("interval", ["0.1", "0"], ids=["paced", "as-a-run"])
def test_grid_agent_killed_at_cycle_15_of_60_the_run_completes(tmp_path, leftover_pids, interval):
    base = free_port_block()
    out, err, code = run_and_kill(tmp_path, leftover_pids, "grid agent", "--interval", interval, base=base)
    assert code == 0, out + err
    assert "Traceback" not in out + err
    found = faults(tmp_path)
    assert [(r["agent_id"], r["exit_code"]) for r in found["restarts"]] == [("grid_agent", -signal.SIGKILL)]
    assert found["restarts"][0]["down_s"] < 15
    assert found["given_up"] == []
    # the cycle cut short by the kill, if one was in flight (paced, most often none), and as a run those whose
    # results the coordinator had not fetched yet: one stretch
    lost = found["lost_cycles"]
    assert lost == list(range(lost[0], lost[-1] + 1)) if lost else True
    cycles = [json.loads(line)["cycle"] for line in (tmp_path / "r" / "cycles.jsonl").read_text().splitlines()]
    assert cycles == sorted(set(cycles)) and not set(cycles) & set(lost)
    assert sorted([*cycles, *lost]) == list(range(1, CYCLES + 1))  # every cycle has a result or is listed lost
    logged = set(pd.read_csv(tmp_path / "logs" / "grid_agent_log.csv")["cycle"])
    assert set(cycles) <= logged and max(logged) == CYCLES  # the restarted grid agent counted on
    assert not lost or f"cycles lost    {lost[0]}" in out
    assert "restart        the grid agent (grid_agent) exited with code -9" in out
    for name in ("home_1_log.csv", "battery_agent_1_log.csv"):
        steps_once_each(tmp_path / "logs" / name)


def test_home_host_killed_at_cycle_15_of_60_its_homes_are_unreachable_then_back(tmp_path, leftover_pids):
    base = free_port_block(4)
    out, err, code = run_and_kill(
        tmp_path,
        leftover_pids,
        "homes 1/2",
        "--interval",
        "0.1",
        "--homes",
        "4",
        "--homes-per-process",
        "2",
        base=base,
    )
    assert code == 0, out + err
    found = faults(tmp_path)
    assert [(r["name"], r["exit_code"]) for r in found["restarts"]] == [("homes 1/2", -signal.SIGKILL)]
    assert found["lost_cycles"] == []  # the grid agent went on
    hosted = {"home_1", "home_3"}  # shard 0 of 2 hosts homes 1 and 3
    assert set(found["unreachable"]) == hosted
    for agent_id in hosted:
        missed = found["unreachable"][agent_id]
        assert min(missed) >= KILL_AT_CYCLE and max(missed) < CYCLES, f"{agent_id} never came back"
        assert f"unreachable    {agent_id} in cycles" in out
        steps_once_each(tmp_path / "logs" / f"{agent_id}_log.csv")
    assert "restart        the homes 1/2 (home_agents_1_of_2) exited with code -9" in out


def test_home_host_killed_with_its_state_lost_starts_afresh_at_the_feeders_step(tmp_path, leftover_pids):
    """As above, with the host's state file deleted before the restart (a node's own disk, lost with it)."""
    base = free_port_block(4)

    def lose_state() -> None:
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / "state" / f"home-agents-0-of-2.sqlite3{suffix}").unlink(missing_ok=True)

    flags = ("--interval", "0.1", "--homes", "4", "--homes-per-process", "2")
    out, err, code = run_and_kill(tmp_path, leftover_pids, "homes 1/2", *flags, base=base, after_kill=lose_state)
    assert code == 0, out + err
    assert [(r["name"], r["exit_code"]) for r in faults(tmp_path)["restarts"]] == [("homes 1/2", -signal.SIGKILL)]
    cycles = pd.read_csv(tmp_path / "logs" / "grid_agent_log.csv").drop_duplicates("cycle")
    feeder_times = set(cycles["timestamp"])
    for agent_id in ("home_1", "home_3"):  # shard 0 of 2
        log = pd.read_csv(tmp_path / "logs" / f"{agent_id}_log.csv")
        steps, times = log["step"].tolist(), log["timestamp"].tolist()
        assert steps.count(1) == 2, f"{agent_id} did not start afresh: steps {steps}"
        assert times == sorted(set(times)), f"{agent_id} stepped out of the feeder's time: {times}"
        assert set(times) <= feeder_times  # every step at a time the feeder stepped
        assert times[-1] == cycles["timestamp"].iloc[-1]  # and with the feeder to its last cycle
    grid_log = (tmp_path / "logs" / "grid_agent_server.log").read_text()
    for agent_id in ("home_1", "home_3"):
        assert grid_log.count(f"agent {agent_id} joined the running feeder afresh") == 1, grid_log[-3000:]


# -- the supervisor alone ----------------------------------------------------------------------------
class FakeChild:
    """A child whose life the test decides."""

    def __init__(self) -> None:
        self.name, self.agent_id, self.url, self.code = "home agent", "home_1", "http://127.0.0.1:9", None

    def exit_code(self) -> int | None:
        return self.code


def test_supervisor_backs_off_doubling_and_gives_up_after_the_limit():
    child, starts, said = FakeChild(), [], []
    policy = RestartPolicy(max_restarts=2, first_backoff_s=0.0, max_backoff_s=0.0)
    supervisor = Supervisor([child], starts.append, httpx.Client(), policy, report=said.append)
    for _ in range(2):
        child.code = -9
        supervisor.check(child)  # sees the death
        supervisor.check(child)  # starts it again (no back-off)
        assert starts[-1] is child
        child.code = None
    child.code = -9
    supervisor.check(child)
    assert len(starts) == 2 and supervisor.given_up(child) and not supervisor.is_up(child)
    assert "gave up on the home agent (home_1) after 2 restarts (--max-restarts 2)" in said[-1]
    assert [e["gave_up"] for e in supervisor.summary()] == [True]  # one outage: it never answered /health between
    supervisor.stop()


@pytest.mark.parametrize(("restart", "wait_s"), [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (9, 8.0)])
def test_restart_policy_backoff_doubles_up_to_its_cap(restart, wait_s):
    assert RestartPolicy().backoff_s(restart) == pytest.approx(wait_s)


def test_restart_down_s_is_from_death_to_health():
    assert Restart("grid agent", "grid_agent", -9, died_s=2.0, healthy_s=3.5).down_s == pytest.approx(1.5)
    assert Restart("grid agent", "grid_agent", -9, died_s=2.0).down_s is None


def test_restart_commands_resume_instead_of_starting_afresh(tmp_path):
    from agents.coordinator.run import CoordinatorSettings, plan_children

    children = plan_children(CoordinatorSettings(log_dir=tmp_path, state_dir=tmp_path, base_port=20000))
    grid, *devices = children
    assert "--resume-cycles" in grid.restart_command and "--resume-cycles" not in grid.command
    for device in devices:
        assert "--fresh" in device.command and "--fresh" not in device.restart_command
