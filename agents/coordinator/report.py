"""Run reports: KPIs from the coordinator's cycle results, ``summary.json`` and PNG plots (matplotlib, Agg).

Everything here works on the JSON the grid agent answered to ``POST /coordinate`` (one dict per
cycle) and, for the state of charge, on the history rows of ``GET /dashboard/data``. Energies
integrate each cycle's power over its simulated step (``step_s``): a transformer's import is its
positive loading, its export its negative loading; curtailment, shedding and battery throughput
are what the agents applied of the grid agent's commands.

A run on a network (``--network``) also reports its power flows: each cycle's ``network`` block
(lowest and highest bus voltage, most loaded line and transformer, how many buses and lines were
outside their limits, before planning and after acting) gathered over the run, the hours with
something outside its limits, and a plot of the voltage band against the buses' limits (those of
``GET /network``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.coordinator.plots import plot_actions, plot_loading, plot_soc, plot_voltage
from models.units import energy_kwh

#: Step assumed for a cycle in which no agent answered (and so none said how long its step was).
DEFAULT_STEP_S = 900.0
SECONDS_PER_MINUTE = 60.0
SECONDS_PER_HOUR = 3600.0

#: The plots a report holds, by file name; the voltage plot only for a run on a network.
PLOTS = ("transformer_loading.png", "soc.png", "curtailment_shedding.png")
VOLTAGE_PLOT = "voltage.png"


def _steps_s(cycles: Sequence[dict[str, Any]]) -> list[float]:
    """Each cycle's step (s); a cycle that does not say takes the last known step (or 15 min)."""
    known = next((c["step_s"] for c in cycles if c.get("step_s")), DEFAULT_STEP_S)
    steps = []
    for cycle in cycles:
        known = cycle.get("step_s") or known
        steps.append(known)
    return steps


