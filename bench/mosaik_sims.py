"""The seed's feeder as three mosaik simulators, one process each, for bench/vs_mosaik.py (not a test).

    python bench/mosaik_sims.py scenario --steps 2000 [--work durable|physics] [--dir DIR]
    python bench/mosaik_sims.py {home,battery,grid} HOST:PORT     (started by mosaik's cmd starter)

The same shape as run_distributed_simulation.py: a scenario process (mosaik, in the coordinator's
place) starts three simulator processes that speak mosaik's TCP API. Each step (15 min):

- ``Home`` steps one row through data/historical_data.csv with the seed home's sizes and the
  project's own physics and policy (models/devices.py, self-consumption), then applies the
  commands the grid sent; it outputs its net power, battery power and headroom per action.
- ``Battery`` does the same through data/battery_historical_data.csv (temperature derating and the
  time-of-use price policy of agents/battery.py).
- ``Grid`` reads both outputs, sums the transformer's loading and asks the seed's planner
  (``plan_optimal``, the same linear program, rating 15 kW both ways) for commands, which it sets
  on the devices. Mosaik cannot feed them back within the same step without an extra round, so
  the devices apply them in the next step (a time-shifted connection); the work per step is the
  same, only the commands land a step later.

With ``--work durable`` (the default) every simulator also does what our agents do for each step:
the device simulators write a CSV log row (whole, flushed) and commit their state to SQLite, with
the project's own CsvLogWriter and StateStore; the grid writes its CSV row. ``--work physics``
leaves the durability out. The scenario prints one JSON line: steps and the wall time of
``world.run`` (start-up and shutdown excluded) and the CPU seconds each of the four processes used
meanwhile. The project never imports this file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import mosaik
import mosaik_api_v3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _agents import children_of, cpu_s

from agents.common.data import BATTERY_COLUMNS, HOME_COLUMNS, HOME_NONNEGATIVE, load_timeseries
from agents.planners.base import AgentFlex, Snapshot, TransformerSnapshot
from agents.planners.optimal import plan_optimal
from models.devices import BatteryModule, BatterySpec, LoadModule, SolarModule
from models.grid import classify_loading
from models.schemas import CurtailAction

STEP_S = 900
#: The seed's transformer: rating and reverse limit (GridSettings.transformer_rating_kw).
RATING_KW = 15.0
HEADROOM_ATTRS = {action.value: f"{action.value}_kw" for action in CurtailAction}
DEVICE_ATTRS = ["net_power_kw", "battery_power_kw", *HEADROOM_ATTRS.values(), "commands"]


def meta(model: str, attrs: list[str]) -> dict:
    return {"type": "time-based", "models": {model: {"public": True, "params": ["work_dir"], "attrs": attrs}}}


class Durable:
    """A device's per-step duties beside the physics: a flushed CSV row and a SQLite commit."""

    def __init__(self, work_dir: str | None, name: str, columns: list[str]) -> None:
        self.log = self.store = None
        if work_dir:
            from agents.common.csvlog import CsvLogWriter
            from agents.common.state import StateStore

            self.log = CsvLogWriter(Path(work_dir) / f"{name}_log.csv", columns, fresh=True)
            self.store = StateStore(Path(work_dir), name, fresh=True)
        self.name = name

    def record(self, row: dict, state: dict | None = None) -> None:
        if self.log is not None:
            self.log.write(row)
        if self.store is not None and state is not None:
            self.store.save(self.name, state)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.store is not None:
            self.store.close()


class DeviceSim(mosaik_api_v3.Simulator):
    """What the home and battery simulators share: one entity, its step index, its outputs."""

    model = ""

    def __init__(self) -> None:
        super().__init__(meta(self.model, DEVICE_ATTRS))
        self.eid = self.model.lower()
        self.index = 0
        self.out: dict = {}
        self.durable: Durable | None = None

    def create(self, num: int, model: str, work_dir: str | None = None) -> list[dict]:
        self.durable = Durable(
            work_dir, f"mosaik_{self.eid}", ["step", "net_power_kw", "battery_power_kw", "soc_fraction", "commands"]
        )
        return [{"eid": self.eid, "type": model}]

    def step(self, time: int, inputs: dict, max_advance: int) -> int:
        commands: dict[str, float] = {}
        for values in inputs.get(self.eid, {}).get("commands", {}).values():
            commands.update(values or {})
        row = self.data.row(self.index)
        self.index += 1
        self.begin(row)
        for action, power_kw in commands.items():
            self.apply(CurtailAction(action), power_kw)
        b = self.battery
        self.out = {
            "net_power_kw": self.net_power_kw(),
            "battery_power_kw": b.power_kw,
            **self.headroom(),
        }
        self.durable.record(
            {
                "step": self.index,
                "net_power_kw": self.out["net_power_kw"],
                "battery_power_kw": b.power_kw,
                "soc_fraction": b.soc_fraction,
                "commands": len(commands),
            },
            {"step": self.index, "soc_start_fraction": b.soc_start_fraction, "battery_power_kw": b.power_kw},
        )
        return time + STEP_S

    def get_data(self, outputs: dict) -> dict:
        return {eid: {attr: self.out[attr] for attr in attrs} for eid, attrs in outputs.items()}

    def finalize(self) -> None:
        if self.durable is not None:
            self.durable.close()

    def apply_battery(self, action: CurtailAction, power_kw: float) -> None:
        self.battery.shift(power_kw if action is CurtailAction.charge_battery else -power_kw)

    def battery_headroom(self) -> dict[str, float]:
        return {
            HEADROOM_ATTRS["charge_battery"]: self.battery.charge_headroom_kw,
            HEADROOM_ATTRS["discharge_battery"]: self.battery.discharge_headroom_kw,
        }


