"""The same feeder on a Ray cluster of 1 and of 2 nodes on this machine: python bench/cluster.py [--homes 1000].

For each node count it starts a ``ray.cluster_utils.Cluster`` (dashboard off, an 80 MB object
store per node, one CPU each), places the agents as run_distributed_simulation.py --ray does, pins
every actor process of node k to core k (so that a node is one core, and Ray's own overhead is
measured, not hidden by spare cores), runs the cycles back to back through POST /coordinate and
prints one table: cycle median and p95, CPU seconds per node (the actor processes on it), CPU per
home-cycle, bytes the agents' sockets sent per home-cycle (from each actor process's
``/proc/PID/io``: ``wchar`` less what the logs grew, so an estimate) and memory. A benchmark, not a
test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

for _name, _value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
    os.environ.setdefault(_name, _value)  # before Ray is imported: it reads them once

from ray.cluster_utils import Cluster
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _agents import cpu_s, percentile, print_table, rss_mb, timed_cycles, warm_up

from agents.coordinator import Coordinator, CoordinatorSettings

NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}


def written_bytes(pid: int) -> int:
    """Bytes a process has written through write-like calls (sockets and files), from /proc."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_nodes(nodes: int, homes: int, cycles: int, homes_per_process: int) -> dict:
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
                os.sched_setaffinity(pid, {node_ids.index(child.node_id) % os.cpu_count()})
                pids[child.node_id].append(pid)
            everyone = [p for ps in pids.values() for p in ps]
            warm_up(coordinator.http, grid)
            cpu_before = {n: sum(cpu_s(p) for p in ps) for n, ps in pids.items()}
            wrote_before, logs_before = sum(written_bytes(p) for p in everyone), folder_bytes(work)
            latencies, _ = timed_cycles(coordinator.http, grid, cycles)
            cpu = {n: sum(cpu_s(p) for p in ps) - cpu_before[n] for n, ps in pids.items()}
            sent = sum(written_bytes(p) for p in everyone) - wrote_before - (folder_bytes(work) - logs_before)
            return {
                "nodes": nodes,
                "homes": homes,
                "actors": len(everyone),
                "median_ms": statistics.median(latencies),
                "p95_ms": percentile(latencies, 0.95),
                "cpu_per_node_s": " / ".join(f"{cpu[n]:.1f}" for n in node_ids),
                "cpu_ms_per_home_cycle": sum(cpu.values()) / (cycles * homes) * 1000,
                "bytes_per_home_cycle": max(sent, 0) / (cycles * homes),
                "rss_mb": sum(rss_mb(p) for p in everyone),
            }
        finally:
            coordinator.stop()
    finally:
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)  # the run's logs and state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--homes", type=int, default=1000)
    parser.add_argument("--homes-per-process", type=int, default=250)
    parser.add_argument("--cycles", type=int, default=48)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rows = []
    for nodes in args.nodes:
        rows.append(run_nodes(nodes, args.homes, args.cycles, args.homes_per_process))
        print(f"done: {nodes} nodes", file=sys.stderr)
    title = f"{args.homes} homes, {args.cycles} cycles back to back, each node pinned to one core"
    columns = [
        ("nodes", "nodes", "{}"),
        ("actors", "actors", "{}"),
        ("cycle median ms", "median_ms", "{:.0f}"),
        ("cycle p95 ms", "p95_ms", "{:.0f}"),
        ("CPU s per node", "cpu_per_node_s", "{}"),
        ("CPU ms/home-cycle", "cpu_ms_per_home_cycle", "{:.3f}"),
        ("bytes sent/home-cycle", "bytes_per_home_cycle", "{:.0f}"),
        ("actors' RSS MB", "rss_mb", "{:.0f}"),
    ]
    print_table(title, columns, rows)


if __name__ == "__main__":
    main()
