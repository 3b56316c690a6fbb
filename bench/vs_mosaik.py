"""Our seed trio against mosaik in the same three-process shape, side by side: python bench/vs_mosaik.py [--help].

Ours runs exactly as a user runs it: ``python run_distributed_simulation.py --cycles N --interval 0
--exit`` on free ports (``--base-port``), with fresh ``--log-dir`` and ``--state-dir`` in a
temporary folder; its rate is the summary's "cycles per second (wall)", which the coordinator
measures over its cycle loop only (start-up and shutdown excluded). Mosaik runs the same feeder
as three simulator processes started by mosaik's ``cmd`` starter (bench/mosaik_sims.py: same
data, same device physics and policies, the same optimal planner); its rate is the wall time of
``world.run`` (start-up and shutdown excluded too). ``durable`` mosaik simulators also write a
flushed CSV row and commit their state to SQLite each step, as our agents do; ``physics`` ones
do not. ``--also DIR`` adds another checkout of this project (say, the commit before a change)
as one more row. CPU ms per step is the CPU of all four processes (coordinator or mosaik, and
the three agents or simulators) while the steps ran, divided by the steps: less sensitive to a
busy machine than the rate. Runs are interleaved, each round in a rotated order, so that a busy
neighbour slows every implementation alike. A benchmark, not a test: nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _agents import ROOT, run_coordinator


def run_ours(steps: int, planner: str, root: Path = ROOT) -> tuple[float, float]:
    """Cycles per second and CPU ms per cycle (all four processes) of one run of run_distributed_simulation.py."""
    run = run_coordinator(steps, planner, root)
    return run.cycles_per_s, run.cpu_ms_per_cycle


def run_mosaik(steps: int, work: str) -> tuple[float, float]:
    """Steps per second and CPU ms per step (all four processes) of one mosaik run of the same feeder."""
    work_dir = Path(tempfile.mkdtemp(prefix="ems-vs-mosaik-"))
    command = [
        sys.executable,
        str(ROOT / "bench" / "mosaik_sims.py"),
        "scenario",
        "--steps",
        str(steps),
        "--work",
        work,
        "--dir",
        str(work_dir),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"mosaik scenario failed (exit {done.returncode}): {done.stderr[-800:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(work_dir, ignore_errors=True)
    return result["steps_per_s"], sum(result["cpu_s"].values()) / steps * 1000


def label_of(root: Path) -> str:
    """A checkout's short commit, for its row."""
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or root.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="Cycles (ours) and steps (mosaik) per run")
    parser.add_argument("--rounds", type=int, default=3, help="Runs of each implementation, interleaved")
    parser.add_argument(
        "--planner", default="optimal", help="Our grid agent's planner (mosaik's grid always runs optimal)"
    )
    parser.add_argument(
        "--mosaik-work",
        nargs="*",
        choices=("durable", "physics"),
        default=["durable", "physics"],
        help="Mosaik rows (none: ours only)",
    )
    parser.add_argument(
        "--also", type=Path, nargs="*", default=[], help="Other checkouts of this project to run beside ours"
    )
    args = parser.parse_args()

    ours = f"ours ({label_of(ROOT)})"
    runners: dict[str, Callable[[], tuple[float, float]]] = {ours: lambda: run_ours(args.steps, args.planner)}
    for root in args.also:
        runners[f"ours at {root} ({label_of(root)})"] = lambda r=root.resolve(): run_ours(args.steps, args.planner, r)
    for work in args.mosaik_work:
        runners[f"mosaik {mosaik_version()} ({work})"] = lambda w=work: run_mosaik(args.steps, w)
    names = list(runners)
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            rate, cpu = runners[name]()
            rates[name].append(rate)
            cpus[name].append(cpu)
            print(
                f"round {round_ + 1}/{args.rounds}: {name}: {rate:.0f} steps/s, {cpu:.2f} CPU ms/step", file=sys.stderr
            )

    table = Table(title=f"{args.steps} steps a run, {args.rounds} interleaved rounds, start-up excluded")
    columns = (
        "implementation",
        "steps",
        "median steps/s",
        "min",
        "max",
        "ours / this",
        "ours / this, per round",
        "CPU ms/step",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "implementation" else "right")
    for name in names:
        paired = statistics.median(o / r for o, r in zip(rates[ours], rates[name], strict=True))
        table.add_row(
            name,
            str(args.steps),
            f"{statistics.median(rates[name]):.0f}",
            f"{min(rates[name]):.0f}",
            f"{max(rates[name]):.0f}",
            f"{statistics.median(rates[ours]) / statistics.median(rates[name]):.2f}",
            f"{paired:.2f}",
            f"{statistics.median(cpus[name]):.2f}",
        )
    Console(width=180).print(table)
    print(
        "ours / this: the ratio of the medians; per round: the median of each round's ratio."
        " CPU: median, all four processes."
    )


def mosaik_version() -> str:
    from importlib.metadata import version

    return version("mosaik")


if __name__ == "__main__":
    main()
