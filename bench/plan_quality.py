"""Plan quality over a year: every planner against the perfect-foresight bound (python bench/plan_quality.py --help).

A feeder of home agents and the storage agent on one transformer is built in process (no HTTP)
from the agents' state machines (``agents.device``, without their FastAPI apps) and replayed
through the year with the grid agent's loop: step every agent,
``agents.planners.snapshot.build_snapshot``, plan, apply each command through
``DeviceAgent.curtail`` and record what was applied. Each planner gets a fresh feeder and its own process. The bound is
one linear program over the same steps with every future value known: the program the mpc
planner solves each cycle (``agents.planners.horizon``, same physics, same costs), over the
whole year at once, with the agents' own policies (``models.policies``) and batteries
(``agents.device.home.home_battery_spec``, ``agents.device.battery.storage_spec``). With ``--months``
each month is replayed alone, from fresh agents and a fresh planner (a cold start: no history),
against its own bound, in one table. Not a test:
pytest never collects bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import importlib.util
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from agents.common.data import BATTERY_COLUMNS, HOME_COLUMNS, load_timeseries
from agents.common.settings import BatterySettings, HomeSettings
from agents.device.battery import BatteryAgent, derated_storage_spec, storage_spec
from agents.device.home import DATA_ANNUAL_LOAD_KWH, DATA_PV_KWP, HomeAgent, home_battery_spec
from agents.planners import PLANNERS, Plan, PlanFunction, Snapshot
from agents.planners.horizon import HorizonBattery, HorizonFlex, HorizonProblem, solve_horizon
from agents.planners.mpc import MpcPlanner
from agents.planners.optimal import ACTION_COST
from agents.planners.snapshot import build_snapshot, feeder_loadings
from models.devices import step_battery
from models.grid import LIMIT_TOLERANCE_KW, violation_kw
from models.policies import net_power_kw, price_setpoint_kw, self_consumption_setpoint_kw
from models.schemas import CurtailAction, CurtailCommand
from models.units import energy_kwh

TRANSFORMER_ID = "T1"
STEPS_PER_YEAR = 35_040
STEPS_PER_MONTH = 2_976  # 31 days
STEP_S = 900.0
PLANNER_ORDER = ("none", "rule", "optimal", "mpc", "ai")


@dataclass(frozen=True)
class Feeder:
    """The bench feeder: homes with PV and load varied deterministically, the storage agent, one transformer.

    20 homes carry 120 kWp of PV and 90 MWh a year of load; 20 kW both ways is small for that,
    so with every agent on its own policy the transformer is in reverse flow on 337 days (up to
    96 kW of export) and overloaded on 294 (the storage charging 25 kW at night on top of the
    load): 9,210 steps out of limits in the year.
    """

    homes: int = 20
    rating_kw: float = 20.0
    reverse_limit_kw: float = 20.0
    pv_kwp_range: tuple[float, float] = (4.0, 8.0)
    annual_load_kwh_range: tuple[float, float] = (3000.0, 6000.0)
    start: str | None = None  # simulated start (ISO 8601); None = the data's first row

    def pv_kwp(self, i: int) -> float:
        lo, hi = self.pv_kwp_range
        return lo + (hi - lo) * i / max(self.homes - 1, 1)

    def annual_load_kwh(self, i: int) -> float:
        # a stride coprime with the number of homes scatters the loads across the PV sizes
        lo, hi = self.annual_load_kwh_range
        stride = next(s for s in (7, 11, 13, 17, 19, 23, 1) if np.gcd(s, self.homes) == 1)
        return lo + (hi - lo) * ((i * stride) % self.homes) / max(self.homes - 1, 1)

    def limits(self, transformer_id: str) -> tuple[float, float]:
        return self.rating_kw, self.reverse_limit_kw

    def build(self, log_dir: Path, state_dir: Path) -> list[HomeAgent | BatteryAgent]:
        """Fresh agents writing their logs and state under the given folders."""
        common = {
            "log_dir": log_dir,
            "state_dir": state_dir,
            "fresh": True,
            "transformer_id": TRANSFORMER_ID,
            "start": self.start,
        }
        agents: list[HomeAgent | BatteryAgent] = [
            HomeAgent(
                HomeSettings(
                    agent_id=f"home_{i + 1}", pv_kwp=self.pv_kwp(i), annual_load_kwh=self.annual_load_kwh(i), **common
                )
            )
            for i in range(self.homes)
        ]
        agents.append(BatteryAgent(BatterySettings(agent_id="battery_agent_1", **common)))
        return agents


@dataclass
class Result:
    """One row of the table; energies in kWh."""

    name: str
    curtailed_kwh: float = 0.0
    shed_kwh: float = 0.0
    unfixed_kwh: float = 0.0
    unfixed_min: float = 0.0
    throughput_kwh: float = 0.0
    losses_kwh: float = 0.0  # energy the batteries lost to their efficiencies: charged - discharged - stored
    run_s: float = 0.0
    plan_s: float = 0.0
    cost: float | None = None  # the objective both programs weigh with (same weights as every planner)
    violations_before: int = (
        0  # steps whose loading was outside limits before any command (the bound: with no coordination)
    )
    loose_lost_kwh: float | None = None  # the bound's relaxation that lets a battery charge and discharge at once
    alone_outside_kwh: float | None = None  # the bound's view of the feeder with no coordination
    loose_losses_kwh: float | None = None
    note: str = ""

    @property
    def lost_kwh(self) -> float:
        return self.curtailed_kwh + self.shed_kwh


# -- the ai planner ------------------------------------------------------------------------------
#: The actions that lower (-1) and raise (+1) net power, as named in the prompt, cheapest first.
MERIT_ORDER = {
    direction: tuple(a.value for a in sorted(CurtailAction.moving(direction), key=ACTION_COST.__getitem__))
    for direction in (-1, +1)
}


class ScriptedChat:
    """A stand-in for an OpenAI chat client: answers the ai planner's prompt with a scripted merit-order plan.

    It reads the numbers in the prompt and, for each transformer out of limits, asks for battery
    power first, then solar curtailment, then load shedding, each up to its headroom: what a
    careful operator (or a good model) would answer. No network, no key, deterministic.
    """

    def __init__(self) -> None:
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    async def _create(self, *, messages: list[dict[str, str]], **_: Any) -> SimpleNamespace:
        prompt = json.loads(messages[-1]["content"])
        commands = []
        for t in prompt["transformers"]:
            excess = t["loading_kw"] - t["rating_kw"]
            order = MERIT_ORDER[-1]
            if excess <= 0:
                excess = -t["reverse_limit_kw"] - t["loading_kw"]
                order = MERIT_ORDER[+1]
            mine = [a for a in prompt["agents"] if a["transformer"] == t["id"]]
            for action in order:
                for a in mine:
                    if excess <= 0:
                        break
                    # the prompt's numbers are rounded to 1 W: ask for 2 W more, the planner clips to headroom
                    kw = min(excess + 0.002, a["headroom_kw"].get(action, 0.0))
                    if kw > 0:
                        commands.append({"agent_id": a["id"], "action": action, "power_kw": round(kw, 3)})
                        excess -= kw
        message = SimpleNamespace(content=json.dumps({"commands": commands}), refusal=None)
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")], usage=None)

    async def close(self) -> None:
        return None


def make_ai_planner() -> tuple[PlanFunction, Callable[[], str]] | None:
    """HOOK: the ai planner with a scripted stand-in model; None while agents.planners.ai does not exist.

    To measure a real model, build ``AiPlanner`` with an ``openai.AsyncOpenAI`` client here instead
    of ``ScriptedChat()`` (a year is 35,040 calls: mind the cost and the time).
    Returns the planner as a plain ``snapshot -> Plan`` callable (a PlanFunction) and a function
    describing its fallbacks, counted by kind (``models.schemas.FallbackKind``).
    """
    if importlib.util.find_spec("agents.planners.ai") is None:
        return None
    from agents.planners.ai import AiPlanner

    logging.getLogger("agents.planners.ai").setLevel(
        logging.ERROR
    )  # its fallbacks are counted below, not logged per step
    ai = AiPlanner(ScriptedChat(), model="scripted-stand-in", timeout_s=5.0)
    loop = asyncio.new_event_loop()

    def plan(snapshot: Snapshot) -> Plan:
        return loop.run_until_complete(ai.plan(snapshot))

    def describe() -> str:
        s = ai.stats
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s.fallback_reasons.items()))
        return (
            f"scripted stand-in model; {s.calls:,} calls, {s.plans_used:,} plans used, {s.fallbacks:,} fell back to "
            "optimal" + (f" ({reasons})" if reasons else "")
        )

    return plan, describe


def make_planner(name: str, mpc_options: dict[str, Any]) -> tuple[PlanFunction, Callable[[], str]] | None:
    """The planner a row names, and a function describing how it went."""
    if name == "none":
        return (lambda snapshot: Plan("none")), (lambda: "no coordination: the agents' own policies")
    if name == "mpc":
        mpc = MpcPlanner(**mpc_options)
        settings = ", ".join(f"{k}={v}" for k, v in mpc_options.items())
        return mpc, (
            lambda: (
                f"{settings}; linear program solved in {mpc.solves:,} cycles, skipped in the others (nothing at stake)"
            )
        )
    if name == "ai":
        return make_ai_planner()
    return PLANNERS[name](), (lambda: "")


# -- replay --------------------------------------------------------------------------------------
def replay(
    name: str, feeder: Feeder, steps: int, log_dir: Path, state_dir: Path, mpc_options: dict[str, Any]
) -> Result:
    """Run the grid agent's loop over ``steps`` steps with one planner; the agents run in process."""
    made = make_planner(name, mpc_options)
    if made is None:
        return Result(name, note="skipped: agents.planners.ai is not there yet")
    planner, describe = made
    started = time.perf_counter()
    agents = feeder.build(log_dir, state_dir)
    by_id = {a.agent_id: a for a in agents}
    result = Result(name)
    step_h = energy_kwh(1.0, STEP_S)
    stored = {a.agent_id: a.battery.soc_fraction * a.battery.spec.capacity_kwh for a in agents if a.battery is not None}
    net_kwh = 0.0
    try:
        for step in range(steps):
            statuses = {a.agent_id: a.simulate() for a in agents}
            snapshot = build_snapshot(statuses.values(), [TRANSFORMER_ID], feeder.limits)
            if any(t.violation_kw > LIMIT_TOLERANCE_KW for t in snapshot.transformers):
                result.violations_before += 1
            planning = time.perf_counter()
            plan = planner(snapshot)
            result.plan_s += time.perf_counter() - planning
            for n, command in enumerate(plan.commands):
                answer = by_id[command.agent_id].curtail(
                    CurtailCommand(command_id=f"{step}-{n}", action=command.action, power_kw=command.power_kw)
                )
                statuses[command.agent_id] = answer.agent_status
            after = feeder_loadings(statuses.values(), [TRANSFORMER_ID])[TRANSFORMER_ID]
            unfixed = violation_kw(after, feeder.rating_kw, feeder.reverse_limit_kw)
            result.unfixed_kwh += unfixed * step_h
            result.unfixed_min += STEP_S / 60 if unfixed > LIMIT_TOLERANCE_KW else 0.0
            for s in statuses.values():
                result.curtailed_kwh += (s.solar.curtailed_kw if s.solar else 0.0) * step_h
                result.shed_kwh += (s.load.shed_kw if s.load else 0.0) * step_h
                result.throughput_kwh += abs(s.battery.power_kw if s.battery else 0.0) * step_h
                net_kwh += (s.battery.power_kw if s.battery else 0.0) * step_h
        result.losses_kwh = net_kwh - sum(
            by_id[i].battery.soc_fraction * by_id[i].battery.spec.capacity_kwh - e for i, e in stored.items()
        )
    finally:
        for a in agents:
            a.close()
    result.run_s = time.perf_counter() - started
    result.note = describe()
    return result


