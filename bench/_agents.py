"""Start the seed's agents on free ports, or run the coordinator as a user does and measure it (for benchmarks)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port_block(count: int = 3) -> int:
    """A base port with ``count`` free ports above it."""
    for base in range(21000, 60000, 97):
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            for s in sockets:
                s.close()
            return base
        except OSError:
            for s in sockets:
                s.close()
    raise RuntimeError("no free ports")


@contextmanager
def seed_agents(extra_grid: list[str] | None = None, extra_devices: list[str] | None = None):
    """Yield (grid_url, pids) for a grid, home and battery agent; stop them at the end."""
    base = free_port_block()
    work = Path(tempfile.mkdtemp(prefix="ems-bench-"))
    common = ["--log-dir", str(work / "logs"), "--state-dir", str(work / "state"), "--log-level", "warning"]
    grid = f"http://127.0.0.1:{base}"
    commands = [
        [sys.executable, str(ROOT / "grid_agent_server.py"), "--port", str(base), *common, *(extra_grid or [])],
        [
            sys.executable,
            str(ROOT / "home_agent_server.py"),
            "--port",
            str(base + 1),
            "--grid-url",
            grid,
            "--fresh",
            *common,
            *(extra_devices or []),
        ],
        [
            sys.executable,
            str(ROOT / "battery_agent_server.py"),
            "--port",
            str(base + 2),
            "--grid-url",
            grid,
            "--fresh",
            *common,
            *(extra_devices or []),
        ],
    ]
    processes = [
        subprocess.Popen(
            c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, "AGENT_TOKEN": ""}
        )
        for c in commands
    ]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                agents = httpx.get(f"{grid}/agents", timeout=1).json()
                if len([a for a in agents if a["healthy"]]) == 2:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("agents did not come up")
        yield grid, [p.pid for p in processes], work
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RATE_LINE = re.compile(r"cycles per second \(wall\)\D*?([\d,]+)")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


def warm_up(http: httpx.Client, grid: str, cycles: int = 3) -> None:
    """A few cycles to open the connections and fill the caches before anything is measured."""
    for _ in range(cycles):
        http.post(f"{grid}/coordinate").raise_for_status()


def timed_cycles(http: httpx.Client, grid: str, cycles: int) -> tuple[list[float], list[dict]]:
    """``cycles`` POST /coordinate back to back: each one's latency (ms) as the caller sees it, and its result."""
    latencies, results = [], []
    for _ in range(cycles):
        started = time.perf_counter()
        response = http.post(f"{grid}/coordinate")
        response.raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
        results.append(response.json())
    return latencies, results


def print_table(title: str, columns: list[tuple[str, str, str]], rows: list[dict]) -> None:
    """A rich table of ``rows``: ``columns`` are (heading, key, format), every column right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for heading, _, _ in columns:
        table.add_column(heading, justify="right")
    for row in rows:
        table.add_row(*(fmt.format(row[key]) for _, key, fmt in columns))
    Console(width=200).print(table)


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid``, from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@dataclass
class CoordinatorRun:
    """One run of run_distributed_simulation.py: its own rate and each process's CPU over the cycles."""

    cycles: int
    cycles_per_s: float
    cpu_s: dict[str, float]  # coordinator, grid, home, battery: CPU while the cycles ran
    output: str

    @property
    def cpu_ms_per_cycle(self) -> float:
        return sum(self.cpu_s.values()) / self.cycles * 1000


def run_coordinator(
    cycles: int, planner: str = "optimal", root: Path = ROOT, on_cycles: Callable[[dict[str, int]], None] | None = None
) -> CoordinatorRun:
    """Run ``root``'s run_distributed_simulation.py as a user would (``--interval 0 --exit``, free ports, fresh log and
    state folders) and watch its output: the agents are up at its dashboard line, which comes just before the first
    cycle, and the cycles are over at its summary, before it stops the agents. ``on_cycles({name: pid})`` is called
    when the cycles start. The rate is the coordinator's own "cycles per second (wall)", start-up excluded."""
    work = Path(tempfile.mkdtemp(prefix="ems-bench-run-"))
    command = [
        sys.executable,
        str(root / "run_distributed_simulation.py"),
        "--cycles",
        str(cycles),
        "--interval",
        "0",
        "--exit",
        "--base-port",
        str(free_port_block(3)),
        "--log-dir",
        str(work / "logs"),
        "--state-dir",
        str(work / "state"),
        "--planner",
        planner,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    pids: dict[str, int] = {}
    started: dict[str, float] = {}
    used: dict[str, float] = {}
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("up "):
                pids[line.split()[1]] = int(line.rsplit("pid", 1)[1])
            elif line.startswith("dashboard"):
                pids = {"coordinator": process.pid, **pids}
                started = {name: cpu_s(pid) for name, pid in pids.items()}
                if on_cycles is not None:
                    on_cycles(pids)
            elif "Summary" in line and started and not used:
                used = {name: cpu_s(pid) - started[name] for name, pid in pids.items()}
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
    output = "".join(lines)
    rate = RATE_LINE.search(output)
    if process.returncode != 0 or rate is None or not used:
        failed = f"run_distributed_simulation.py in {root} failed (exit {process.returncode}; logs in {work})"
        raise RuntimeError(f"{failed}: {output[-800:]}")
    shutil.rmtree(work, ignore_errors=True)  # a run's logs and state, kept only when it failed
    return CoordinatorRun(cycles, float(rate.group(1).replace(",", "")), used, output)
