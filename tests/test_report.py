"""Run reports and the coordinator's display.

KPIs as pure functions, the report on disk, and the real coordinator with --report.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from pytest import approx
from rich.console import Console

from agents.coordinator.progress import LINES_UP_TO_CYCLES, cycle_display, uses_progress_bar
from agents.coordinator.report import (
    PLOTS,
    VOLTAGE_PLOT,
    network_kpis,
    network_line,
    run_kpis,
    summary_rows,
    transformer_kpis,
    voltage_limits,
    write_report,
)
from tests.test_e2e import (
    ROOT,
    child_env,
    child_pids,
    coordinator_command,
    free_port_block,
    leftover_pids,  # noqa: F401 (a fixture)
    pid_gone,
    wait_until,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def transformer(before: float, after: float, rating: float = 15.0, reverse: float = 15.0) -> dict:
    def state(kw: float) -> str:
        return "overload" if kw > rating else "reverse_power_flow" if kw < -reverse else "normal"

    return {
        "transformer_id": "T1",
        "rating_kw": rating,
        "reverse_limit_kw": reverse,
        "loading_before_kw": before,
        "loading_after_kw": after,
        "state_before": state(before),
        "state_after": state(after),
        "unfixed_kw": max(after - rating, -reverse - after, 0.0),
    }


def action(name: str, applied_kw: float, status: str = "applied") -> dict:
    return {
        "agent_id": "home_1",
        "transformer_id": "T1",
        "action": name,
        "requested_kw": applied_kw,
        "applied_kw": applied_kw,
        "status": status,
        "reason": None,
    }


#: Two 15-minute cycles: an overload fixed by curtailment, shedding and a battery,
#: then reverse flow the AI fallback could not fix.
CYCLES = [
    {
        "cycle": 1,
        "timestamp": "2025-07-15T12:00:00",
        "step_s": 900.0,
        "planner": "optimal",
        "fallback_reason": None,
        "transformers": [transformer(20.0, 15.0)],
        "actions": [
            action("curtail_solar", 2.0),
            action("shed_load", 1.0),
            action("discharge_battery", 2.0, "partial"),
        ],
        "unreachable": [],
        "agents_stepped": 2,
        "duration_ms": 4.0,
        "phase_ms": {"step": 1.0, "plan": 2.0, "act": 1.0},
    },
    {
        "cycle": 2,
        "timestamp": "2025-07-15T12:15:00",
        "step_s": 900.0,
        "planner": "optimal",
        "fallback_reason": "OPENAI_API_KEY is not set",
        "fallback_kind": "missing_key",
        "transformers": [transformer(-20.0, -16.0)],
        "actions": [action("charge_battery", 4.0)],
        "unreachable": ["battery_agent_1"],
        "agents_stepped": 1,
        "duration_ms": 6.0,
        "phase_ms": {"step": 1.0, "plan": 4.0, "act": 1.0},
    },
]
HISTORY = [
    {"cycle": 1, "timestamp": "2025-07-15T12:00:00", "soc_fraction": {"battery_agent_1": 0.5, "home_1": 0.4}},
    {"cycle": 2, "timestamp": "2025-07-15T12:15:00", "soc_fraction": {"battery_agent_1": 0.55, "home_1": 0.45}},
]


def assert_nontrivial_png(path: Path) -> None:
    """A real PNG, of some size, with more than one colour in it."""
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert path.stat().st_size > 10_000, f"{path} is only {path.stat().st_size} bytes"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    colours = np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)
    assert len(colours) > 10, f"{path} has {len(colours)} colours"


# -- KPIs ----------------------------------------------------------------------------------------
def test_run_kpis_integrate_each_step():
    k = run_kpis(CYCLES)
    assert k["cycles"] == 2
    assert k["simulated_minutes"] == 30
    assert k["energy_imported_kwh"] == approx(15.0 * 0.25)
    assert k["energy_exported_kwh"] == approx(16.0 * 0.25)
    assert k["energy_imported_without_coordination_kwh"] == approx(20.0 * 0.25)
    assert k["energy_exported_without_coordination_kwh"] == approx(20.0 * 0.25)
    assert k["minutes_outside_limits_before"] == 30
    assert k["minutes_outside_limits_after"] == 15
    assert k["minutes_overload_before"] == 15 and k["minutes_overload_after"] == 0
    assert k["minutes_reverse_flow_before"] == 15 and k["minutes_reverse_flow_after"] == 15
    assert k["energy_outside_limits_after_kwh"] == approx(1.0 * 0.25)
    assert k["solar_curtailed_kwh"] == approx(0.5)
    assert k["load_shed_kwh"] == approx(0.25)
    assert k["battery_discharged_kwh"] == approx(0.5)
    assert k["battery_charged_kwh"] == approx(1.0)
    assert k["battery_throughput_kwh"] == approx(1.5)
    assert k["commands"] == 4
    assert k["commands_by_status"] == {"applied": 3, "partial": 1}
    assert k["planner_calls"] == {"optimal": 2}
    assert k["planner_fallbacks"] == 1
    assert k["fallback_reasons"] == {"missing_key": 1}
    assert k["unreachable_agent_cycles"] == 1
    assert k["median_cycle_ms"] == approx(5.0)


def test_run_kpis_of_no_cycle():
    k = run_kpis([])
    assert k["cycles"] == 0
    assert k["energy_imported_kwh"] == 0
    assert summary_rows(k) == [("cycles", "0", "")]


def test_a_cycle_without_a_step_takes_the_last_known_step():
    silent = {**CYCLES[1], "step_s": None, "cycle": 3}
    assert run_kpis([CYCLES[0], silent])["simulated_minutes"] == 30


def test_transformer_kpis_peaks_and_minutes():
    t1 = transformer_kpis(CYCLES)["T1"]
    assert t1["peak_import_before_kw"] == 20 and t1["peak_import_after_kw"] == 15
    assert t1["peak_export_before_kw"] == 20 and t1["peak_export_after_kw"] == 16
    assert t1["minutes_outside_limits_before"] == 30 and t1["minutes_outside_limits_after"] == 15


def test_summary_rows_compare_with_and_without_coordination():
    rows = {
        figure: (coordinated, uncoordinated) for figure, coordinated, uncoordinated in summary_rows(run_kpis(CYCLES))
    }
    assert rows["minutes outside limits"] == ("15", "30")
    assert rows["energy imported (kWh)"] == ("3.75", "5.00")
    assert rows["solar curtailed (kWh)"][0] == "0.50"
    assert rows["planner fallbacks"][0] == "1"
    assert rows["  missing_key"][0] == "1"


# -- the report on disk --------------------------------------------------------------------------
def test_write_report_writes_summary_cycles_and_plots(tmp_path):
    written = write_report(tmp_path / "report", CYCLES, HISTORY, {"cycles": 2})
    assert {p.name for p in written} == {"summary.json", "cycles.jsonl", *PLOTS}
    summary = json.loads((tmp_path / "report" / "summary.json").read_text(encoding="utf-8"))
    assert summary["kpis"] == json.loads(json.dumps(run_kpis(CYCLES)))
    assert summary["run"] == {"cycles": 2}
    assert summary["soc_agents"] == ["battery_agent_1", "home_1"]
    lines = (tmp_path / "report" / "cycles.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["cycle"] for line in lines] == [1, 2]
    for name in PLOTS:
        assert_nontrivial_png(tmp_path / "report" / name)


def test_write_report_of_no_cycle_still_draws(tmp_path):
    write_report(tmp_path, [], [])
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


# -- a run on a network ----------------------------------------------------------------------------
def network_block(vm_before, vm_after, line_before, line_after, buses_outside, lines_outside=(0, 0), **extra) -> dict:
    """A cycle's ``network``: (min, max) voltages, the most loaded line as (index, percent), counts before/after."""
    return {
        "converged": True,
        "error": None,
        "vm_min_pu_before": vm_before[0],
        "vm_max_pu_before": vm_before[1],
        "vm_min_pu_after": vm_after[0],
        "vm_max_pu_after": vm_after[1],
        "line_loading_max_percent_before": line_before[1],
        "most_loaded_line_before": line_before[0],
        "line_loading_max_percent_after": line_after[1],
        "most_loaded_line_after": line_after[0],
        "transformer_loading_max_percent_before": 130.0,
        "most_loaded_transformer_before": "trafo_1",
        "transformer_loading_max_percent_after": 99.0,
        "most_loaded_transformer_after": "trafo_1",
        "buses_outside_before": buses_outside[0],
        "buses_outside_after": buses_outside[1],
        "lines_outside_before": lines_outside[0],
        "lines_outside_after": lines_outside[1],
        "transformers_outside_before": 1,
        "transformers_outside_after": 0,
        "powerflow_ms": 1.5,
        "replanned": False,
        **extra,
    }