def run_kpis(cycles: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's key figures from its cycle results (energies in kWh, durations in minutes)."""
    steps_s = _steps_s(cycles)
    kpis: dict[str, Any] = {
        "cycles": len(cycles),
        "first_timestamp": cycles[0]["timestamp"] if cycles else None,
        "last_timestamp": cycles[-1]["timestamp"] if cycles else None,
        "simulated_minutes": sum(steps_s) / SECONDS_PER_MINUTE,
    }
    imported = {"before": 0.0, "after": 0.0}
    exported = {"before": 0.0, "after": 0.0}
    outside: Counter[tuple[str, str]] = Counter()  # (when, state) -> minutes
    unfixed_kwh = 0.0
    for cycle, step_s in zip(cycles, steps_s, strict=True):
        for t in cycle["transformers"]:
            for when in ("before", "after"):
                loading = t[f"loading_{when}_kw"]
                imported[when] += energy_kwh(max(loading, 0.0), step_s)
                exported[when] += energy_kwh(max(-loading, 0.0), step_s)
                if t[f"state_{when}"] != "normal":
                    outside[(when, t[f"state_{when}"])] += step_s / SECONDS_PER_MINUTE
            unfixed_kwh += energy_kwh(t.get("unfixed_kw") or 0.0, step_s)
    applied: Counter[str] = Counter()  # action -> kWh
    statuses: Counter[str] = Counter()
    for cycle, step_s in zip(cycles, steps_s, strict=True):
        for a in cycle["actions"]:
            applied[a["action"]] += energy_kwh(a["applied_kw"], step_s)
            statuses[a["status"]] += 1
    # by the kind each cycle carries; cycles recorded before fallback_kind existed count as "unknown"
    reasons = Counter(c.get("fallback_kind") or "unknown" for c in cycles if c.get("fallback_reason"))
    durations = [c["duration_ms"] for c in cycles]
    kpis.update(
        {
            "energy_imported_kwh": imported["after"],
            "energy_exported_kwh": exported["after"],
            "energy_imported_without_coordination_kwh": imported["before"],
            "energy_exported_without_coordination_kwh": exported["before"],
            "minutes_outside_limits_before": float(sum(m for (when, _), m in outside.items() if when == "before")),
            "minutes_outside_limits_after": float(sum(m for (when, _), m in outside.items() if when == "after")),
            "minutes_overload_before": float(outside[("before", "overload")]),
            "minutes_overload_after": float(outside[("after", "overload")]),
            "minutes_reverse_flow_before": float(outside[("before", "reverse_power_flow")]),
            "minutes_reverse_flow_after": float(outside[("after", "reverse_power_flow")]),
            "energy_outside_limits_after_kwh": unfixed_kwh,
            "solar_curtailed_kwh": float(applied["curtail_solar"]),
            "load_shed_kwh": float(applied["shed_load"]),
            "battery_charged_kwh": float(applied["charge_battery"]),
            "battery_discharged_kwh": float(applied["discharge_battery"]),
            "battery_throughput_kwh": float(applied["charge_battery"] + applied["discharge_battery"]),
            "commands": sum(statuses.values()),
            "commands_by_status": dict(sorted(statuses.items())),
            "planner_calls": dict(sorted(Counter(c["planner"] for c in cycles).items())),
            "planner_fallbacks": sum(reasons.values()),
            "fallback_reasons": dict(sorted(reasons.items())),
            "unreachable_agent_cycles": sum(len(c["unreachable"]) for c in cycles),
            "median_cycle_ms": statistics.median(durations) if durations else None,
            "max_cycle_ms": max(durations) if durations else None,
            "network": network_kpis(cycles),
        }
    )
    return kpis


def network_kpis(cycles: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's power flows, before planning and after acting; None when no cycle carried a ``network`` block.

    Extremes are over the cycles whose power flow converged (``None`` when none did); the most loaded line and
    transformer are named at the cycle of their highest loading; ``hours_*_outside_*`` sum the steps of the cycles
    with at least one bus, line or transformer (or any of them) outside its limits.
    """
    reports = [(c["network"], step_s) for c, step_s in zip(cycles, _steps_s(cycles), strict=True) if c.get("network")]
    if not reports:
        return None
    kpis: dict[str, Any] = {
        "cycles": len(reports),
        "power_flows_failed": sum(1 for n, _ in reports if not n.get("converged", True)),
        "replans": sum(1 for n, _ in reports if n.get("replanned")),
        "powerflow_ms_median": statistics.median(n.get("powerflow_ms", 0.0) for n, _ in reports),
    }
    for when in ("before", "after"):

        def figures(key: str, when: str = when) -> list[tuple[float, dict[str, Any]]]:
            return [(n[f"{key}_{when}"], n) for n, _ in reports if n.get(f"{key}_{when}") is not None]

        lows, highs = figures("vm_min_pu"), figures("vm_max_pu")
        lines, trafos = figures("line_loading_max_percent"), figures("transformer_loading_max_percent")
        line = max(lines, key=lambda f: f[0], default=None)
        trafo = max(trafos, key=lambda f: f[0], default=None)
        kpis.update(
            {
                f"vm_min_pu_{when}": min((v for v, _ in lows), default=None),
                f"vm_max_pu_{when}": max((v for v, _ in highs), default=None),
                f"line_loading_max_percent_{when}": line[0] if line else None,
                f"most_loaded_line_{when}": line[1].get(f"most_loaded_line_{when}") if line else None,
                f"transformer_loading_max_percent_{when}": trafo[0] if trafo else None,
                f"most_loaded_transformer_{when}": trafo[1].get(f"most_loaded_transformer_{when}") if trafo else None,
                f"buses_outside_max_{when}": max((v for v, _ in figures("buses_outside")), default=None),
                f"lines_outside_max_{when}": max((v for v, _ in figures("lines_outside")), default=None),
            }
        )
        outside = {"buses": 0.0, "lines": 0.0, "transformers": 0.0, "any": 0.0}
        for n, step_s in reports:
            hours = step_s / SECONDS_PER_HOUR
            counts = {kind: n.get(f"{kind}_outside_{when}") or 0 for kind in ("buses", "lines", "transformers")}
            for kind, count in counts.items():
                outside[kind] += hours if count > 0 else 0.0
            outside["any"] += hours if any(counts.values()) else 0.0
        kpis.update({f"hours_{kind}_outside_{when}": hours for kind, hours in outside.items()})
    return kpis


def transformer_kpis(cycles: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per transformer: its limits, its peak import and export and its minutes outside limits, before and after."""
    found: dict[str, dict[str, Any]] = {}
    for cycle, step_s in zip(cycles, _steps_s(cycles), strict=True):
        for t in cycle["transformers"]:
            row = found.setdefault(
                t["transformer_id"],
                {
                    "rating_kw": t["rating_kw"],
                    "reverse_limit_kw": t["reverse_limit_kw"],
                    "minutes_outside_limits_before": 0.0,
                    "minutes_outside_limits_after": 0.0,
                },
            )
            for when in ("before", "after"):
                loading = t[f"loading_{when}_kw"]
                row[f"peak_import_{when}_kw"] = max(row.get(f"peak_import_{when}_kw", 0.0), loading)
                row[f"peak_export_{when}_kw"] = max(row.get(f"peak_export_{when}_kw", 0.0), -loading)
                if t[f"state_{when}"] != "normal":
                    row[f"minutes_outside_limits_{when}"] += step_s / SECONDS_PER_MINUTE
    return found


def summary_rows(kpis: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The KPIs as (figure, coordinated, uncoordinated) rows for a terminal table; "" where there is no baseline."""
    k = kpis
    if not k["cycles"]:
        return [("cycles", "0", "")]
    rows = [
        ("cycles", str(k["cycles"]), ""),
        ("simulated from", (k["first_timestamp"] or "-")[:16].replace("T", " "), ""),
        ("simulated to", (k["last_timestamp"] or "-")[:16].replace("T", " "), ""),
        (
            "energy imported (kWh)",
            f"{k['energy_imported_kwh']:.2f}",
            f"{k['energy_imported_without_coordination_kwh']:.2f}",
        ),
        (
            "energy exported (kWh)",
            f"{k['energy_exported_kwh']:.2f}",
            f"{k['energy_exported_without_coordination_kwh']:.2f}",
        ),
        ("minutes outside limits", f"{k['minutes_outside_limits_after']:g}", f"{k['minutes_outside_limits_before']:g}"),
        ("energy outside limits (kWh)", f"{k['energy_outside_limits_after_kwh']:.2f}", ""),
        ("solar curtailed (kWh)", f"{k['solar_curtailed_kwh']:.2f}", ""),
        ("load shed (kWh)", f"{k['load_shed_kwh']:.2f}", ""),
        ("battery throughput ordered (kWh)", f"{k['battery_throughput_kwh']:.2f}", ""),
        ("  charged / discharged (kWh)", f"{k['battery_charged_kwh']:.2f} / {k['battery_discharged_kwh']:.2f}", ""),
        ("commands sent", str(k["commands"]), ""),
        *((f"  {status}", str(n), "") for status, n in k["commands_by_status"].items()),
        *((f"planner {name}", f"{n} cycles", "") for name, n in k["planner_calls"].items()),
        ("planner fallbacks", str(k["planner_fallbacks"]), ""),
        *((f"  {kind}", str(n), "") for kind, n in k["fallback_reasons"].items()),
        ("unreachable (agent-cycles)", str(k["unreachable_agent_cycles"]), ""),
        ("median cycle, grid agent (ms)", f"{k['median_cycle_ms']:.1f}", ""),
    ]
    if k.get("network"):
        rows += network_rows(k["network"])
    return rows


def network_rows(n: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The power flows' figures as (figure, coordinated = after acting, uncoordinated = before planning) rows."""

    def both(key: str, spec: str) -> tuple[str, str]:
        return tuple(_fmt(n.get(f"{key}_{when}"), spec) for when in ("after", "before"))  # type: ignore[return-value]

    return [
        ("lowest bus voltage (p.u.)", *both("vm_min_pu", ".4f")),
        ("highest bus voltage (p.u.)", *both("vm_max_pu", ".4f")),
        ("most loaded line (%)", *both("line_loading_max_percent", ".1f")),
        ("  which line", *both("most_loaded_line", "")),
        ("most loaded transformer (%)", *both("transformer_loading_max_percent", ".1f")),
        ("  which transformer", *both("most_loaded_transformer", "")),
        ("most buses outside limits in a cycle", *both("buses_outside_max", "d")),
        ("most lines above 100 % in a cycle", *both("lines_outside_max", "d")),
        ("hours with a bus outside its limits", *both("hours_buses_outside", "g")),
        ("hours with a line above 100 %", *both("hours_lines_outside", "g")),
        ("hours with a transformer above 100 %", *both("hours_transformers_outside", "g")),
        ("hours with any limit broken", *both("hours_any_outside", "g")),
        ("power flows that failed (cycles)", str(n["power_flows_failed"]), ""),
        ("cycles planned twice (re-plans)", str(n["replans"]), ""),
        ("median power flow, both (ms)", f"{n['powerflow_ms_median']:.1f}", ""),
    ]


def network_line(n: dict[str, Any]) -> str:
    """One cycle's ``network`` block in a line: before -> after."""
    if not n.get("converged", True) and n.get("vm_min_pu_after") is None:
        return f"power flow failed: {n.get('error')}"

    def span(when: str) -> str:
        return f"{_fmt(n.get(f'vm_min_pu_{when}'), '.4f')}-{_fmt(n.get(f'vm_max_pu_{when}'), '.4f')}"

    def pair(key: str, spec: str) -> str:
        return f"{_fmt(n.get(f'{key}_before'), spec)} -> {_fmt(n.get(f'{key}_after'), spec)}"

    text = (
        f"V {span('before')} -> {span('after')} p.u.; line max {pair('line_loading_max_percent', '.1f')} %; "
        f"outside: buses {pair('buses_outside', 'd')}, lines {pair('lines_outside', 'd')}"
    )
    if n.get("replanned"):
        text += "; planned twice"
    if not n.get("converged", True):
        text += f"; {n.get('error')}"
    return text


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- the report on disk --------------------------------------------------------------------------
def write_report(
    directory: Path,
    cycles: Sequence[dict[str, Any]],
    history: Sequence[dict[str, Any]] = (),
    run: dict[str, Any] | None = None,
    network: dict[str, Any] | None = None,
) -> list[Path]:
    """Write summary.json, cycles.jsonl and the PNG plots into ``directory``; return the paths written.

    ``history`` are the grid agent's dashboard rows (for the state of charge); ``run`` says how
    the run was made (flags), and goes into summary.json as it is; ``network`` is the grid agent's
    ``GET /network`` (for the buses' voltage limits), on a run with a network.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = [
        plot_loading(directory / PLOTS[0], cycles),
        plot_soc(directory / PLOTS[1], history),
        plot_actions(directory / PLOTS[2], cycles, _steps_s(cycles)[-1] if cycles else DEFAULT_STEP_S),
    ]
    limits = voltage_limits(network)
    if network is not None or any(c.get("network") for c in cycles):
        written.append(plot_voltage(directory / VOLTAGE_PLOT, cycles, limits))
    with (directory / "cycles.jsonl").open("w", encoding="utf-8") as out:
        for cycle in cycles:
            out.write(json.dumps(cycle, separators=(",", ":")) + "\n")
    written.append(directory / "cycles.jsonl")
    summary = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": run or {},
        "kpis": run_kpis(cycles),
        "transformers": transformer_kpis(cycles),
        "soc_agents": sorted({a for row in history for a in row.get("soc_fraction", {})}),
        "voltage_limits": limits,
        "files": [p.name for p in written],
    }
    path = directory / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return [path, *written]


def voltage_limits(network: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The distinct voltage limits of a network's buses (``GET /network``), with their nominal voltages and count."""
    if not network:
        return []
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for bus in network.get("buses", []):
        group = groups.setdefault(
            (bus["min_vm_pu"], bus["max_vm_pu"]),
            {"min_vm_pu": bus["min_vm_pu"], "max_vm_pu": bus["max_vm_pu"], "vn_kv": set(), "buses": 0},
        )
        group["vn_kv"].add(bus["vn_kv"])
        group["buses"] += 1
    return [{**g, "vn_kv": sorted(g["vn_kv"])} for g in sorted(groups.values(), key=lambda g: -g["buses"])]


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