# -- the bound -----------------------------------------------------------------------------------
def bound(feeder: Feeder, steps: int) -> Result:
    """The perfect-foresight optimum: one program over every step, every future value known.

    The objective is the mpc planner's (the planners' costs, and following an agent's own
    schedule is free). The home batteries are pooled into one (sum of energy and power): they
    are identical and start at the same charge, so any pooled schedule splits evenly into
    feasible ones, and curtailment and shedding only ever count as sums on the transformer; the
    pool's cost for deviating from the homes' own setpoints is that of the sum, at most the sum
    of the homes' costs. The same program is solved once more without the reversal premium
    (``agents.planners.horizon.reversal_cost_per_kw``): that relaxation may charge and discharge
    a battery in one step to burn energy, which no battery can do, and is reported beside it.
    """
    started = time.perf_counter()
    home_data = load_timeseries(HomeSettings().data_file, HOME_COLUMNS)
    battery_data = load_timeseries(BatterySettings().data_file, BATTERY_COLUMNS)
    first = home_data.index_of(datetime.fromisoformat(feeder.start)) if feeder.start else 0
    rows = (first + np.arange(steps)) % len(home_data)
    hours = energy_kwh(1.0, STEP_S)
    solar = (
        np.array([feeder.pv_kwp(i) / DATA_PV_KWP for i in range(feeder.homes)])[:, None]
        * home_data.columns["solar_kw"][rows]
    )
    demand = (
        np.array([feeder.annual_load_kwh(i) / DATA_ANNUAL_LOAD_KWH for i in range(feeder.homes)])[:, None]
        * home_data.columns["load_kw"][rows]
    )
    home_settings, storage = HomeSettings(), BatterySettings()
    home_spec, rated = home_battery_spec(home_settings), storage_spec(storage)
    storage_specs = [derated_storage_spec(rated, c) for c in battery_data.columns["temp_air_c"][rows]]
    storage_limit_kw = np.array([spec.max_charge_kw for spec in storage_specs])
    price = battery_data.columns["price_per_kwh"][rows]
    # the agents' own setpoints along the year (what following them means), with the physics' clipping
    home_setpoint = np.empty_like(solar)
    for i in range(feeder.homes):
        soc = home_settings.initial_soc_fraction
        for t in range(steps):
            s = step_battery(soc, self_consumption_setpoint_kw(solar[i, t], demand[i, t]), STEP_S, home_spec)
            home_setpoint[i, t], soc = s.power_kw, s.soc_fraction
    storage_setpoint = np.empty(steps)
    soc = storage.initial_soc_fraction
    for t, spec in enumerate(storage_specs):
        limit = spec.max_charge_kw
        s = step_battery(
            soc,
            price_setpoint_kw(
                price[t], storage.charge_below_price_per_kwh, storage.discharge_above_price_per_kwh, limit
            ),
            STEP_S,
            spec,
        )
        storage_setpoint[t], soc = s.power_kw, s.soc_fraction
    # with no coordination the transformer sees exactly this: the agents' own schedules
    alone = net_power_kw(demand, solar, home_setpoint).sum(axis=0) + net_power_kw(0.0, 0.0, storage_setpoint)
    outside = np.maximum(alone - feeder.rating_kw, -feeder.reverse_limit_kw - alone).clip(min=0.0)
    n = feeder.homes
    pool = HorizonBattery(
        transformer=0,
        energy_min_kwh=n * home_spec.soc_min_fraction * home_spec.capacity_kwh,
        energy_max_kwh=n * home_spec.soc_max_fraction * home_spec.capacity_kwh,
        charge_efficiency_fraction=home_spec.charge_efficiency_fraction,
        discharge_efficiency_fraction=home_spec.discharge_efficiency_fraction,
        setpoint_kw=home_setpoint.sum(axis=0),
        max_charge_kw=np.full(steps, n * home_spec.max_charge_kw),
        max_discharge_kw=np.full(steps, n * home_spec.max_discharge_kw),
        energy_kwh=n * home_settings.initial_soc_fraction * home_spec.capacity_kwh,
    )
    store = HorizonBattery(
        transformer=0,
        energy_min_kwh=rated.soc_min_fraction * rated.capacity_kwh,
        energy_max_kwh=rated.soc_max_fraction * rated.capacity_kwh,
        charge_efficiency_fraction=rated.charge_efficiency_fraction,
        discharge_efficiency_fraction=rated.discharge_efficiency_fraction,
        setpoint_kw=storage_setpoint,
        max_charge_kw=storage_limit_kw,
        max_discharge_kw=storage_limit_kw,
        energy_kwh=storage.initial_soc_fraction * rated.capacity_kwh,
    )
    flexible = demand.sum(axis=0) * home_settings.flexible_fraction
    problem = HorizonProblem(
        step_s=STEP_S,
        loading_kw=(demand - solar).sum(axis=0)[None, :],
        rating_kw=np.array([feeder.rating_kw]),
        reverse_limit_kw=np.array([feeder.reverse_limit_kw]),
        batteries=[pool, store],
        flex=[HorizonFlex(0, solar.sum(axis=0), flexible)],
    )
    solving = time.perf_counter()
    solution = solve_horizon(problem)
    done = time.perf_counter()
    # the relaxation in which a battery may charge and discharge in one step (burning energy to
    # make room), at the planners' own battery cost: lower still, but no battery can follow it
    loose = solve_horizon(replace(problem, reversal_premium=False))
    unfixed = solution.overload_kw[0] + solution.reverse_kw[0]
    return Result(
        "bound",
        curtailed_kwh=float(solution.curtail_kw.sum() * hours),
        shed_kwh=float(solution.shed_kw.sum() * hours),
        unfixed_kwh=float(unfixed.sum() * hours),
        unfixed_min=float(np.sum(unfixed > LIMIT_TOLERANCE_KW) * STEP_S / 60),
        throughput_kwh=float(np.abs(solution.battery_power_kw).sum() * hours),
        losses_kwh=_losses_kwh(solution, hours),
        run_s=done - started,
        plan_s=done - solving,
        cost=solution.cost,
        note=(
            f"perfect foresight: one program over {steps:,} steps; "
            "home batteries pooled, so its throughput nets out flows between homes"
        ),
        loose_lost_kwh=float((loose.curtail_kw.sum() + loose.shed_kw.sum()) * hours),
        loose_losses_kwh=_losses_kwh(loose, hours),
        violations_before=int(np.sum(outside > LIMIT_TOLERANCE_KW)),
        alone_outside_kwh=float(outside.sum() * hours),
    )


