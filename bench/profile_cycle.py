"""Where a cycle's time goes, in all four processes: python bench/profile_cycle.py [--cycles 2000] [--out DIR].

Runs ``run_distributed_simulation.py --cycles N --interval 0 --exit`` as a user would (free ports,
fresh log and state folders), and once the agents are up (the coordinator prints its dashboard
line just before the first cycle) attaches ``py-spy record --format raw --function --nonblocking``
to the coordinator and to each agent it started. For each process it prints the CPU seconds it
used per cycle while the cycles ran (from /proc), the share of its samples by package (the
file of the innermost Python frame: time in C code, uvloop's included, counts to the Python
function that called it), its top functions by self share, and this project's functions by
total share. The raw stacks stay in --out for a flame graph (flamegraph.pl or speedscope read
them). py-spy counts a thread that is running or waiting for a core, so on a busy machine its
shares lean towards where a process is preempted (a send that wakes another process); the CPU
seconds come from the kernel. Needs py-spy (requirements-bench.txt) and the right to attach
(root, or ptrace allowed). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _agents import ROOT, run_coordinator

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
#: Frames every sample of a process passes through (entry points, the server loop): no news in a total.
ENTRY_FUNCTIONS = {"<module>", "main", "serve", "run", "Coordinator.run"}


def ours(file: str) -> bool:
    """Whether a frame's file is this project's code."""
    return (
        file.startswith(("agents/", "models/"))
        or file.endswith("_server.py")
        or file == "run_distributed_simulation.py"
    )


def package(file: str) -> str:
    """What a frame's file belongs to: ``agents/grid.py`` for our code, the top package otherwise."""
    if ours(file):
        return file
    if file.startswith("<frozen"):
        return "importlib"
    return file.split("/", 1)[0].removesuffix(".py")


#: What a sample's innermost frame was doing, by function (first) or by package.
SOCKET_WRITES = {"StreamWriter._writelines", "RequestResponseCycle.send", "SyncStream.write"}
LAYERS = {
    "aiohttp": "HTTP client",
    "httpx": "HTTP client",
    "httpcore": "HTTP client",
    "h11": "HTTP client",
    "uvicorn": "HTTP server",
    "starlette": "HTTP server",
    "fastapi": "HTTP server",
    "email": "HTTP server",
    "urllib": "HTTP server",
    "multipart": "HTTP server",
    "pydantic": "pydantic schemas",
    "pydantic_core": "pydantic schemas",
    "json": "JSON",
    "typing": "pydantic schemas",
    "agents/common/state.py": "SQLite state",
    "agents/common/csvlog.py": "CSV log",
    "csv": "CSV log",
    "logging": "logging",
    "prometheus_client": "metrics",
    "agents/common/metrics.py": "metrics",
    "scipy": "planner",
    "highspy": "planner",
    "numpy": "planner",
    "rich": "progress display",
    "agents/coordinator/progress.py": "progress display",
    "asyncio": "asyncio tasks",
    "contextlib": "our code",
}


def layer(function: str, file: str) -> str:
    """The layer a sample's innermost frame belongs to (see LAYERS)."""
    if function in SOCKET_WRITES:
        return "socket write (wakes the peer)"
    if function == "Runner.run":
        return "event loop (uvloop, C)"
    if function in ("Condition.wait", "Event.wait") or file.startswith("threading"):
        return "threads waiting"
    pkg = package(file)
    if pkg.startswith("agents/planners/"):
        return "planner"
    return LAYERS.get(pkg, "our code" if ours(file) else "other")


@dataclass
class Profile:
    """One process's py-spy samples, summed several ways."""

    samples: int = 0
    by_self: Counter = field(default_factory=Counter)  # innermost frame
    by_total: Counter = field(default_factory=Counter)  # our own functions, anywhere in the stack
    by_package: Counter = field(default_factory=Counter)
    by_layer: Counter = field(default_factory=Counter)


def summarise(raw: Path) -> Profile:
    """Sum py-spy's raw output (one collapsed stack and its count a line)."""
    profile = Profile()
    if not raw.exists():
        return profile
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        profile.samples += n
        leaf = FRAME.match(frames[-1])
        function, file = (leaf.group("function"), leaf.group("file")) if leaf else (frames[-1], "")
        profile.by_self[frames[-1]] += n
        profile.by_package[package(file)] += n
        profile.by_layer[layer(function, file)] += n
        for frame in set(frames):
            match = FRAME.match(frame)
            if match and ours(match.group("file")) and match.group("function") not in ENTRY_FUNCTIONS:
                profile.by_total[frame] += n
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--planner", default="optimal")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=12, help="Functions listed per process")
    parser.add_argument("--out", type=Path, default=None, help="Folder for the raw stacks (default a temporary one)")
    parser.add_argument("--root", type=Path, default=ROOT, help="The checkout to profile (default this one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ems-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    spies: list[subprocess.Popen] = []

    def attach(pids: dict[str, int]) -> None:
        for name, pid in pids.items():
            spies.append(
                subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(pid),
                        "--format",
                        "raw",
                        "--function",
                        "--nonblocking",
                        "--rate",
                        str(args.rate),
                        "--output",
                        str(out / f"{name}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    try:
        run = run_coordinator(args.cycles, args.planner, args.root.resolve(), on_cycles=attach)
        for spy in spies:  # each ends, and writes its file, when its process exits
            spy.wait(timeout=60)
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.terminate()
    console = Console(width=160)
    console.print(
        f"{args.cycles} cycles at --interval 0, profiled: {run.cycles_per_s:.0f} cycles per second (wall);"
        f" raw stacks in {out}/"
    )
    overview = Table(title="CPU per cycle while the cycles ran")
    for column in ("process", "CPU s", "CPU ms / cycle", "samples"):
        overview.add_column(column, justify="left" if column == "process" else "right")
    profiles = {name: summarise(out / f"{name}.txt") for name in run.cpu_s}
    for name, used in run.cpu_s.items():
        overview.add_row(name, f"{used:.2f}", f"{used / args.cycles * 1000:.3f}", str(profiles[name].samples))
    overview.add_row("all four", f"{sum(run.cpu_s.values()):.2f}", f"{run.cpu_ms_per_cycle:.3f}", "")
    console.print(overview)
    layers = Table(title="Share of each process's samples by layer (innermost frame), %")
    layers.add_column("layer")
    for name in profiles:
        layers.add_column(name, justify="right")
    totals = Counter()
    for profile in profiles.values():
        totals.update({k: v / max(profile.samples, 1) for k, v in profile.by_layer.items()})
    for key, _ in totals.most_common():
        layers.add_row(key, *(f"{100 * p.by_layer[key] / max(p.samples, 1):.1f}" for p in profiles.values()))
    console.print(layers)
    for name, profile in profiles.items():
        if not profile.samples:
            continue
        table = Table(title=f"{name}: {profile.samples} samples")
        for column in ("self %", "package (innermost frame)", "self %", "function", "total %", "our function"):
            table.add_column(column, justify="right" if "%" in column else "left", overflow="fold")
        rows = max(args.top, 1)
        ranked = (
            profile.by_package.most_common(rows),
            profile.by_self.most_common(rows),
            profile.by_total.most_common(rows),
        )
        for i in range(rows):
            cells = []
            for column in ranked:
                key, n = column[i] if i < len(column) else ("", 0)
                cells += [f"{100 * n / profile.samples:.1f}" if key else "", key]
            table.add_row(*cells)
        console.print(table)


if __name__ == "__main__":
    main()
