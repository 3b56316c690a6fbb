"""Milliseconds per AC power flow, power-grid-model against pandapower's runpp: python bench/powerflow.py.

For each grid the injections are SimBench's own at its peak-PV step, one load per bus (what the grid agent
solves each cycle). power-grid-model: the grid agent's PowerFlow (converted once, then update + solve).
pandapower: runpp on the same net, warm (its first call, which builds the admittance structures, is left out),
with numba when it is installed and its plain Python kernels otherwise. Median of the repeats.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pandapower as pp

from agents.network.load import load_network
from agents.network.powerflow import PowerFlow

GRIDS = ["1-LV-rural1--2-sw", "1-LV-semiurb4--0-sw", "1-LV-rural3--2-sw", "1-MVLV-rural-all-0-sw"]


def peak_injections(net: pp.pandapowerNet) -> tuple[np.ndarray, np.ndarray]:
    """Per-bus p and q (kW, kvar, load convention) at the step with the most PV (the nets' own values if none)."""
    import simbench

    position = {bus: k for k, bus in enumerate(net.bus.index)}
    p, q = np.zeros(len(net.bus)), np.zeros(len(net.bus))
    try:
        absolute = simbench.get_absolute_values(net, profiles_instead_of_study_cases=True)
        step = int(absolute[("sgen", "p_mw")].sum(axis=1).to_numpy().argmax())
        load_p, load_q = absolute[("load", "p_mw")].iloc[step], absolute[("load", "q_mvar")].iloc[step]
        sgen_p = absolute[("sgen", "p_mw")].iloc[step]
    except (KeyError, ValueError, AttributeError):
        load_p, load_q, sgen_p = net.load["p_mw"], net.load["q_mvar"], net.sgen["p_mw"]
    for values, table, sign, target in ((load_p, net.load, 1, p), (load_q, net.load, 1, q), (sgen_p, net.sgen, -1, p)):
        for element, value in values.items():
            target[position[table.at[element, "bus"]]] += sign * value * 1e3
    return p, q


def time_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="*", default=GRIDS, help="SimBench codes or pandapower JSON files")
    parser.add_argument("--repeats", type=int, default=50, help="power flows per engine and grid (median taken)")
    args = parser.parse_args(argv)
    numba = importlib.util.find_spec("numba") is not None
    title = f"ms per AC power flow, median of {args.repeats} (pandapower numba: {'on' if numba else 'off'})"
    table = Table(title=title)
    for column in ("grid", "buses", "lines", "load s", "convert ms", "power-grid-model ms", "pandapower ms", "ratio"):
        table.add_column(column, justify="left" if column == "grid" else "right")
    for grid in args.grids:
        started = time.perf_counter()
        network = load_network(grid)
        load_s = time.perf_counter() - started
        net = network.net
        p_kw, q_kvar = peak_injections(net)
        started = time.perf_counter()
        flow = PowerFlow(net)
        convert_ms = (time.perf_counter() - started) * 1000
        pgm_ms = time_ms(lambda: flow.solve(p_kw, q_kvar), args.repeats)  # noqa: B023 (called within the iteration)
        ref = copy.deepcopy(net)
        for element in ("load", "sgen", "storage"):
            ref[element] = ref[element].iloc[0:0]
        pp.create_loads(ref, ref.bus.index, p_mw=p_kw / 1e3, q_mvar=q_kvar / 1e3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp.runpp(ref, numba=numba)  # warm: the first call builds what later ones reuse
            pp_ms = time_ms(lambda: pp.runpp(ref, numba=numba), max(args.repeats // 5, 3))  # noqa: B023
        table.add_row(
            grid,
            f"{len(net.bus):,}",
            f"{len(net.line):,}",
            f"{load_s:.1f}",
            f"{convert_ms:.0f}",
            f"{pgm_ms:.2f}",
            f"{pp_ms:.1f}",
            f"{pp_ms / pgm_ms:.0f}x",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
