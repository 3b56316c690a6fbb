"""Start the seed's three agents as real processes on free ports, for benchmarks (not a test)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
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
