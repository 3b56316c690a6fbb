"""End to end: the real agent scripts and the coordinator as subprocesses on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 30.0
REGISTER_TIMEOUT_S = 10.0
PID_LINE = re.compile(r"^up\s+(?P<name>.+?)\s+http://127\.0\.0\.1:(?P<port>\d+)\s+pid (?P<pid>\d+)\s*$", re.MULTILINE)


# -- ports, processes, waiting -------------------------------------------------------------------
def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nobody holds right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def free_port_block(count: int = 3) -> int:
    """The first of ``count`` consecutive free loopback ports, from a random base in 20000-60000."""
    for _ in range(200):
        base = random.randint(20000, 60000 - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    pytest.fail(f"no {count} consecutive free ports found")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: no token, OpenAI key or EMS_* settings from outside; unbuffered output."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AGENT_TOKEN", "OPENWEATHERMAP_API_KEY") and not k.startswith(("EMS_", "OPENAI_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stop(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone within the grace period."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pid_gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this id."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.1) -> Any:
    """Poll until the predicate is truthy; return its value, or the last falsy one at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


@dataclass
class Agent:
    """One agent server started by a test."""

    script: str
    port: int
    process: subprocess.Popen
    output: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"{self.script} exited with {self.process.returncode} during start-up:\n{self.text()[-2000:]}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        pytest.fail(
            f"{self.script} did not answer /health on port {self.port} within {timeout_s:g} s:\n{self.text()[-2000:]}"
        )


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Start agent scripts on free ports with logs and state under tmp_path (``env``: more environment for the
    child); every one is stopped afterwards."""
    started: list[Agent] = []

    def start(script: str, *args: str, port: int | None = None, env: dict[str, str] | None = None) -> Agent:
        port = port or free_port()
        output = tmp_path / f"{Path(script).stem}-{len(started)}.out"
        with output.open("w", encoding="utf-8") as sink:
            command = [
                sys.executable,
                script,
                "--port",
                str(port),
                "--log-dir",
                str(tmp_path / "logs"),
                "--state-dir",
                str(tmp_path / "state"),
                *args,
            ]
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(**(env or {})),
            )
        agent = Agent(script, port, process, output)
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in reversed(started):
            stop(agent.process)


@pytest.fixture
def leftover_pids() -> Iterator[list[int]]:
    """PIDs a coordinator reported; any still alive at teardown are killed so that a failure leaves nothing behind."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            if not pid_gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def registered(grid: Agent, *agent_ids: str) -> bool:
    try:
        agents = {a["agent_id"]: a for a in httpx.get(f"{grid.url}/agents", timeout=1.0).json()}
    except (httpx.HTTPError, ValueError):
        return False
    return all(agents.get(agent_id, {}).get("healthy") for agent_id in agent_ids)


def coordinate(grid: Agent) -> dict:
    response = httpx.post(f"{grid.url}/coordinate", timeout=10.0)
    assert response.status_code == 200, response.text
    return response.json()


def coordinator_command(tmp_path: Path, base_port: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "run_distributed_simulation.py",
        "--base-port",
        str(base_port),
        "--log-dir",
        str(tmp_path / "logs"),
        "--state-dir",
        str(tmp_path / "state"),
        *args,
    ]


def child_pids(output: str) -> dict[str, int]:
    return {m["name"]: int(m["pid"]) for m in PID_LINE.finditer(output)}


# -- agents as real processes --------------------------------------------------------------------
def test_home_started_before_the_grid_registers_and_cycles(spawn, tmp_path):
    grid_port = free_port()
    home = spawn("home_agent_server.py", "--grid-url", f"http://{HOST}:{grid_port}", "--heartbeat-s", "0.5", "--fresh")
    home.wait_healthy()
    grid = spawn("grid_agent_server.py", port=grid_port)
    grid.wait_healthy()
    up = time.monotonic()
    assert wait_until(lambda: registered(grid, "home_1"), REGISTER_TIMEOUT_S), home.text()[-2000:]
    assert time.monotonic() - up < 5.0

    results = [coordinate(grid) for _ in range(3)]
    assert [r["cycle"] for r in results] == [1, 2, 3]
    assert all(r["unreachable"] == [] for r in results)
    assert httpx.get(f"{home.url}/status").json()["step"] == 3

    bad = httpx.post(f"{home.url}/curtail", json={"command_id": "x", "action": "shed_load", "power_kw": -1})
    assert bad.status_code == 422
    assert "power_kw" in {d["field"] for d in bad.json()["detail"]}
    assert httpx.get(f"{home.url}/status").json()["step"] == 3

    stop(home.process)
    stop(grid.process)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: -SIGTERM is a clean stop here.
    assert {home.process.returncode, grid.process.returncode} <= {0, -signal.SIGTERM}
    home_log = pd.read_csv(tmp_path / "logs" / "home_1_log.csv")
    assert home_log["step"].tolist() == [1, 2, 3]
    grid_log = pd.read_csv(tmp_path / "logs" / "grid_agent_log.csv")
    assert grid_log["cycle"].tolist() == [1, 2, 3]
    assert "Traceback" not in home.text() + grid.text()