class HomeSim(DeviceSim):
    """The seed's home: 6 kWp PV, 4,500 kWh a year (30 % flexible), a 13.5 kWh / 5 kW battery on self-consumption."""

    model = "Home"

    def __init__(self) -> None:
        super().__init__()
        self.data = load_timeseries(ROOT / "data" / "historical_data.csv", HOME_COLUMNS, HOME_NONNEGATIVE)
        self.solar = SolarModule(capacity_kwp=6.0)
        self.load = LoadModule(flexible_fraction=0.3)
        self.battery = BatteryModule(
            spec=BatterySpec(capacity_kwh=13.5, max_charge_kw=5.0, max_discharge_kw=5.0), step_s=self.data.step_s
        )

    def begin(self, row: dict[str, float]) -> None:
        self.solar.begin_step(row["solar_kw"])
        self.load.begin_step(row["load_kw"])
        self.battery.begin_step()
        self.battery.set_power(self.solar.output_kw - self.load.served_kw)

    def apply(self, action: CurtailAction, power_kw: float) -> None:
        if action is CurtailAction.curtail_solar:
            self.solar.curtail(power_kw)
        elif action is CurtailAction.shed_load:
            self.load.shed(power_kw)
        else:
            self.apply_battery(action, power_kw)

    def net_power_kw(self) -> float:
        return self.load.served_kw - self.solar.output_kw + self.battery.power_kw

    def headroom(self) -> dict[str, float]:
        return {
            HEADROOM_ATTRS["curtail_solar"]: self.solar.output_kw,
            HEADROOM_ATTRS["shed_load"]: self.load.shed_headroom_kw,
            **self.battery_headroom(),
        }


class BatterySim(DeviceSim):
    """The seed's storage system: 50 kWh / 25 kW, time-of-use price policy, derated in the cold and heat."""

    model = "Battery"

    def __init__(self) -> None:
        super().__init__()
        from models.policies import price_setpoint_kw, temperature_derating_fraction

        self.policy, self.derating = price_setpoint_kw, temperature_derating_fraction
        self.data = load_timeseries(ROOT / "data" / "battery_historical_data.csv", BATTERY_COLUMNS)
        self.rated = BatterySpec(
            capacity_kwh=50.0,
            max_charge_kw=25.0,
            max_discharge_kw=25.0,
            charge_efficiency_fraction=0.96,
            discharge_efficiency_fraction=0.96,
        )
        self.battery = BatteryModule(spec=self.rated, step_s=self.data.step_s)

    def begin(self, row: dict[str, float]) -> None:
        limit_kw = self.rated.max_charge_kw * self.derating(row["temp_air_c"])
        self.battery.spec = BatterySpec(
            **{**self.rated.__dict__, "max_charge_kw": limit_kw, "max_discharge_kw": limit_kw}
        )
        self.battery.begin_step()
        self.battery.set_power(self.policy(row["price_per_kwh"], 0.12, 0.30, limit_kw))

    def apply(self, action: CurtailAction, power_kw: float) -> None:
        if action in (CurtailAction.charge_battery, CurtailAction.discharge_battery):
            self.apply_battery(action, power_kw)

    def net_power_kw(self) -> float:
        return self.battery.power_kw

    def headroom(self) -> dict[str, float]:
        return {HEADROOM_ATTRS["curtail_solar"]: 0.0, HEADROOM_ATTRS["shed_load"]: 0.0, **self.battery_headroom()}


