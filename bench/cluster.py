"""The same feeder on a Ray cluster of 1 and of 2 nodes on this machine: python bench/cluster.py [--homes 1000 ...].

For each node count it starts a ``ray.cluster_utils.Cluster`` (dashboard off, an 80 MB object
store per node, one CPU each), places the agents as run_distributed_simulation.py --ray does, pins
every actor process of node k to core k (so that a node is one core, and Ray's own overhead is
measured, not hidden by spare cores), runs the cycles back to back through POST /coordinate and
prints one table: cycle median and p95, CPU seconds per node (the actor processes on it), CPU per
home-cycle, bytes on the wire per home-cycle (what the loopback interface carried, from
``/proc/net/dev``: every call between agents, both ways, and Ray's own traffic; and what the actor
processes wrote, ``wchar`` from ``/proc/PID/io`` less what the run's folder grew, which also counts
SQLite's write-ahead log) and memory. With several
``--homes`` it then sizes: for each node count and a cycle budget of 1 s and of 5 s, the largest
feeder measured whose p95 met the budget, homes per node, and the nodes that implies for 100,000
homes (a ladder of measured sizes, so a lower bound between rungs).

``--lose-node`` measures node loss instead: two nodes, cycles every ``--interval`` s, the worker
node's raylet removed at cycle 10 (its actors die with it); it prints when the grid agent first
listed the lost agents unreachable and when every agent was stepped again, with Ray's health
checks as they are in the environment (``RAY_health_check_*``; Ray's defaults otherwise: a check
every 3 s, 5 missed to declare a node dead). A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: EMS_STEP_TIMEOUT_S: the actors inherit the raylets' environment; a large feeder on one core must be measured, not
#: cut short by the 2 s default of each step call (a cycle then lists the slow hosts' agents unreachable).
for _name, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "EMS_STEP_TIMEOUT_S": "60",
}.items():
    os.environ.setdefault(_name, _value)  # before Ray is imported: it reads them once

from ray.cluster_utils import Cluster
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _agents import cpu_s, percentile, print_table, rss_mb, timed_cycles, warm_up

from agents.coordinator import Coordinator, CoordinatorSettings

NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}


def pin(pid: int, core: int) -> None:
    """Pin every thread of a process to one core: an actor serves its app from a thread of its own, and a
    process's affinity is per thread (threads it starts later inherit their starter's)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(task.name), {core})


def written_bytes(pid: int) -> int:
    """Bytes a process has written through write-like calls (sockets and files), from /proc."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def loopback_bytes() -> int:
    """Bytes the loopback interface has carried (each counted once, as received), from /proc/net/dev: on a
    one-machine cluster every call between agents, and Ray's own traffic, crosses it."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])
    return 0


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_nodes(nodes: int, homes: int, cycles: int, homes_per_process: int, lose_node_interval: float | None) -> dict:
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    work = Path(tempfile.mkdtemp(prefix=f"ems-cluster-{nodes}-"))
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        settings = CoordinatorSettings(
            homes=homes,
            homes_per_process=homes_per_process,
            cycles=0,
            interval=0,
            exit=True,
            ray=cluster.address,
            log_dir=work / "logs",
            state_dir=work / "state",
            log_level="warning",
            startup_timeout_s=180,
            start="2025-07-15T11:00",
        )
        coordinator = Coordinator(settings, console=Console(quiet=True))
        try:
            coordinator.start()
            grid = coordinator.children[0].url
            node_ids = sorted({c.node_id for c in coordinator.children})
            for child in coordinator.children:
                print(f"{child.name:<12} node {child.node_id[:12]}", file=sys.stderr)
            pids: dict[str, list[int]] = {n: [] for n in node_ids}
            for child in coordinator.children:
                pid = child.pid
                pin(pid, node_ids.index(child.node_id) % os.cpu_count())
                pids[child.node_id].append(pid)
            everyone = [p for ps in pids.values() for p in ps]
            warm_up(coordinator.http, grid)
            if lose_node_interval is not None:
                return {**lose_node(cluster, coordinator, grid, cycles, lose_node_interval), "homes": homes}
            cpu_before = {n: sum(cpu_s(p) for p in ps) for n, ps in pids.items()}
            wrote_before, logs_before = sum(written_bytes(p) for p in everyone), folder_bytes(work)
            loopback_before = loopback_bytes()
            latencies, results = timed_cycles(coordinator.http, grid, cycles)
            cpu = {n: sum(cpu_s(p) for p in ps) - cpu_before[n] for n, ps in pids.items()}
            sent = sum(written_bytes(p) for p in everyone) - wrote_before - (folder_bytes(work) - logs_before)
            carried = loopback_bytes() - loopback_before
            return {
                "nodes": nodes,
                "homes": homes,
                "actors": len(everyone),
                "median_ms": statistics.median(latencies),
                "p95_ms": percentile(latencies, 0.95),
                "cpu_per_node_s": " / ".join(f"{cpu[n]:.1f}" for n in node_ids),
                "cpu_ms_per_home_cycle": sum(cpu.values()) / (cycles * homes) * 1000,
                "bytes_per_home_cycle": max(sent, 0) / (cycles * homes),
                "loopback_per_home_cycle": carried / (cycles * homes),
                "rss_mb": sum(rss_mb(p) for p in everyone),
                "unreachable": sum(len(r["unreachable"]) for r in results),
            }
        finally:
            coordinator.stop()
    finally:
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)  # the run's logs and state


