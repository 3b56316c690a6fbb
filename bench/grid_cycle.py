"""Milliseconds per cycle on an MV grid with its LV grids, through the real agent processes: python bench/grid_cycle.py.

The grid is a part of ``1-MVLV-rural-all-0-sw`` (5,479 buses, 5,373 loads): its MV grid with the LV grids
below it taken in transformer order until they hold ``--loads`` loads (``pandapower.toolbox.select_subnet``,
SimBench's profiles kept), saved as pandapower JSON. The coordinator then runs it as a user would
(``run_distributed_simulation.py --network part.json --planner optimal --interval 0 --exit --report DIR``:
the grid agent and five processes hosting up to 250 homes each; the grid has no storage units), from 11:00 of
a sunny day, and the table gives, from the report's ``cycles.jsonl``: the grid agent's whole cycle (step, plan
with the network linearised, act, record), its phases, and the two power flows (before planning and after
acting), median and 95th percentile. The first cycles (the sensitivities' first batch, caches) are left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _agents import free_port_block

SOURCE = "1-MVLV-rural-all-0-sw"
LOW_VOLTAGE_KV = 1.0


def network_part(source: str, loads: int, path: Path) -> dict:
    """Save the MV grid of ``source`` with its first LV grids (up to ``loads`` loads) to ``path``; answer its size."""
    import pandapower as pp
    import pandapower.toolbox as tb

    from agents.network.load import feeding_transformers, load_network

    net = load_network(source).net
    feeding = feeding_transformers(net)
    lv_side = net.bus["vn_kv"] < LOW_VOLTAGE_KV
    zones: dict[int | None, list[int]] = {}
    for bus, trafo in feeding.items():
        zones.setdefault(None if not lv_side[bus] else trafo, []).append(bus)
    buses = list(zones.pop(None, []))  # every bus above 1 kV
    taken = 0
    for trafo in sorted(t for t in zones if t is not None):
        if taken >= loads:
            break
        zone = zones[trafo]
        buses += zone
        taken += int(net.load["bus"].isin(zone).sum())
    part = tb.select_subnet(net, buses, include_switch_buses=True, keep_everything_else=True)
    part.name = f"{source} part: {taken} loads"
    pp.to_json(part, str(path))
    return {"buses": len(part.bus), "loads": len(part.load), "sgens": len(part.sgen), "trafos": len(part.trafo)}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default=SOURCE, help="SimBench code (or JSON file) to cut the part from")
    parser.add_argument("--loads", type=int, default=1000, help="LV loads in the part (whole LV grids)")
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--warm", type=int, default=3, help="first cycles left out")
    parser.add_argument("--start", default="2016-05-20T11:00")
    parser.add_argument("--planner", default="optimal")
    parser.add_argument("--vm-max-pu", type=float, help="passed to the coordinator: a tighter limit at LV buses")
    parser.add_argument("--slack-vm-pu", type=float, help="passed to the coordinator")
    args = parser.parse_args()
    console = Console(width=160)
    with tempfile.TemporaryDirectory(prefix="grid-cycle-") as work:
        work = Path(work)
        started = time.perf_counter()
        size = network_part(args.network, args.loads, work / "part.json")
        console.print(f"part of {args.network}: {size} in {time.perf_counter() - started:.0f} s")
        command = [
            sys.executable,
            "run_distributed_simulation.py",
            "--network",
            str(work / "part.json"),
            "--planner",
            args.planner,
            "--start",
            args.start,
            "--cycles",
            str(args.cycles),
            "--interval",
            "0",
            "--exit",
            "--base-port",
            str(free_port_block(16)),
            "--log-dir",
            str(work / "logs"),
            "--state-dir",
            str(work / "state"),
            "--report",
            str(work / "report"),
        ]
        for flag in ("vm_max_pu", "slack_vm_pu"):
            if getattr(args, flag) is not None:
                command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            console.print(done.stdout[-3000:], done.stderr[-3000:])
            raise SystemExit(done.returncode)
        console.print(f"coordinator: {time.perf_counter() - started:.0f} s, start-up included")
        lines = (work / "report" / "cycles.jsonl").read_text(encoding="utf-8").splitlines()
        cycles = [json.loads(line) for line in lines][args.warm :]
    table = Table(
        title=f"{size['loads']} loads, {size['buses']} buses, {size['trafos']} transformers; planner {args.planner}; "
        f"{len(cycles)} cycles from {args.start}"
        + "".join(
            f"; --{f.replace('_', '-')} {getattr(args, f)}" for f in ("vm_max_pu", "slack_vm_pu") if getattr(args, f)
        )
        + " (ms)"
    )
    for column in ("figure", "median", "p95", "max"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    series = {
        "whole cycle (grid agent)": [c["duration_ms"] for c in cycles],
        **{f"  {phase}": [c["phase_ms"].get(phase, 0.0) for c in cycles] for phase in cycles[0]["phase_ms"]},
        "power flow, one (half of both)": [c["network"]["powerflow_ms"] / 2 for c in cycles],
    }
    for name, values in series.items():
        table.add_row(name, f"{statistics.median(values):.1f}", f"{percentile(values, 95):.1f}", f"{max(values):.1f}")
    console.print(table)
    rows = [c["network"]["constraint_rows"] for c in cycles]
    commands = [len(c["actions"]) for c in cycles]
    broken = sum(
        any(c["network"][f"{kind}_outside_after"] for kind in ("buses", "lines", "transformers")) for c in cycles
    )
    console.print(
        f"network rows planned against: median {statistics.median(rows):g}, max {max(rows)}; commands a cycle: "
        f"median {statistics.median(commands):g}, max {max(commands)}; "
        f"re-plans {sum(c['network']['replanned'] for c in cycles)}; limits broken after acting in {broken} cycles"
    )


if __name__ == "__main__":
    main()
