"""Cycle latency, memory and CPU against feeder size: python bench/scale.py [--homes 1 10 100 1000] [--cycles 96]
[--homes-per-process 250].

For each size it starts the agents exactly as run_distributed_simulation.py does (a generated
feeder of N homes, sharded over home agent processes, with its storage systems; N = 1 is the
seed's three agents), runs the cycles back to back through POST /coordinate at --interval 0, and
prints one table: cycle latency median and p95 (as the coordinator sees it), time per phase
(step, plan, act, as the grid agent reports it), total RSS of all agent processes, and CPU
seconds per home-cycle, in all and in the grid agent alone. ``--root DIR`` runs another checkout's agents (the
commit before a change, say) for a side-by-side pair. A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console

#: The checkout whose agents run: this one, or --root's (read before the imports below, which load it).
ROOT = Path(sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv[:-1] else Path(__file__).parent.parent)
sys.path.insert(0, str(ROOT.resolve()))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from _agents import cpu_s, free_port_block, percentile, print_table, rss_mb, timed_cycles, warm_up

from agents.coordinator import Coordinator, CoordinatorSettings


def run_size(homes: int, cycles: int, planner: str, start: str | None, homes_per_process: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"ems-scale-{homes}-"))
    n_ports = 3 + homes // homes_per_process + 2
    settings = CoordinatorSettings(
        homes=homes,
        cycles=0,
        interval=0,
        exit=True,
        base_port=free_port_block(n_ports),
        planner=planner,
        log_dir=work / "logs",
        state_dir=work / "state",
        log_level="warning",
        startup_timeout_s=120,
        start=start,
        homes_per_process=homes_per_process,
    )
    coordinator = Coordinator(settings, console=Console(quiet=True))
    try:
        coordinator.start()
        grid = coordinator.children[0].url
        pids = [c.process.pid for c in coordinator.children]
        warm_up(coordinator.http, grid)
        cpu_before = [cpu_s(p) for p in pids]
        latencies, results = timed_cycles(coordinator.http, grid, cycles)
        cpu_used = [cpu_s(p) - before for p, before in zip(pids, cpu_before, strict=True)]
        return {
            "homes": homes,
            "processes": len(pids),
            "agents": results[-1]["agents_stepped"],
            "median_ms": statistics.median(latencies),
            "p95_ms": percentile(latencies, 0.95),
            "step_ms": statistics.median(r["phase_ms"]["step"] for r in results),
            "plan_ms": statistics.median(r["phase_ms"]["plan"] for r in results),
            "act_ms": statistics.median(r["phase_ms"]["act"] for r in results),
            "commands": sum(len(r["actions"]) for r in results) / cycles,
            "rss_mb": sum(rss_mb(p) for p in pids),
            "cpu_ms_per_home_cycle": sum(cpu_used) / (cycles * homes) * 1000,
            "grid_cpu_ms_per_home_cycle": cpu_used[0] / (cycles * homes) * 1000,
            "unreachable": sum(len(r["unreachable"]) for r in results),
        }
    finally:
        coordinator.stop()
        shutil.rmtree(work, ignore_errors=True)  # the run's logs and state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--homes", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--cycles", type=int, default=96)
    parser.add_argument("--planner", default="optimal")
    parser.add_argument("--root", type=Path, default=ROOT, help="The checkout whose agents run (default this one)")
    parser.add_argument("--homes-per-process", type=int, default=250, help="Homes each home agent process hosts")
    parser.add_argument(
        "--start", default="2025-07-15T11:00", help="Simulated start (default a sunny midday: reverse flow to fix)"
    )
    args = parser.parse_args()
    rows = []
    for homes in args.homes:
        rows.append(run_size(homes, args.cycles, args.planner, args.start, args.homes_per_process))
        print(f"done: {homes} homes", file=sys.stderr)
    title = (
        f"{args.root.resolve().name}: {args.cycles} cycles at --interval 0, planner {args.planner}, from {args.start}, "
        f"{args.homes_per_process} homes a process"
    )
    columns = [
        ("homes", "homes", "{}"),
        ("processes", "processes", "{}"),
        ("agents stepped", "agents", "{}"),
        ("cycle median ms", "median_ms", "{:.1f}"),
        ("cycle p95 ms", "p95_ms", "{:.1f}"),
        ("step ms", "step_ms", "{:.1f}"),
        ("plan ms", "plan_ms", "{:.2f}"),
        ("act ms", "act_ms", "{:.1f}"),
        ("commands/cycle", "commands", "{:.1f}"),
        ("RSS all MB", "rss_mb", "{:.0f}"),
        ("CPU ms/home-cycle", "cpu_ms_per_home_cycle", "{:.3f}"),
        ("of it grid agent", "grid_cpu_ms_per_home_cycle", "{:.3f}"),
        ("unreachable", "unreachable", "{}"),
    ]
    print_table(title, columns, rows)


if __name__ == "__main__":
    main()