class GridSim(mosaik_api_v3.Simulator):
    """The grid agent's cycle without its transport: loading, the optimal planner, commands to the devices."""

    def __init__(self) -> None:
        super().__init__(
            meta(
                "Grid",
                ["net_power_kw", "battery_power_kw", *HEADROOM_ATTRS.values(), "home_commands", "battery_commands"],
            )
        )
        self.meta["models"]["Grid"]["any_inputs"] = True
        self.cycle = 0
        self.out: dict = {}
        self.log = None

    def create(self, num: int, model: str, work_dir: str | None = None) -> list[dict]:
        if work_dir:
            from agents.common.csvlog import CsvLogWriter

            columns = ["cycle", "loading_before_kw", "state_before", "commands", "requested_kw", "plan_ms"]
            self.log = CsvLogWriter(Path(work_dir) / "mosaik_grid_log.csv", columns, fresh=True)
        return [{"eid": "grid", "type": model}]

    def step(self, time: int, inputs: dict, max_advance: int) -> int:
        self.cycle += 1
        by_agent: dict[str, dict[str, float]] = {}
        for attr, sources in inputs.get("grid", {}).items():
            for source, value in sources.items():
                by_agent.setdefault(source, {})[attr] = value
        agents = tuple(
            AgentFlex(
                agent_id=source,
                transformer_id="T1",
                net_power_kw=values["net_power_kw"],
                headroom_kw={action: values[HEADROOM_ATTRS[action.value]] for action in CurtailAction},
                battery_power_kw=values["battery_power_kw"],
            )
            for source, values in by_agent.items()
        )
        loading_kw = sum(a.net_power_kw for a in agents)
        started = time_ns()
        plan = plan_optimal(
            Snapshot(transformers=(TransformerSnapshot("T1", RATING_KW, RATING_KW, loading_kw),), agents=agents)
        )
        plan_ms = (time_ns() - started) / 1e6
        commands: dict[str, dict[str, float]] = {source: {} for source in by_agent}
        for command in plan.commands:
            commands[command.agent_id][command.action.value] = command.power_kw
        self.out = {f"{source.split('.', 1)[0].lower()}_commands": orders for source, orders in commands.items()}
        if self.log is not None:
            self.log.write(
                {
                    "cycle": self.cycle,
                    "loading_before_kw": loading_kw,
                    "state_before": classify_loading(loading_kw, RATING_KW, RATING_KW).value,
                    "commands": len(plan.commands),
                    "requested_kw": sum(c.power_kw for c in plan.commands),
                    "plan_ms": plan_ms,
                }
            )
        return time + STEP_S

    def get_data(self, outputs: dict) -> dict:
        return {eid: {attr: self.out.get(attr, {}) for attr in attrs} for eid, attrs in outputs.items()}

    def finalize(self) -> None:
        if self.log is not None:
            self.log.close()


def time_ns() -> int:
    return time.perf_counter_ns()


def kind_of(pid: int) -> str:
    """Which simulator a child process runs, from its command line."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return next((a.decode() for a in args if a in (b"grid", b"home", b"battery")), str(pid))


def run_scenario(steps: int, work: str, work_dir: Path) -> dict:
    """Start the three simulators, connect them as the seed's feeder, run ``steps`` steps; the wall time of the run."""
    here = Path(__file__).resolve()
    sim_config = {
        name: {"cmd": f"%(python)s {here} {name.lower()} %(addr)s", "cwd": str(ROOT), "posix": True}
        for name in ("Grid", "Home", "Battery")
    }
    world = mosaik.World(sim_config, time_resolution=1.0, skip_greetings=True)
    params = {"work_dir": str(work_dir)} if work == "durable" else {}
    grid = world.start("Grid", sim_id="Grid").Grid(**params)
    home = world.start("Home", sim_id="Home").Home(**params)
    battery = world.start("Battery", sim_id="Battery").Battery(**params)
    device_attrs = ["net_power_kw", "battery_power_kw", *HEADROOM_ATTRS.values()]
    for device, commands in ((home, "home_commands"), (battery, "battery_commands")):
        world.connect(device, grid, *device_attrs)
        world.connect(grid, device, (commands, "commands"), time_shifted=True, initial_data={commands: {}})
    pids = {"scenario": os.getpid(), **{kind_of(pid): pid for pid in children_of(os.getpid())}}
    cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    world.run(until=steps * STEP_S, print_progress=False, shutdown=False)
    wall_s = time.perf_counter() - started
    cpu = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
    world.shutdown()
    return {"steps": steps, "wall_s": wall_s, "steps_per_s": steps / wall_s, "cpu_s": cpu}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("home", "battery", "grid"):
        kind = sys.argv.pop(1)
        sim = {"home": HomeSim, "battery": BatterySim, "grid": GridSim}[kind]()
        mosaik_api_v3.start_simulation(sim, f"the seed's {kind} as a mosaik simulator", configure_logging=False)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    scenario = sub.add_parser("scenario", help="run the three simulators and print one JSON line")
    scenario.add_argument("--steps", type=int, default=2000)
    scenario.add_argument("--work", choices=("durable", "physics"), default="durable")
    scenario.add_argument(
        "--dir", type=Path, default=None, help="Where the durable work writes (default a temporary folder)"
    )
    args = parser.parse_args()
    work_dir = args.dir or Path(tempfile.mkdtemp(prefix="ems-mosaik-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run_scenario(args.steps, args.work, work_dir)))


if __name__ == "__main__":
    main()
