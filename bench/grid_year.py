"""Hours outside the network's limits, per planner, over weeks of 1-LV-rural1--2-sw: python bench/grid_year.py.

The real agents' apps (the grid agent with ``--network``, the feeder's homes and storage from SimBench) run in
process over ASGI, one ``POST /coordinate`` a step, as in tests/test_netplan.py. For each planner the table
counts the hours with a bus voltage, a line or a transformer outside its limits by the AC power flow before
planning (the agents on their own policies: "uncoordinated"; in that planner's run, so batteries' states follow
its earlier commands) and after acting, the solar curtailed (kWh, applied), re-plans and the planner's time.

The row ``bound`` is the perfect-foresight optimum on the same network: the horizon program the mpc planner
solves (``agents.planners.horizon``, same physics and costs) with every future value known, solved day by day
(96 steps; each day starts with the energy the previous day's optimum left in each battery), with the same
linearised network rows the grid agent gives its planners (``NetworkMonitor.view`` at each step's operating point
with every agent on its own policy: the near-limit buses, lines and transformers, aimed ``LINEAR_MARGIN`` inside
their limits, slack at ``NETWORK_SLACK_COST``) and the transformers' kW rows. The agents' state machines give the
uncoordinated steps (homes and storage on their own policies, no HTTP); the optimum is then checked with the AC
power flow at every step, which gives its hours outside limits ("after"; "before" is the uncoordinated run).
Where that check finds a limit broken (the linear estimate of a loading, a magnitude, runs below the AC one),
the day is solved again with the rows linearised there added as tangents, as the grid agent re-plans, up to
``CUT_ROUNDS`` times ("re-plans" counts these re-solves). Reactive power stays as the agents' own (PV at
unity, the default).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
from asgi_lifespan import LifespanManager
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.battery import create_app as create_battery_app
from agents.cycle.network import Injections, NetworkMonitor, Solved
from agents.grid import create_app as create_grid_app
from agents.home import create_app as create_home_app
from agents.network.feeder import network_feeder
from agents.network.load import load_network
from agents.planners.horizon import HorizonBattery, HorizonFlex, HorizonNetwork, HorizonProblem, solve_horizon
from agents.planners.network import aimed_limits
from agents.planners.optimal import NETWORK_SLACK_COST
from models.network import summarize_flow
from models.schemas import AgentReport
from tests.conftest import HostRouter, make_battery_settings, make_grid_settings, make_home_settings

S_PER_H = 3600.0
KINDS = ("buses", "lines", "transformers")
STEPS_PER_DAY = 96
#: Times a day's bound is solved again with tangent rows where its AC check found a limit broken.
CUT_ROUNDS = 3


def _outside(monitor, result) -> dict[str, bool]:
    """Which kinds of element a power flow left outside their limits (the cycle report's own tolerances)."""
    summary = summarize_flow(
        result.vm_pu, monitor.min_vm_pu, monitor.max_vm_pu, result.line_loading_percent, result.trafo_loading_percent
    )
    return {
        "buses": summary.buses_outside > 0,
        "lines": summary.lines_outside > 0,
        "transformers": summary.transformers_outside > 0,
    }


def _day_problem(monitor, days_steps: list[list], energy_kwh: dict[str, float], step_s: float):
    """The horizon program of one day: its steps' statuses in, (problem, per-step views, battery ids, home ids) out."""
    first = days_steps[0]
    batteries = [s for s in first if s.battery is not None]
    homes = [s for s in first if s.battery is None]
    trafo_ids = sorted({s.transformer_id for s in first})
    k_of = {tid: k for k, tid in enumerate(trafo_ids)}
    ratings = {spec.id: spec.rating_kw for spec in monitor.transformer_specs()}
    n_t = len(days_steps)
    loading = np.zeros((len(trafo_ids), n_t))
    power = np.zeros((len(batteries), n_t))
    max_ch, max_dis = np.zeros_like(power), np.zeros_like(power)
    curtail_max, shed_max = np.zeros((len(homes), n_t)), np.zeros((len(homes), n_t))
    rows: dict[str, list] = {key: [] for key in ("step", "value", "lower", "upper", "bs", "fs", "cost")}
    for t, statuses in enumerate(days_steps):
        by_id = {s.agent_id: s for s in statuses}
        for i, home in enumerate(homes):
            s = by_id[home.agent_id]
            loading[k_of[s.transformer_id], t] += s.net_power_kw
            curtail_max[i, t] = s.flexibility.curtail_solar_kw if s.flexibility else 0.0
            shed_max[i, t] = s.flexibility.shed_load_kw if s.flexibility else 0.0
        for j, battery in enumerate(batteries):
            b = by_id[battery.agent_id].battery
            power[j, t], max_ch[j, t], max_dis[j, t] = b.power_kw, b.max_charge_kw, b.max_discharge_kw
        solved = monitor.assess(statuses, t)
        _add_rows(rows, monitor.view(statuses, solved), t, batteries, homes)
    network = _network(rows)
    horizon_batteries = []
    for j, battery in enumerate(batteries):
        b = battery.battery
        horizon_batteries.append(
            HorizonBattery(
                transformer=k_of[battery.transformer_id],
                energy_min_kwh=b.soc_min_fraction * b.capacity_kwh,
                energy_max_kwh=b.soc_max_fraction * b.capacity_kwh,
                charge_efficiency_fraction=b.charge_efficiency_fraction or 0.95,
                discharge_efficiency_fraction=b.discharge_efficiency_fraction or 0.95,
                setpoint_kw=power[j],
                max_charge_kw=max_ch[j],
                max_discharge_kw=max_dis[j],
                energy_kwh=energy_kwh.get(
                    battery.agent_id,
                    (b.soc_start_fraction if b.soc_start_fraction is not None else b.soc_fraction) * b.capacity_kwh,
                ),
            )
        )
    problem = HorizonProblem(
        step_s=step_s,
        loading_kw=loading,
        rating_kw=np.array([ratings.get(tid, np.inf) for tid in trafo_ids]),
        reverse_limit_kw=np.array([ratings.get(tid, np.inf) for tid in trafo_ids]),
        batteries=horizon_batteries,
        flex=[HorizonFlex(k_of[h.transformer_id], curtail_max[i], shed_max[i]) for i, h in enumerate(homes)],
        network=network,
    )
    return problem, batteries, homes, rows


def _add_rows(rows: dict[str, list], view, t: int, batteries: list, homes: list, shift_kw=None, positions=None) -> None:
    """Append a NetworkView's rows at step ``t`` (aimed as the optimal planner aims them).

    ``shift_kw`` (per bus position): the view was taken where the agents' net power had moved this much from
    their own policies; its rows are then written as tangents around that point, in terms of the move from there.
    """
    if view is None or not view.rows:
        return
    lower, upper = aimed_limits(view)

    def column(agent_id: str) -> np.ndarray:
        c = view.column_of(agent_id)
        return view.sensitivity[:, c] if c is not None else np.zeros(view.rows)

    value = view.value
    if shift_kw is not None:
        moved = np.zeros(view.sensitivity.shape[1])
        for agent in (*batteries, *homes):
            c = view.column_of(agent.agent_id)
            if c is not None:
                moved[c] = shift_kw[positions[agent.agent_id]]
        value = value - view.sensitivity @ moved
    rows["step"] += [t] * view.rows
    rows["value"].append(value)
    rows["lower"].append(lower)
    rows["upper"].append(upper)
    rows["bs"].append(
        np.column_stack([column(b.agent_id) for b in batteries]) if batteries else np.zeros((view.rows, 0))
    )
    rows["fs"].append(np.column_stack([column(h.agent_id) for h in homes]))
    rows["cost"].append(np.array([NETWORK_SLACK_COST[kind] for kind in view.kind]))


def _network(rows: dict[str, list]) -> HorizonNetwork | None:
    if not rows["step"]:
        return None
    return HorizonNetwork(
        step=np.array(rows["step"]),
        value=np.concatenate(rows["value"]),
        lower=np.concatenate(rows["lower"]),
        upper=np.concatenate(rows["upper"]),
        battery_sensitivity=np.vstack(rows["bs"]),
        flex_sensitivity=np.vstack(rows["fs"]),
        slack_cost=np.concatenate(rows["cost"]),
    )


#: Homes per in-process host (``--max-agents-per-process`` allows 1,000), as for the MV+LV grid's 5,373 loads.
HOMES_PER_HOST = 1000


async def run_bound(code: str, start: str, days: float, work: Path) -> dict:
    """The perfect-foresight bound of ``days`` from ``start``, day by day, checked by AC power flow; the totals."""
    network = load_network(code)
    feeder = network_feeder(network, work / "network")
    path = work / "feeder.toml"
    path.write_text(feeder.scenario.to_toml(), encoding="utf-8")
    homes = create_home_app(make_home_settings(work, scenario=path, start=start), register=False)
    storage = create_battery_app(make_battery_settings(work, scenario=path, start=start), register=False)
    monitor = NetworkMonitor(make_grid_settings(work, network=network.source))
    totals = {f"{kind}_{when}_h": 0.0 for kind in (*KINDS, "any") for when in ("before", "after")}
    totals.update(curtailed_kwh=0.0, replans="-", plan_ms=0.0, cycles=0, linear_outside=0, cut_rounds=0)
    energy: dict[str, float] = {}
    async with LifespanManager(homes), LifespanManager(storage):
        agents = [*homes.state.agents.values(), *storage.state.agents.values()]
        remaining = None
        while remaining is None or remaining > 0:
            day = [[agent.simulate() for agent in agents] for _ in range(STEPS_PER_DAY)]
            step_s = day[0][0].step_s
            if remaining is None:
                remaining = round(days * 24 * S_PER_H / step_s)
            day = day[:remaining]
            started = time.perf_counter()
            problem, batteries, home_list, rows = _day_problem(monitor, day, energy, step_s)
            positions = {a.agent_id: monitor._position[a.bus] for a in (*batteries, *home_list)}
            for cut_round in range(CUT_ROUNDS + 1):
                solution = solve_horizon(problem)
                flows, broken = [], False
                for t, statuses in enumerate(day):
                    before = monitor.assess(statuses, t)  # cached: the same injections as in _day_problem
                    shift = np.zeros(len(monitor.buses))
                    for j, battery in enumerate(batteries):
                        shift[positions[battery.agent_id]] += (
                            solution.battery_power_kw[j, t] - problem.batteries[j].setpoint_kw[t]
                        )
                    for i, home in enumerate(home_list):
                        shift[positions[home.agent_id]] += solution.curtail_kw[i, t] - solution.shed_kw[i, t]
                    injections = Injections(
                        before.injections.p_kw + shift, before.injections.q_kvar, before.injections.placed, []
                    )
                    after = monitor.flow.solve(injections.p_kw, injections.q_kvar)
                    flows.append((before.result, after))
                    if cut_round < CUT_ROUNDS and any(_outside(monitor, after).values()):
                        # the AC check found a limit broken: a tangent there, as the grid agent's re-plan does
                        view = monitor.view(statuses, Solved(injections, after))
                        _add_rows(rows, view, t, batteries, home_list, shift, positions)
                        broken = True
                if not broken:
                    break
                problem = replace(problem, network=_network(rows))
                totals["cut_rounds"] += 1
            totals["plan_ms"] += (time.perf_counter() - started) * 1000
            step_h = step_s / S_PER_H
            for j, battery in enumerate(batteries):
                energy[battery.agent_id] = float(solution.energy_kwh[j, -1])
            if solution.network_outside is not None:
                totals["linear_outside"] += int(np.sum(solution.network_outside > 1e-6))
            for before, after in flows:
                for when, result in (("before", before), ("after", after)):
                    outside = _outside(monitor, result)
                    for kind in KINDS:
                        totals[f"{kind}_{when}_h"] += step_h * outside[kind]
                    totals[f"any_{when}_h"] += step_h * any(outside.values())
            totals["curtailed_kwh"] += float(solution.curtail_kw.sum() * step_h)
            totals["cycles"] += len(day)
            remaining -= len(day)
    totals["replans"] = f"{totals['cut_rounds']} re-solves"
    return totals


async def run(code: str, start: str, days: float, planner: str, work: Path) -> dict:
    """One run of ``days`` from ``start``; answers the totals."""
    network = load_network(code)
    feeder = network_feeder(network, work / "network")
    path = work / "feeder.toml"
    path.write_text(feeder.scenario.to_toml(), encoding="utf-8")
    shards = max(math.ceil(len(feeder.scenario.homes) / HOMES_PER_HOST), 1)  # as the coordinator shards them
    hosts = {
        f"homes{i}": create_home_app(
            make_home_settings(work, scenario=path, start=start, shard=f"{i}/{shards}"), register=False
        )
        for i in range(shards)
    }
    if feeder.scenario.batteries:
        hosts["storage"] = create_battery_app(make_battery_settings(work, scenario=path, start=start), register=False)
    router = HostRouter({host: httpx.ASGITransport(app=app) for host, app in hosts.items()})
    grid_app = create_grid_app(make_grid_settings(work, network=network.source, planner=planner), transport=router)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid", timeout=60)
    totals = {f"{kind}_{when}_h": 0.0 for kind in (*KINDS, "any") for when in ("before", "after")}
    totals.update(curtailed_kwh=0.0, replans=0, plan_ms=0.0, cycles=0)
    async with AsyncExitStack() as stack:
        for app in (*hosts.values(), grid_app):
            await stack.enter_async_context(LifespanManager(app))
        c = await stack.enter_async_context(client)
        reports = [
            AgentReport(url=f"http://{host}/agents/{a.agent_id}", batch_url=f"http://{host}", status=a.status())
            for host, app in hosts.items()
            for a in app.state.agents.values()
        ]
        await c.post("/registrations", json={"reports": [r.model_dump(mode="json") for r in reports]})
        steps = None
        while steps is None or totals["cycles"] < steps:
            result = (await c.post("/coordinate")).json()
            step_h = (result["step_s"] or 900.0) / S_PER_H
            steps = steps or round(days * 24 / step_h)
            report = result["network"]
            for when in ("before", "after"):
                outside = [bool(report[f"{kind}_outside_{when}"]) for kind in KINDS]
                for kind, out in zip(KINDS, outside, strict=True):
                    totals[f"{kind}_{when}_h"] += step_h * out
                totals[f"any_{when}_h"] += step_h * any(outside)
            totals["curtailed_kwh"] += step_h * sum(
                a["applied_kw"] for a in result["actions"] if a["action"] == "curtail_solar"
            )
            totals["plan_ms"] += result["phase_ms"]["plan"]
            totals["cycles"] += 1
        totals["replans"] = (await c.get("/status")).json()["network_replans"]
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="1-LV-rural1--2-sw")
    parser.add_argument("--start", default="2016-05-01T00:00")
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--planners", default="rule,optimal,mpc,bound", help="'bound': perfect foresight, day by day")
    args = parser.parse_args()
    console = Console(width=160)
    table = Table(title=f"{args.network}, {args.days:g} days from {args.start}: hours outside limits before -> after")
    for column in ("planner", "any", "voltage", "lines", "transformer", "PV curtailed kWh", "re-plans", "plan ms"):
        table.add_column(column, justify="left" if column == "planner" else "right")
    for planner in args.planners.split(","):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="grid-year-") as work:
            if planner == "bound":
                t = asyncio.run(run_bound(args.network, args.start, args.days, Path(work)))
            else:
                t = asyncio.run(run(args.network, args.start, args.days, planner, Path(work)))
        console.print(f"{planner}: {t['cycles']} cycles in {time.perf_counter() - started:.0f} s")
        table.add_row(
            planner,
            *(f"{t[f'{kind}_before_h']:.2f} -> {t[f'{kind}_after_h']:.2f}" for kind in ("any", *KINDS)),
            f"{t['curtailed_kwh']:.1f}",
            str(t["replans"]),
            f"{t['plan_ms'] / max(t['cycles'], 1):.1f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