NETWORK_CYCLES = [
    {**CYCLES[0], "network": network_block((0.99, 1.06), (0.99, 1.04), (3, 80.0), (3, 60.0), (2, 0), (0, 0))},
    {
        **CYCLES[1],
        "network": network_block((0.95, 1.03), (0.97, 1.02), (5, 110.0), (5, 95.0), (1, 1), (1, 0), replanned=True),
    },
    {
        **CYCLES[1],
        "cycle": 3,
        "timestamp": "2025-07-15T12:30:00",
        "network": {"converged": False, "error": "before: Iteration failed to converge", "powerflow_ms": 2.5},
    },
]
NETWORK_STATE = {
    "buses": [
        {"bus": 0, "vn_kv": 20.0, "min_vm_pu": 0.965, "max_vm_pu": 1.055},
        *({"bus": k, "vn_kv": 0.4, "min_vm_pu": 0.9, "max_vm_pu": 1.1} for k in range(1, 4)),
    ]
}


def test_network_kpis_extremes_and_hours_outside_before_and_after():
    n = network_kpis(NETWORK_CYCLES)
    assert (n["cycles"], n["power_flows_failed"], n["replans"]) == (3, 1, 1)
    assert (n["vm_min_pu_before"], n["vm_max_pu_before"]) == (0.95, 1.06)
    assert (n["vm_min_pu_after"], n["vm_max_pu_after"]) == (0.97, 1.04)
    assert (n["line_loading_max_percent_before"], n["most_loaded_line_before"]) == (110.0, 5)
    assert (n["line_loading_max_percent_after"], n["most_loaded_line_after"]) == (95.0, 5)
    assert n["most_loaded_transformer_before"] == "trafo_1" and n["transformer_loading_max_percent_after"] == 99.0
    assert (n["buses_outside_max_before"], n["buses_outside_max_after"]) == (2, 1)
    assert (n["lines_outside_max_before"], n["lines_outside_max_after"]) == (1, 0)
    # 15-minute steps: a bus outside in both converged cycles before, in one after; a line only before
    assert (n["hours_buses_outside_before"], n["hours_buses_outside_after"]) == (0.5, 0.25)
    assert (n["hours_lines_outside_before"], n["hours_lines_outside_after"]) == (0.25, 0.0)
    assert (n["hours_transformers_outside_before"], n["hours_transformers_outside_after"]) == (0.5, 0.0)
    assert (n["hours_any_outside_before"], n["hours_any_outside_after"]) == (0.5, 0.25)
    assert network_kpis(CYCLES) is None and run_kpis(CYCLES)["network"] is None


