"""Agent processes as Ray actors: the same FastAPI apps, placed over a Ray cluster's nodes (``--ray ADDRESS``).

Only the coordinator imports this module, and only with ``--ray``: without it Ray is never
imported. Each actor (``AgentHost``) takes the command line the coordinator would have run as a
subprocess, binds the app to its node's IP on a free port, serves it under uvicorn in a thread of
the actor's process and reports its URL; devices register with the grid agent over HTTP as they
always do. Ray restarts an actor whose node died (``max_restarts``) on another node, where it
binds a new URL and registers again, and the grid agent calls the new URL from then on.

A restarted host finds its state where its ``--state-dir`` is: on storage every node sees, its
agents resume from their committed step; on the lost node's own disk, they start afresh at the
feeder's current step (the grid agent's answer to their registration carries the feeder's clock;
see ``DeviceAgent.follow_feeder``). The CSV logs follow the same rule; the coordinator fetches each
actor's logs at the end of the run (``log_files``) into its own ``--log-dir``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray

logger = logging.getLogger(__name__)

#: How often Ray may restart one agent host after its node dies.
ACTOR_MAX_RESTARTS = 10
#: CPU each device host reserves in its placement group bundle: a token, so that bundles can be spread.
BUNDLE_CPU = 0.01
#: Seconds to wait for an actor to report its URL.
ACTOR_START_TIMEOUT_S = 60.0

_FACTORIES = {
    "grid_agent_server.py": ("agents.grid", "GridSettings"),
    "home_agent_server.py": ("agents.home", "HomeSettings"),
    "battery_agent_server.py": ("agents.battery", "BatterySettings"),
}


def free_port(host: str) -> int:
    """A port the OS says is free on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def node_ip() -> str:
    """The IP address Ray knows this node by."""
    return ray.util.get_node_ip_address()


class AgentHost:
    """One agent server (grid, a shard of homes, the storage systems) inside a Ray actor."""

    def __init__(self, script: str, args: list[str], env: dict[str, str], files: dict[str, bytes]) -> None:
        import importlib

        import uvicorn

        from agents.common.server import UVICORN_OPTIONS, settle_memory
        from agents.common.settings import configure_logging
        from agents.common.tls import server_ssl_options

        os.environ.update(env)
        for name, content in files.items():  # the scenario or network the coordinator made, where this node lacks it
            path = Path(name)
            if not path.exists() or path.read_bytes() != content:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
        module_name, settings_name = _FACTORIES[script]
        module = importlib.import_module(module_name)
        settings_class = getattr(importlib.import_module("agents.common.settings"), settings_name)
        if ray.get_runtime_context().was_current_actor_reconstructed:  # Ray restarted it: resume, never afresh
            args = [a for a in args if a != "--fresh"]
            if script == "grid_agent_server.py":
                args = [*args, "--resume-cycles"]
        self.ip = node_ip()
        port = free_port(self.ip)
        settings = settings_class.from_cli([*args, "--host", self.ip, "--port", str(port)])
        configure_logging(settings.log_level)
        self.settings = settings
        self.url = f"{settings.scheme}://{self.ip}:{port}"
        self.app = module.create_app(settings)
        config = uvicorn.Config(
            self.app,
            host=self.ip,
            port=port,
            log_level=settings.log_level,
            **UVICORN_OPTIONS,
            **server_ssl_options(settings),
        )
        self.server = uvicorn.Server(config)
        settle_memory()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), name="agent-server")
        self.thread.start()
        deadline = time.monotonic() + ACTOR_START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{script} did not start on {self.url}")
            time.sleep(0.02)
        self.node_id = ray.get_runtime_context().get_node_id()

    def where(self) -> dict[str, str | int]:
        """The URL it serves at, the node it runs on and its process id there."""
        return {"url": self.url, "node_id": self.node_id, "ip": self.ip, "pid": os.getpid()}

    def point_to(self, grid_url: str) -> None:
        """Register with the grid agent at ``grid_url`` from now on (it was restarted elsewhere)."""
        self.settings.grid_url = grid_url
        client = getattr(self.app.state, "registration", None)
        if client is not None:
            client.base_url = grid_url

    def shutdown(self) -> None:
        """Stop the server as SIGTERM would: requests in flight finish, logs are flushed, state is saved."""
        self.server.should_exit = True
        self.thread.join(timeout=10.0)

    def log_files(self, names: list[str]) -> dict[str, bytes]:
        """Those of the named CSV logs that this host's --log-dir holds, by file name."""
        folder = Path(self.settings.log_dir)
        return {name: (folder / name).read_bytes() for name in names if (folder / name).is_file()}