def _losses_kwh(solution, hours: float) -> float:
    """Energy charged minus discharged minus what stayed stored, over every battery of a solution."""
    return float(
        solution.battery_power_kw.sum() * hours - (solution.energy_kwh[:, -1] - solution.energy_kwh[:, 0]).sum()
    )


# -- the table -----------------------------------------------------------------------------------
def print_table(results: list[Result], feeder: Feeder, steps: int, wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 190))
    best = next((r for r in results if r.name == "bound"), None)
    none = next((r for r in results if r.name == "none"), None)
    days = steps * STEP_S / 86_400
    title = (
        f"Plan quality: {feeder.homes} homes (PV {feeder.pv_kwp_range[0]:g}-{feeder.pv_kwp_range[1]:g} kWp, "
        f"{feeder.annual_load_kwh_range[0]:,.0f}-{feeder.annual_load_kwh_range[1]:,.0f} kWh/a, 13.5 kWh/5 kW "
        "batteries) "
        f"and a 50 kWh/25 kW storage on {TRANSFORMER_ID} ({feeder.rating_kw:g} kW rating, "
        f"{feeder.reverse_limit_kw:g} kW reverse limit), "
        f"{steps:,} steps ({days:.0f} days)"
    )
    table = Table(title=title)
    for column in (
        "planner",
        "solar curtailed kWh",
        "load shed kWh",
        "unfixed kWh",
        "unfixed min",
        "battery throughput kWh",
        "battery losses kWh",
        "run s",
        "plan s",
        "(curtailed+shed)/bound",
    ):
        table.add_column(column, justify="left" if column == "planner" else "right")
    for r in results:
        if r.note.startswith("skipped"):
            table.add_row(r.name, *["-"] * 8, r.note)
            continue
        if best is None or r.name == "none":
            ratio = "-"
        elif best.lost_kwh > 0:
            ratio = f"{r.lost_kwh / best.lost_kwh:.3f}"
        else:
            ratio = "inf" if r.lost_kwh > 0 else "1.000"
        table.add_row(
            r.name,
            f"{r.curtailed_kwh:,.1f}",
            f"{r.shed_kwh:,.1f}",
            f"{r.unfixed_kwh:,.1f}",
            f"{r.unfixed_min:,.0f}",
            f"{r.throughput_kwh:,.0f}",
            f"{r.losses_kwh:,.0f}",
            f"{r.run_s:,.1f}",
            f"{r.plan_s:,.1f}",
            ratio,
        )
    console.print(table)
    if none is not None:
        console.print(
            f"No coordination (replayed): {none.violations_before:,} of {steps:,} steps outside limits "
            f"({none.unfixed_kwh:,.1f} kWh outside)."
        )
    elif best is not None and best.alone_outside_kwh is not None:
        console.print(
            f"No coordination (the agents' own schedules, as the bound computes them): {best.violations_before:,} of "
            f"{steps:,} steps "
            f"outside limits ({best.alone_outside_kwh:,.1f} kWh outside); --planners none,... replays it."
        )
    for r in results:
        if r.note:
            console.print(f"  {r.name}: {r.note}")
    if best is not None and best.loose_lost_kwh:
        ratios = ", ".join(
            f"{r.name} {r.lost_kwh / best.loose_lost_kwh:.3f}"
            for r in results
            if r.name not in ("none", "bound") and not r.note.startswith("skipped") and best.loose_lost_kwh > 0
        )
        console.print(
            "  Were a battery allowed to charge and discharge in the same step (burning energy to make room, which "
            "no battery "
            "can do, though two batteries can by trading energy), the program would curtail and shed "
            f"{best.loose_lost_kwh:,.1f} kWh "
            f"and lose {best.loose_losses_kwh:,.0f} kWh in its batteries; against that looser bound: {ratios}."
        )
    console.print(f"Wall time {wall_s:,.0f} s.")