def test_summary_rows_show_the_network_after_and_before():
    rows = {figure: (after, before) for figure, after, before in summary_rows(run_kpis(NETWORK_CYCLES))}
    assert rows["highest bus voltage (p.u.)"] == ("1.0400", "1.0600")
    assert rows["most loaded line (%)"] == ("95.0", "110.0") and rows["  which line"] == ("5", "5")
    assert rows["most loaded transformer (%)"] == ("99.0", "130.0") and rows["  which transformer"][0] == "trafo_1"
    assert rows["hours with a bus outside its limits"] == ("0.25", "0.5")
    assert rows["power flows that failed (cycles)"][0] == "1"
    assert rows["cycles planned twice (re-plans)"][0] == "1"
    assert "lowest bus voltage (p.u.)" not in [figure for figure, _, _ in summary_rows(run_kpis(CYCLES))]


def test_network_line_says_before_and_after():
    line = network_line(NETWORK_CYCLES[1]["network"])
    assert line == (
        "V 0.9500-1.0300 -> 0.9700-1.0200 p.u.; line max 110.0 -> 95.0 %; outside: buses 1 -> 1, lines 1 -> 0;"
        " planned twice"
    )
    assert network_line(NETWORK_CYCLES[2]["network"]) == "power flow failed: before: Iteration failed to converge"


def test_voltage_limits_group_the_buses():
    assert voltage_limits(NETWORK_STATE) == [
        {"min_vm_pu": 0.9, "max_vm_pu": 1.1, "vn_kv": [0.4], "buses": 3},
        {"min_vm_pu": 0.965, "max_vm_pu": 1.055, "vn_kv": [20.0], "buses": 1},
    ]
    assert voltage_limits(None) == []


