"""The run report's PNG plots (matplotlib, Agg, imported only when a report is written): transformer loading,
state of charge, curtailment and shedding, and, on a network, the voltage band against the buses' limits."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

#: The most transformers drawn, one panel each, in transformer_loading.png.
MAX_TRANSFORMER_PANELS = 12


def _x(rows: Iterable[dict[str, Any]]) -> tuple[list[Any], str]:
    """X values of rows: simulated times when every row has one, else cycle numbers."""
    rows = list(rows)
    if rows and all(r.get("timestamp") for r in rows):
        return [datetime.fromisoformat(r["timestamp"]) for r in rows], "simulated time"
    return [r["cycle"] for r in rows], "cycle"


def _figure(rows: int = 1, height_per_row: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(11, 1.2 + height_per_row * rows), sharex=True, squeeze=False)
    return plt, fig, [row[0] for row in axes]


def _finish(plt, fig, axes, xlabel: str, path: Path) -> Path:
    import matplotlib.dates as mdates

    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if xlabel == "simulated time":
        locator = mdates.AutoDateLocator()
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loading(path: Path, cycles: Sequence[dict[str, Any]]) -> Path:
    ids = list(dict.fromkeys(t["transformer_id"] for c in cycles for t in c["transformers"]))[:MAX_TRANSFORMER_PANELS]
    plt, fig, axes = _figure(max(len(ids), 1))
    xlabel = "cycle"
    if not ids:
        axes[0].text(0.5, 0.5, "no cycle ran", ha="center", va="center", transform=axes[0].transAxes)
    for ax, tid in zip(axes, ids, strict=False):  # no transformer: one panel, left empty
        rows = [(c, t) for c in cycles for t in c["transformers"] if t["transformer_id"] == tid]
        x, xlabel = _x(c for c, _ in rows)
        before = [t["loading_before_kw"] for _, t in rows]
        after = [t["loading_after_kw"] for _, t in rows]
        rating = [t["rating_kw"] for _, t in rows]
        reverse = [-t["reverse_limit_kw"] for _, t in rows]
        ax.plot(x, before, color="#9aa5b1", linestyle=":", linewidth=1.5, label="without coordination")
        ax.plot(x, after, color="#1f6feb", linewidth=2.2, marker="o", markersize=3, label="loading")
        ax.plot(x, rating, color="#c62828", linestyle="--", linewidth=1.3, label="rating")
        ax.plot(x, reverse, color="#b26a00", linestyle="--", linewidth=1.3, label="-reverse limit")
        outside = [t["state_after"] != "normal" for _, t in rows]  # as the grid agent classified it, with its tolerance
        if any(outside):
            ax.fill_between(
                x,
                min(reverse + after),
                max(rating + after),
                where=outside,
                color="#c62828",
                alpha=0.12,
                step="mid",
                label="outside limits",
            )
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_ylabel("kW (> 0 import)")
        ax.set_title(f"Transformer {tid}: loading against its limits", fontsize=11, loc="left")
    return _finish(plt, fig, axes, xlabel, path)


def plot_soc(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    plt, fig, axes = _figure()
    ax = axes[0]
    agents = sorted({a for row in history for a in row.get("soc_fraction", {})})
    xlabel = "cycle"
    for agent_id in agents:
        rows = [row for row in history if agent_id in row["soc_fraction"]]
        x, xlabel = _x(rows)
        ax.plot(
            x,
            [100.0 * row["soc_fraction"][agent_id] for row in rows],
            marker="o",
            markersize=3,
            linewidth=1.8,
            label=agent_id,
        )
    if not agents:
        ax.text(0.5, 0.5, "no battery reported its state of charge", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 100)
    ax.set_ylabel("state of charge (%)")
    ax.set_title("Battery state of charge at the end of each step", fontsize=11, loc="left")
    return _finish(plt, fig, axes, xlabel, path)


def plot_actions(path: Path, cycles: Sequence[dict[str, Any]], last_step_s: float) -> Path:
    """Applied kW per step, drawn as steps that hold from each step's start to the next (the last for
    ``last_step_s``)."""
    plt, fig, axes = _figure(2, height_per_row=2.6)
    x, xlabel = _x(cycles)
    if cycles:  # one more edge, so that the last step is drawn over its whole length too
        x = [*x, x[-1] + (timedelta(seconds=last_step_s) if xlabel == "simulated time" else 1)]

    def applied(action: str, sign: float = 1.0) -> list[float]:
        values = [sign * sum(a["applied_kw"] for a in c["actions"] if a["action"] == action) for c in cycles]
        return values + values[-1:]

    top, bottom = axes
    curtailed, shed = applied("curtail_solar"), applied("shed_load")
    top.step(x, curtailed, where="post", color="#e3a008", linewidth=2, label="solar curtailed")
    top.step(x, shed, where="post", color="#7e3af2", linewidth=2, label="load shed")
    top.set_ylabel("kW")
    top.set_ylim(bottom=0, top=max([*curtailed, *shed, 1.0]) * 1.1)
    top.set_title("Solar curtailment and load shedding ordered by the grid agent", fontsize=11, loc="left")
    if not any(curtailed) and not any(shed):
        top.text(
            0.5,
            0.5,
            "none ordered in this run" if cycles else "no cycle ran",
            ha="center",
            va="center",
            color="#5f6b7a",
            transform=top.transAxes,
        )
    bottom.step(x, applied("discharge_battery"), where="post", color="#1a7f37", linewidth=2, label="discharge ordered")
    bottom.step(
        x, applied("charge_battery", -1.0), where="post", color="#0e7490", linewidth=2, label="charge ordered (< 0)"
    )
    bottom.axhline(0.0, color="black", linewidth=0.6)
    bottom.set_ylabel("kW")
    bottom.set_title("Battery dispatch ordered by the grid agent", fontsize=11, loc="left")
    return _finish(plt, fig, axes, xlabel, path)


def plot_voltage(path: Path, cycles: Sequence[dict[str, Any]], limits: Sequence[dict[str, Any]]) -> Path:
    """The lowest and highest bus voltage of each cycle, before planning and after acting, with the buses' limits."""
    plt, fig, axes = _figure()
    ax = axes[0]
    rows = [c for c in cycles if c.get("network")]
    x, xlabel = _x(rows)

    def series(key: str) -> list[float]:
        return [math.nan if c["network"].get(key) is None else c["network"][key] for c in rows]

    ax.plot(
        x, series("vm_max_pu_before"), color="#e8a0a0", linestyle=":", linewidth=1.5, label="highest, uncoordinated"
    )
    ax.plot(x, series("vm_min_pu_before"), color="#9ab8e8", linestyle=":", linewidth=1.5, label="lowest, uncoordinated")
    ax.plot(x, series("vm_max_pu_after"), color="#c62828", linewidth=2, label="highest bus voltage")
    ax.plot(x, series("vm_min_pu_after"), color="#1f6feb", linewidth=2, label="lowest bus voltage")
    styles = ("--", "-.", (0, (1, 1)))
    for group, style in zip(limits, styles, strict=False):  # the commonest limits first; three kinds at most
        kv = ", ".join(f"{v:g}" for v in group["vn_kv"])
        for key in ("min_vm_pu", "max_vm_pu"):
            ax.axhline(group[key], color="#5f6b7a", linestyle=style, linewidth=1.1)
        ax.plot([], [], color="#5f6b7a", linestyle=style, label=f"limits at {kv} kV ({group['buses']} buses)")
    if not rows:
        ax.text(0.5, 0.5, "no power flow in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("bus voltage (p.u.)")
    ax.set_title("Lowest and highest bus voltage of each step, against the buses' limits", fontsize=11, loc="left")
    return _finish(plt, fig, axes, xlabel, path)