@dataclass
class RayChild:
    """An agent host placed on the cluster, as the coordinator sees it (the counterpart of a local Child)."""

    name: str
    agent_id: str
    hosts: list[str]
    actor: object
    url: str = ""
    node_id: str = ""
    pid: int = 0  # on its node

    def exit_code(self) -> int | None:
        return None  # Ray, not the coordinator's supervisor, restarts actors

    def refresh(self, timeout_s: float = ACTOR_START_TIMEOUT_S) -> str:
        """Ask the actor where it serves now (a restarted actor has a new URL); return the URL."""
        where = ray.get(self.actor.where.remote(), timeout=timeout_s)
        self.url, self.node_id, self.pid = where["url"], where["node_id"], where["pid"]
        return self.url

    def log_files(self) -> dict[str, bytes]:
        """The CSV logs of the agents it hosts (the grid agent's own for the grid agent)."""
        names = [f"{agent_id}_log.csv" for agent_id in self.hosts or [self.agent_id]]
        return ray.get(self.actor.log_files.remote(names), timeout=30.0)

    def tail(self, lines: int = 3) -> str:
        return ""


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to), as a driver."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(__file__).resolve().parents[2]
    runtime_env = {
        "working_dir": str(root),  # the project's code reaches every node through the cluster
        "excludes": ["logs", "state", "reports", "**/__pycache__", "tests", "bench"],
        "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"},
    }
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)


def head_node_id() -> str | None:
    """The cluster's head node, if Ray says which one it is."""
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node["NodeID"]
    return None


def place(
    child_name: str,
    agent_id: str,
    hosts: list[str],
    script: str,
    args: list[str],
    env: dict[str, str],
    files: dict[str, bytes],
    on_head: bool = False,
    bundle: tuple[object, int] | None = None,
) -> RayChild:
    """Start one agent host as an actor (``refresh`` waits for its URL); Ray restarts it on another node when its
    node dies.

    Device hosts go to the bundles of a ``spread_group`` (``bundle``: the group and an index); the
    grid agent (``on_head``) runs on the head node, which the cluster cannot lose and keep running
    anyway, so that a lost worker costs only device hosts.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    strategy: object = "SPREAD"
    cpus = 0.0
    node = head_node_id() if on_head else None
    if node is not None:
        strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)  # soft=True often lands elsewhere
    elif bundle is not None:
        group, index = bundle
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
        cpus = BUNDLE_CPU
    actor_class = ray.remote(AgentHost).options(
        num_cpus=cpus, max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=-1, scheduling_strategy=strategy
    )
    return RayChild(child_name, agent_id, hosts, actor_class.remote(script, args, env, files))


def spread_group(count: int, timeout_s: float = ACTOR_START_TIMEOUT_S) -> object:
    """A placement group of ``count`` token bundles spread over the nodes (a plain SPREAD strategy for actors
    that ask for no CPU often leaves them all on one node); Ray moves a lost node's bundles to the others."""
    from ray.util.placement_group import placement_group

    group = placement_group([{"CPU": BUNDLE_CPU}] * count, strategy="SPREAD")
    ray.get(group.ready(), timeout=timeout_s)
    return group


def point_to(children: list[RayChild], grid_url: str) -> None:
    """Tell every device host where the grid agent now serves."""
    ray.get([c.actor.point_to.remote(grid_url) for c in children], timeout=ACTOR_START_TIMEOUT_S)


def shutdown(children: list[RayChild]) -> None:
    """Shut every actor's server down as SIGTERM would (last log rows written, state saved)."""
    for child in reversed(children):
        try:
            ray.get(child.actor.shutdown.remote(), timeout=15.0)
        except Exception as exc:  # a node already gone: nothing left to shut down
            logger.warning("could not shut down the %s: %s", child.name, exc)


def kill(children: list[RayChild]) -> None:
    """End the actors for good (no restart)."""
    for child in children:
        ray.kill(child.actor, no_restart=True)


def disconnect() -> None:
    """Leave the cluster; the placement groups this driver made go with it."""
    ray.shutdown()