def test_write_report_of_a_network_run_has_the_voltage_plot(tmp_path):
    written = write_report(tmp_path, NETWORK_CYCLES, HISTORY, {"cycles": 3}, NETWORK_STATE)
    assert {p.name for p in written} == {"summary.json", "cycles.jsonl", *PLOTS, VOLTAGE_PLOT}
    assert_nontrivial_png(tmp_path / VOLTAGE_PLOT)
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["kpis"]["network"]["hours_any_outside_after"] == 0.25
    assert summary["voltage_limits"][0]["max_vm_pu"] == 1.1
    cycles = [json.loads(line) for line in (tmp_path / "cycles.jsonl").read_text(encoding="utf-8").splitlines()]
    assert cycles[0]["network"]["most_loaded_line_after"] == 3
    assert VOLTAGE_PLOT not in {p.name for p in write_report(tmp_path / "plain", CYCLES, HISTORY)}


# -- how cycles are shown ------------------------------------------------------------------------
def result(cycle: int) -> dict:
    return {**CYCLES[cycle % 2], "cycle": cycle}


def test_short_runs_print_a_line_per_cycle():
    printed: list[int] = []
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with cycle_display(console, 3, lambda r: printed.append(r["cycle"])) as show:
        for cycle in (1, 2, 3):
            show(result(cycle))
    assert printed == [1, 2, 3]
    assert not uses_progress_bar(LINES_UP_TO_CYCLES)


def test_long_runs_show_a_progress_bar_with_rate_and_eta():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140)
    printed: list[int] = []
    total = LINES_UP_TO_CYCLES + 5
    with cycle_display(console, total, lambda r: printed.append(r["cycle"])) as show:
        for cycle in range(1, total + 1):
            show(result(cycle))
    text = out.getvalue()
    assert printed == []
    assert f"{total}/{total}" in text
    assert "cycles/s" in text and "eta" in text
    assert "steps outside limits" in text and "fallbacks" in text and "unreachable" in text


# -- the coordinator, end to end -----------------------------------------------------------------
@pytest.mark.e2e
def test_coordinator_writes_a_report(tmp_path, leftover_pids):
    base = free_port_block()
    report = tmp_path / "report"
    command = coordinator_command(
        tmp_path,
        base,
        "--cycles",
        "8",
        "--interval",
        "0",
        "--exit",
        "--start",
        "2025-07-15T17:00",
        "--report",
        str(report),
    )
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=child_env(COLUMNS="200"))
    pids = child_pids(done.stdout)
    leftover_pids.extend(pids.values())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert [f"cycle {n}" in done.stdout for n in range(1, 9)] == [True] * 8  # a short run: a line per cycle
    assert "Summary" in done.stdout and "minutes outside limits" in done.stdout and "battery throughput" in done.stdout
    assert f"report in {report}/" in done.stdout
    assert f"http://127.0.0.1:{base}/dashboard" in done.stdout

    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    assert {"generated_at", "run", "kpis", "transformers", "soc_agents", "files"} <= set(summary)
    k = summary["kpis"]
    for key in (
        "energy_imported_kwh",
        "energy_exported_kwh",
        "solar_curtailed_kwh",
        "load_shed_kwh",
        "minutes_outside_limits_before",
        "minutes_outside_limits_after",
        "battery_throughput_kwh",
        "planner_calls",
        "planner_fallbacks",
    ):
        assert key in k
    assert k["cycles"] == summary["run"]["cycles_run"] == 8
    assert k["simulated_minutes"] == 8 * 15
    assert k["first_timestamp"] == "2025-07-15T17:00:00"
    assert k["planner_calls"] == {"optimal": 8}
    assert k["minutes_outside_limits_before"] > 0, "a summer evening on the shipped data pushes T1 into reverse flow"
    assert k["minutes_outside_limits_after"] <= k["minutes_outside_limits_before"]
    assert k["battery_throughput_kwh"] > 0
    assert summary["transformers"]["T1"]["rating_kw"] == 15
    assert summary["soc_agents"] == ["battery_agent_1", "home_1"]
    cycles = [json.loads(line) for line in (report / "cycles.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [c["cycle"] for c in cycles] == list(range(1, 9))
    assert k == json.loads(json.dumps(run_kpis(cycles)))
    for name in PLOTS:
        assert name in summary["files"]
        assert_nontrivial_png(report / name)
    for name, pid in pids.items():
        assert wait_until(lambda pid=pid: pid_gone(pid), 5.0), f"the {name} (pid {pid}) outlived the coordinator"


@pytest.mark.e2e
def test_coordinator_refuses_a_report_folder_it_cannot_make(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x", encoding="utf-8")
    command = coordinator_command(tmp_path, free_port_block(), "--exit", "--report", str(blocker / "report"))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=child_env(COLUMNS="200"))
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert "report folder" in done.stderr and str(blocker) in done.stderr
    assert "up " not in done.stdout  # it started nothing