def lose_node(cluster: Cluster, coordinator: Coordinator, grid: str, cycles: int, interval_s: float) -> dict:
    """Cycles every ``interval_s``; the worker node removed after cycle 10; when its agents were missed and back."""
    worker = next(n for n in cluster.list_all_nodes() if n is not cluster.head_node)
    killed_at = lost_at = back_at = None
    stepped: list[int] = []
    for cycle in range(1, cycles + 1):
        began = time.monotonic()
        result = coordinator.http.post(f"{grid}/coordinate", timeout=60).json()
        stepped.append(result["agents_stepped"])
        if cycle == 10:
            cluster.remove_node(worker, allow_graceful=False)
            killed_at = time.monotonic()
        elif killed_at is not None:
            if lost_at is None and result["unreachable"]:
                lost_at = time.monotonic()
            elif lost_at is not None and not result["unreachable"]:
                back_at = time.monotonic()
                break
        time.sleep(max(interval_s - (time.monotonic() - began), 0.0))
    return {
        "nodes": 2,
        "lost_after_s": (lost_at - killed_at) if lost_at else math.nan,
        "back_after_s": (back_at - killed_at) if back_at else math.nan,
        "cycles_run": len(stepped),
        "fewest_stepped": min(stepped),
        "health_checks": " / ".join(
            os.environ.get(f"RAY_health_check_{name}", "default")
            for name in ("period_ms", "timeout_ms", "failure_threshold")
        ),
    }


def sizing(rows: list[dict], budgets_s: tuple[float, ...] = (1.0, 5.0), city: int = 100_000) -> list[dict]:
    """For each node count and budget: the largest feeder measured whose p95 met it, and what that means for a city."""
    table = []
    for nodes in sorted({r["nodes"] for r in rows}):
        for budget in budgets_s:
            met = [
                r["homes"]
                for r in rows
                if r["nodes"] == nodes and r["p95_ms"] <= budget * 1000 and not r["unreachable"]
            ]
            per_node = max(met) / nodes if met else 0
            table.append(
                {
                    "nodes": nodes,
                    "budget_s": budget,
                    "homes": max(met) if met else 0,
                    "per_node": per_node,
                    "for_city": math.ceil(city / per_node) if per_node else math.nan,
                    "tried": ", ".join(str(r["homes"]) for r in rows if r["nodes"] == nodes),
                }
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--homes", type=int, nargs="+", default=[1000])
    parser.add_argument("--homes-per-process", type=int, default=250)
    parser.add_argument("--cycles", type=int, default=48)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--lose-node", action="store_true", help="Measure node loss and recovery instead (2 nodes)")
    parser.add_argument("--interval", type=float, default=0.5, help="Seconds between cycles with --lose-node")
    args = parser.parse_args()
    if args.lose_node:
        row = run_nodes(2, args.homes[0], max(args.cycles, 200), args.homes_per_process, args.interval)
        title = f"{args.homes[0]} homes on 2 nodes, a cycle every {args.interval} s, the worker node lost at cycle 10"
        columns = [
            ("RAY_health_check period/timeout ms/threshold", "health_checks", "{}"),
            ("listed unreachable after s", "lost_after_s", "{:.1f}"),
            ("all stepped again after s", "back_after_s", "{:.1f}"),
            ("cycles run", "cycles_run", "{}"),
            ("fewest agents stepped", "fewest_stepped", "{}"),
        ]
        print_table(title, columns, [row])
        return
    rows = []
    for homes in args.homes:
        for nodes in args.nodes:
            rows.append(run_nodes(nodes, homes, args.cycles, args.homes_per_process, None))
            print(f"done: {homes} homes on {nodes} nodes", file=sys.stderr)
    title = f"{args.cycles} cycles back to back, each node pinned to one core, {args.homes_per_process} homes a process"
    columns = [
        ("nodes", "nodes", "{}"),
        ("homes", "homes", "{}"),
        ("actors", "actors", "{}"),
        ("cycle median ms", "median_ms", "{:.0f}"),
        ("cycle p95 ms", "p95_ms", "{:.0f}"),
        ("CPU s per node", "cpu_per_node_s", "{}"),
        ("CPU ms/home-cycle", "cpu_ms_per_home_cycle", "{:.3f}"),
        ("bytes written/home-cycle", "bytes_per_home_cycle", "{:.0f}"),
        ("bytes on loopback/home-cycle", "loopback_per_home_cycle", "{:.0f}"),
        ("actors' RSS MB", "rss_mb", "{:.0f}"),
        ("agent-cycles unreachable", "unreachable", "{}"),
    ]
    print_table(title, columns, rows)
    if len(args.homes) > 1:
        columns = [
            ("nodes", "nodes", "{}"),
            ("cycle budget s", "budget_s", "{:.0f}"),
            ("largest feeder with p95 within it, none unreachable", "homes", "{}"),
            ("homes per node", "per_node", "{:.0f}"),
            ("nodes for 100,000 homes", "for_city", "{}"),
            ("sizes tried", "tried", "{}"),
        ]
        print_table("Sizing, measured", columns, sizing(rows))


if __name__ == "__main__":
    main()
