"""The coordinator's children: which agent processes a run has, and the command lines that start them."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agents.common.scenario import Scenario, generate_feeder, load_scenario
from agents.common.settings import StartupError
from agents.coordinator.settings import ROOT, CoordinatorSettings


@dataclass
class Child:
    """One agent process the coordinator started."""

    name: str
    agent_id: str
    port: int
    command: list[str]
    output: Path
    hosts: list[str] = field(default_factory=list)  # the agent ids it hosts, which must register
    process: subprocess.Popen | None = None
    scheme: str = "http"  # https when the coordinator hands its children --tls-certfile
    restart_command: list[str] = field(default_factory=list)  # after a death: resume, never start afresh

    def exit_code(self) -> int | None:
        """None while it runs (or before it started), else how it ended."""
        return None if self.process is None else self.process.poll()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log_files(self) -> dict[str, bytes]:
        """Nothing to fetch: a local process writes its logs straight into the coordinator's --log-dir."""
        return {}

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.output.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on (host, port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def feeder_scenario(settings: CoordinatorSettings) -> Scenario | None:
    """The feeder of the run: the --network's agents, the --scenario file, a generated one for --homes N > 1,
    or None for the seed's."""
    if settings.network is not None:
        if settings.scenario is not None or settings.homes > 1:
            raise StartupError("--network brings its own homes and storage; give it without --scenario or --homes")
        from agents.network.feeder import prepare_network_run  # pandapower and simbench load only for a network

        feeder = prepare_network_run(settings.network, network_dir(settings))
        for what in feeder.left_out:
            print(f"note: left out of the agents: {what}", file=sys.stderr)
        return feeder.scenario
    if settings.scenario is not None:
        scenario = load_scenario(settings.scenario)
        if settings.homes > 1 and len(scenario.homes) != settings.homes:
            raise StartupError(
                f"--homes {settings.homes} and --scenario {settings.scenario} ({len(scenario.homes)} homes) "
                "disagree; give one"
            )
        return scenario
    if settings.homes > 1:
        return generate_feeder(settings.homes)
    return None


def network_dir(settings: CoordinatorSettings) -> Path:
    """Where a run on a network keeps its agents' profile arrays and the grid agent's network.json."""
    return settings.log_dir / "network"


def plan_children(
    settings: CoordinatorSettings, scenario: Scenario | None = None, scenario_path: Path | None = None
) -> list[Child]:
    """The agent processes of the run and the command lines that start them.

    The seed's feeder is one grid, one home and one battery process. A scenario with homes gets
    one grid process, ceil(homes / --homes-per-process) home processes each hosting its shard of
    the homes, and one process hosting the storage systems; ports count up from --base-port.
    """
    path = scenario_path or settings.scenario
    device = _device_flags(settings)
    specs = [_ChildSpec("grid agent", "grid_agent", "grid_agent_server.py", _grid_flags(settings, path))]
    if scenario is None or not scenario.homes:
        specs += [
            _ChildSpec("home agent", "home_1", "home_agent_server.py", ["--agent-id", "home_1", *device], ["home_1"]),
            _ChildSpec(
                "battery agent",
                "battery_agent_1",
                "battery_agent_server.py",
                ["--agent-id", "battery_agent_1", *device],
                ["battery_agent_1"],
            ),
        ]
    else:
        specs += _feeder_specs(settings, scenario, path, device)
    common = _common_flags(settings)
    children = []
    for k, spec in enumerate(specs):
        port = settings.base_port + k
        command = [sys.executable, str(ROOT / spec.script), "--port", str(port), *common, *spec.flags]
        again = [part for part in command if part != "--fresh"] + (["--resume-cycles"] if k == 0 else [])
        output = settings.log_dir / f"{spec.agent_id}_server.log"
        children.append(
            Child(spec.name, spec.agent_id, port, command, output, spec.hosts, None, settings.scheme, again)
        )
    return children


@dataclass
class _ChildSpec:
    """One process to start: its name, its id, its script, the flags of its own and the agents it hosts."""

    name: str
    agent_id: str
    script: str
    flags: list[str]
    hosts: list[str] = field(default_factory=list)


def _common_flags(settings: CoordinatorSettings) -> list[str]:
    """What every child is started with: loopback, the log and state folders, the log level, TLS."""
    return [
        "--host",
        "127.0.0.1",
        "--log-dir",
        str(settings.log_dir),
        "--state-dir",
        str(settings.state_dir),
        "--log-level",
        settings.log_level,
        *settings.tls_flags(),
    ]


def _device_flags(settings: CoordinatorSettings) -> list[str]:
    """What every device process is started with: the grid agent's URL, the heartbeat, the start, --fresh."""
    return [
        "--grid-url",
        f"{settings.scheme}://127.0.0.1:{settings.base_port}",
        "--heartbeat-s",
        f"{settings.heartbeat_s:g}",
        *(["--start", settings.start] if settings.start else []),
        *([] if settings.resume else ["--fresh"]),
    ]


def _grid_flags(settings: CoordinatorSettings, scenario_path: Path | None) -> list[str]:
    """The grid agent's own flags: the planner, the ratings, the scenario, OpenADR 3, the network."""
    flags = ["--planner", settings.planner]
    if settings.transformer_rating_kw is not None:
        flags += ["--transformer-rating-kw", str(settings.transformer_rating_kw)]
    if scenario_path is not None:
        flags += ["--scenario", str(scenario_path)]
    if settings.openadr3:  # VENs may then join the run through the VTN; the clients come from the environment too
        flags += ["--openadr3"]
        if settings.openadr3_clients is not None:
            flags += ["--openadr3-clients", str(settings.openadr3_clients.resolve())]
    if settings.network is not None:  # the network the coordinator checked and saved, quicker to load than SimBench
        flags += ["--network", str(network_dir(settings) / "network.json"), "--pv-reactive", settings.pv_reactive]
        for flag in ("slack_vm_pu", "vm_min_pu", "vm_max_pu"):
            if getattr(settings, flag) is not None:
                flags += ["--" + flag.replace("_", "-"), str(getattr(settings, flag))]
    return flags


def _feeder_specs(
    settings: CoordinatorSettings, scenario: Scenario, path: Path | None, device: list[str]
) -> list[_ChildSpec]:
    """A scenario's device processes: its homes in shards of --homes-per-process, its storage in one process."""
    n = math.ceil(len(scenario.homes) / settings.homes_per_process)
    specs = [
        _ChildSpec(
            f"homes {i + 1}/{n}",
            f"home_agents_{i + 1}_of_{n}",
            "home_agent_server.py",
            ["--scenario", str(path), "--shard", f"{i}/{n}", *device],
            [h.id for h in scenario.homes[i::n]],
        )
        for i in range(n)
    ]
    if scenario.batteries:
        specs.append(
            _ChildSpec(
                "storage",
                "battery_agents",
                "battery_agent_server.py",
                ["--scenario", str(path), *device],
                [b.id for b in scenario.batteries],
            )
        )
    return specs