def print_months_table(
    results: dict[int, dict[str, Result]], starts: dict[int, str], steps: int, wall_s: float
) -> None:
    """One row per month and planner: curtailed plus shed against that month's bound, each started cold."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    days = steps * STEP_S / 86_400
    title = f"Plan quality from a cold start: each month replayed alone, {steps:,} steps ({days:.0f} days) from its 1st"
    table = Table(title=title)
    columns = ("month", "start", "planner", "curtailed kWh", "shed kWh", "curtailed+shed kWh", "bound kWh", "ratio")
    for column in columns:
        table.add_column(column, justify="left" if column in ("month", "start", "planner") else "right")
    notes = []
    for month, rows in results.items():
        best = rows.get("bound")
        for name in PLANNER_ORDER:
            r = rows.get(name)
            if r is None:
                continue
            if r.note.startswith("skipped"):
                table.add_row(calendar.month_abbr[month], starts[month], name, *["-"] * 5)
                continue
            notes.append(f"{calendar.month_abbr[month]} {name}: {r.note}" if r.note else "")
            known = best is not None and best.lost_kwh > 0 and name != "none"  # none leaves the limits crossed
            ratio = f"{r.lost_kwh / best.lost_kwh:.3f}" if known else "-"
            table.add_row(
                calendar.month_abbr[month],
                starts[month],
                name,
                f"{r.curtailed_kwh:,.1f}",
                f"{r.shed_kwh:,.1f}",
                f"{r.lost_kwh:,.1f}",
                f"{best.lost_kwh:,.1f}" if best is not None else "-",
                ratio,
            )
    console.print(table)
    for note in filter(None, notes):
        console.print(f"  {note}")
    console.print(f"Wall time {wall_s:,.0f} s.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps to replay (15 min each; default one year, or 31 days with --months)",
    )
    parser.add_argument(
        "--planners",
        default="rule,optimal,mpc,ai",
        help="comma-separated rows: none (no coordination, replayed), rule, optimal, mpc, ai",
    )
    parser.add_argument("--no-bound", action="store_true", help="skip the perfect-foresight program")
    parser.add_argument(
        "--start", default=None, help="simulated start, ISO 8601 (default: the data's first row, 2025-01-01T00:00)"
    )
    parser.add_argument(
        "--months",
        default=None,
        metavar="M,M,...",
        help="months (1-12), each replayed alone from a cold start at 00:00 on its 1st, in one table; not with --start",
    )
    parser.add_argument("--homes", type=int, default=Feeder.homes, help="homes on the transformer")
    parser.add_argument("--rating-kw", type=float, default=Feeder.rating_kw, help="transformer rating")
    parser.add_argument(
        "--reverse-limit-kw", type=float, default=Feeder.reverse_limit_kw, help="transformer reverse-flow limit"
    )
    parser.add_argument("--horizon-steps", type=int, default=96, help="mpc horizon (steps)")
    parser.add_argument(
        "--mpc-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another MpcPlanner setting, e.g. forecast_days=3 (repeatable)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="planners replayed at once, one process each")
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="agents' CSV logs go under here (default: a temporary folder, removed)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="agents' SQLite state goes under here (default: the same temporary folder)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.planners.split(",") if n.strip()]
    unknown = [n for n in names if n not in PLANNER_ORDER]
    try:
        months = [int(m) for m in args.months.split(",") if m.strip()] if args.months else []
    except ValueError:
        parser.error("--months takes month numbers, e.g. 1,4,7,10")
    if any(not 1 <= m <= 12 for m in months) or (months and args.start):
        parser.error("--months takes numbers 1-12, and not with --start")
    if args.steps is None:
        args.steps = STEPS_PER_MONTH if months else STEPS_PER_YEAR
    if unknown or args.steps < 1 or args.homes < 1:
        parser.error(f"unknown planner(s) {', '.join(unknown)}" if unknown else "--steps and --homes must be >= 1")
    mpc_options: dict[str, Any] = {"horizon_steps": args.horizon_steps}
    for option in args.mpc_option:
        key, _, value = option.partition("=")
        try:
            mpc_options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            mpc_options[key.strip()] = value
    try:
        MpcPlanner(**mpc_options)
    except (TypeError, ValueError) as exc:
        parser.error(f"--mpc-option: {exc}")
    feeder = Feeder(
        homes=args.homes, rating_kw=args.rating_kw, reverse_limit_kw=args.reverse_limit_kw, start=args.start
    )
    started = time.perf_counter()
    if months:
        return run_months(feeder, months, names, args, mpc_options, started)
    with tempfile.TemporaryDirectory(prefix="plan_quality_") as tmp:
        log_root = args.log_dir or Path(tmp)
        state_root = args.state_dir or Path(tmp)
        with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            futures = {}
            # the slowest first, so that the workers finish together
            for n in sorted(names, key=lambda n: n != "mpc"):
                futures[n] = pool.submit(
                    replay, n, feeder, args.steps, log_root / n / "logs", state_root / n / "state", mpc_options
                )
                if not args.no_bound and "bound" not in futures:
                    futures["bound"] = pool.submit(bound, feeder, args.steps)
            if not futures and not args.no_bound:
                futures["bound"] = pool.submit(bound, feeder, args.steps)
            results = {n: f.result() for n, f in futures.items()}
    ordered = [results[n] for n in PLANNER_ORDER if n in results] + ([results["bound"]] if "bound" in results else [])
    print_table(ordered, feeder, args.steps, time.perf_counter() - started)
    return 0


def run_months(
    feeder: Feeder,
    months: list[int],
    names: list[str],
    args: argparse.Namespace,
    mpc_options: dict[str, Any],
    started: float,
) -> int:
    """Replay each month alone, from fresh agents and a fresh planner, with its own bound; print one table."""
    year = load_timeseries(HomeSettings().data_file, HOME_COLUMNS).start.year
    starts = {m: f"{year}-{m:02d}-01T00:00" for m in months}
    with tempfile.TemporaryDirectory(prefix="plan_quality_") as tmp:
        log_root = args.log_dir or Path(tmp)
        state_root = args.state_dir or Path(tmp)
        with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            futures: dict[int, dict[str, Any]] = {}
            for m in months:
                month = replace(feeder, start=starts[m])
                folder = f"{m:02d}"
                futures[m] = {
                    n: pool.submit(
                        replay,
                        n,
                        month,
                        args.steps,
                        log_root / folder / n / "logs",
                        state_root / folder / n / "state",
                        mpc_options,
                    )
                    for n in sorted(names, key=lambda n: n != "mpc")  # the slowest first
                }
                if not args.no_bound:
                    futures[m]["bound"] = pool.submit(bound, month, args.steps)
            results = {m: {n: f.result() for n, f in jobs.items()} for m, jobs in futures.items()}
    print_months_table(results, starts, args.steps, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
