"""A whole year (35,040 cycles) through the seed's three agents at --interval 0: python bench/year.py [--cycles N].

Starts the agents as run_distributed_simulation.py does and drives the cycles with the
coordinator's own loop (one run, POST /runs, at --interval 0), then prints wall time, cycles
per second, and the CPU seconds each process used. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _agents import cpu_s, free_port_block, rss_mb

from agents.coordinator import Coordinator, CoordinatorSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=35_040)
    parser.add_argument("--planner", default="optimal")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ems-year-"))
    settings = CoordinatorSettings(
        cycles=args.cycles,
        interval=0,
        exit=True,
        base_port=free_port_block(3),
        planner=args.planner,
        log_dir=work / "logs",
        state_dir=work / "state",
        log_level="warning",
    )
    coordinator = Coordinator(settings, console=Console(quiet=True))
    try:
        started = time.perf_counter()
        coordinator.start()
        up = time.perf_counter()
        pids = {c.name: c.process.pid for c in coordinator.children}
        cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
        coordinator.run_cycles()
        done = time.perf_counter()
        cpu = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
        rss = {name: rss_mb(pid) for name, pid in pids.items()}
    finally:
        coordinator.stop()
    cycles = coordinator.stats.cycles
    table = Table(title=f"{args.cycles} cycles of the seed's feeder at --interval 0 (planner {args.planner})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("start-up (s)", f"{up - started:.1f}")
    table.add_row("cycles wall time (s)", f"{done - up:.1f}")
    table.add_row("cycles per second", f"{len(cycles) / (done - up):.0f}")
    table.add_row("simulated", f"{cycles[0]['timestamp']} to {cycles[-1]['timestamp']}")
    table.add_row("median cycle in the grid agent (ms)", f"{statistics.median(c['duration_ms'] for c in cycles):.2f}")
    table.add_row("cycles with commands", str(sum(bool(c["actions"]) for c in cycles)))
    table.add_row("agents unreachable (agent-cycles)", str(sum(len(c["unreachable"]) for c in cycles)))
    for name in pids:
        table.add_row(f"CPU s, {name}", f"{cpu[name]:.1f}")
        table.add_row(f"RSS MB, {name}", f"{rss[name]:.0f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