def test_agents_re_register_after_the_grid_agent_restarts(spawn):
    grid_port = free_port()
    grid = spawn("grid_agent_server.py", port=grid_port)
    device_flags = ("--grid-url", f"http://{HOST}:{grid_port}", "--heartbeat-s", "0.5", "--fresh")
    home = spawn("home_agent_server.py", *device_flags)
    battery = spawn("battery_agent_server.py", *device_flags)
    for agent in (grid, home, battery):
        agent.wait_healthy()
    assert wait_until(lambda: registered(grid, "home_1", "battery_agent_1"), REGISTER_TIMEOUT_S)
    assert coordinate(grid)["cycle"] == 1

    grid.process.kill()
    grid.process.wait()
    again = spawn("grid_agent_server.py", port=grid_port)
    again.wait_healthy()
    assert wait_until(lambda: registered(again, "home_1", "battery_agent_1"), REGISTER_TIMEOUT_S)
    result = coordinate(again)
    assert result["cycle"] == 1  # a new grid agent counts afresh
    assert result["unreachable"] == []
    assert result["agents_stepped"] == 2
    assert result["transformers"][0]["state_after"] == "normal"
    assert httpx.get(f"{home.url}/status").json()["step"] == 2  # the agents kept their own clock


# -- the coordinator -----------------------------------------------------------------------------
def test_coordinator_runs_cycles_and_leaves_nothing_behind(tmp_path, leftover_pids):
    base = free_port_block()
    process = subprocess.Popen(
        coordinator_command(tmp_path, base, "--cycles", "3", "--interval", "0", "--exit"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(COLUMNS="200"),
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        leftover_pids.extend(child_pids(out).values())
        pytest.fail(f"the coordinator did not finish in 60 s:\n{out}\n{err}")
    pids = child_pids(out)
    leftover_pids.extend(pids.values())
    assert process.returncode == 0, out + err
    assert "Traceback" not in out + err
    assert set(pids) == {"grid agent", "home agent", "battery agent"}
    assert {int(m["port"]) for m in PID_LINE.finditer(out)} == {base, base + 1, base + 2}
    for cycle in (1, 2, 3):
        assert f"cycle {cycle}" in out
    assert "cycle 4" not in out
    assert "Summary" in out
    assert "stopped 3 agent processes" in out
    for name in ("home_1_log.csv", "battery_agent_1_log.csv"):
        assert pd.read_csv(tmp_path / "logs" / name)["step"].tolist() == [1, 2, 3]
    assert pd.read_csv(tmp_path / "logs" / "grid_agent_log.csv")["cycle"].tolist() == [1, 2, 3]
    assert grid_runs(tmp_path) == [("done", 3, 3)]  # at --interval 0 the cycles ran as one job, POST /runs
    assert "/runs/" in out
    for name, pid in pids.items():
        assert wait_until(lambda pid=pid: pid_gone(pid), 5.0), f"the {name} (pid {pid}) outlived the coordinator"


def grid_runs(tmp_path: Path) -> list[tuple[str, int, int]]:
    """(status, cycles, cycles_done) of every run the grid agent recorded under the test's state folder."""
    with sqlite3.connect(tmp_path / "state" / "grid_agent_runs.sqlite3") as db:
        return db.execute("SELECT status, cycles, cycles_done FROM runs ORDER BY rowid").fetchall()


def test_coordinator_ctrl_c_stops_its_run_and_outsiders_learn_how_to_set_the_token(tmp_path, leftover_pids):
    base = free_port_block()
    grid = f"http://{HOST}:{base}"
    process = subprocess.Popen(
        coordinator_command(tmp_path, base, "--cycles", "1000000", "--interval", "0"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(COLUMNS="200"),
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    try:

        def running_run() -> dict | None:
            try:
                runs = httpx.get(f"{grid}/runs", timeout=1.0).json()
            except (httpx.HTTPError, ValueError):
                return None
            return next((r for r in runs if r["status"] == "running" and r["cycles_done"] > 0), None)

        run = wait_until(running_run, 60)
        assert run, "no run under way within 60 s:\n" + "".join(output)
        refused = httpx.post(f"{grid}/coordinate", timeout=5.0)  # no token: the coordinator made its own
        assert refused.status_code == 401
        assert "set AGENT_TOKEN before starting" in refused.json()["message"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        stop(process)
        reader.join(timeout=5)
        leftover_pids.extend(child_pids("".join(output)).values())
    ((status, cycles, cycles_done),) = grid_runs(tmp_path)
    assert status == "stopped", "".join(output)
    assert 0 < cycles_done < cycles == 1_000_000
    text = "".join(output)
    assert "Traceback" not in text
    assert "stopped 3 agent processes" in text


def test_coordinator_stops_its_agents_on_ctrl_c(tmp_path, leftover_pids):
    base = free_port_block()
    process = subprocess.Popen(
        coordinator_command(tmp_path, base, "--cycles", "1", "--interval", "0"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(COLUMNS="200"),
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("Ctrl+C" in line for line in seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail("no 'press Ctrl+C' line within 60 s:\n" + "".join(seen))
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(
                    f"the coordinator exited with {process.wait()} before waiting for Ctrl+C:\n" + "".join(seen)
                )
            seen.append(line)
        pids = child_pids("".join(seen))
        leftover_pids.extend(pids.values())
        assert len(pids) == 3
        assert "Summary" in "".join(seen)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
    finally:
        stop(process)
    while (line := lines.get(timeout=5)) is not None:
        seen.append(line)
    text = "".join(seen)
    assert "Traceback" not in text
    assert "stopped 3 agent processes" in text
    for name, pid in pids.items():
        assert wait_until(lambda pid=pid: pid_gone(pid), 5.0), f"the {name} (pid {pid}) outlived the coordinator"


@pytest.mark.parametrize(("offset", "name"), [(0, "grid agent"), (2, "battery agent")])
def test_coordinator_refuses_a_busy_port(tmp_path, offset, name):
    base = free_port_block()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, base + offset))
        holder.listen()
        result = subprocess.run(
            coordinator_command(tmp_path, base, "--exit"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(COLUMNS="200"),
        )
    text = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "error" in line]
    assert len(errors) == 1
    assert str(base + offset) in errors[0]
    assert "in use" in errors[0]
    assert name in errors[0]
    assert "up " not in text  # it started nothing


def test_coordinator_busy_port_error_is_one_line_on_stderr_when_piped(tmp_path):
    base = free_port_block()
    env = child_env()
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, base))
        holder.listen()
        result = subprocess.run(
            coordinator_command(tmp_path, base, "--exit"), cwd=ROOT, capture_output=True, text=True, timeout=30, env=env
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(base) in lines[0] and "--base-port" in lines[0]


# -- start-up errors of one agent ----------------------------------------------------------------
def test_bad_data_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "timestamp,solar_kw,load_kw,temp_air_c\n2025-06-01T00:00:00,0,1,15\n2025-06-01T00:15:00,0,1,15\n2025-06-01T00:30:00,abc,1,15\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [
            sys.executable,
            "home_agent_server.py",
            "--port",
            str(free_port()),
            "--data-file",
            str(bad),
            "--log-dir",
            str(tmp_path / "logs"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "bad.csv" in errors[0] and "line 4" in errors[0] and "column solar_kw" in errors[0]


def test_agent_on_a_busy_port_is_a_one_line_error(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "battery_agent_server.py",
                "--port",
                str(port),
                "--log-dir",
                str(tmp_path / "logs"),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert f"cannot listen on {HOST}:{port}" in result.stderr


def test_bad_flag_names_the_flag(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "grid_agent_server.py",
            "--port",
            str(free_port()),
            "--planner",
            "psychic",
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--planner" in result.stderr
    assert "psychic" in result.stderr
