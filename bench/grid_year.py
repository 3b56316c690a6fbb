"""Hours outside the network's limits, per planner, over weeks of 1-LV-rural1--2-sw: python bench/grid_year.py.

The real agents' apps (the grid agent with ``--network``, the feeder's homes and storage from SimBench) run in
process over ASGI, one ``POST /coordinate`` a step, as in tests/test_netplan.py. For each planner the table
counts the hours with a bus voltage, a line or a transformer outside its limits by the AC power flow before
planning (the agents on their own policies: "uncoordinated"; in that planner's run, so batteries' states follow
its earlier commands) and after acting, the solar curtailed (kWh, applied), re-plans and the planner's time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.battery import create_app as create_battery_app
from agents.grid import create_app as create_grid_app
from agents.home import create_app as create_home_app
from agents.network.feeder import network_feeder
from agents.network.load import load_network
from models.schemas import AgentReport
from tests.conftest import HostRouter, make_battery_settings, make_grid_settings, make_home_settings

S_PER_H = 3600.0
KINDS = ("buses", "lines", "transformers")


async def run(code: str, start: str, days: float, planner: str, work: Path) -> dict:
    """One run of ``days`` from ``start``; answers the totals."""
    network = load_network(code)
    feeder = network_feeder(network, work / "network")
    path = work / "feeder.toml"
    path.write_text(feeder.scenario.to_toml(), encoding="utf-8")
    homes = create_home_app(make_home_settings(work, scenario=path, start=start), register=False)
    storage = create_battery_app(make_battery_settings(work, scenario=path, start=start), register=False)
    router = HostRouter({"homes": httpx.ASGITransport(app=homes), "storage": httpx.ASGITransport(app=storage)})
    grid_app = create_grid_app(make_grid_settings(work, network=network.source, planner=planner), transport=router)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid", timeout=60)
    totals = {f"{kind}_{when}_h": 0.0 for kind in (*KINDS, "any") for when in ("before", "after")}
    totals.update(curtailed_kwh=0.0, replans=0, plan_ms=0.0, cycles=0)
    async with LifespanManager(homes), LifespanManager(storage), LifespanManager(grid_app), client as c:
        reports = [
            AgentReport(url=f"http://{host}/agents/{a.agent_id}", batch_url=f"http://{host}", status=a.status())
            for host, app in (("homes", homes), ("storage", storage))
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
    parser.add_argument("--planners", default="rule,optimal,mpc")
    args = parser.parse_args()
    console = Console(width=160)
    table = Table(title=f"{args.network}, {args.days:g} days from {args.start}: hours outside limits before -> after")
    for column in ("planner", "any", "voltage", "lines", "transformer", "PV curtailed kWh", "re-plans", "plan ms"):
        table.add_column(column, justify="left" if column == "planner" else "right")
    for planner in args.planners.split(","):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="grid-year-") as work:
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
