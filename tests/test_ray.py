"""The coordinator on a real multi-node Ray cluster (``--ray``): agents as actors, a run across nodes, a node lost.

The cluster is a head and a worker node, each started with ``ray start`` in a network namespace of its own
(a veth pair each on one bridge, addresses in a /24 of 10.234.0.0/16 picked from the test process's id), so
each node has its own IP address and the agents on different nodes talk across the bridge as they would
across a lab's switch. The coordinator runs inside the head's namespace, as a driver on the head node
does; the test reads the grid agent from the machine's own namespace through the bridge. Losing the worker
node is a SIGKILL of every process in its namespace: its raylet, its object store and its actors.
Where namespaces cannot be made (not root, no iproute2) the same tests run on ``ray.cluster_utils.Cluster``
(two raylets on loopback, told apart by node id), and say so; under CI namespaces must work.
One cluster serves the whole module (7-16 s to start, 0.8 GB before the agents); it is shut down after.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.test_e2e import ROOT, child_env

#: Ray's node failure detection, shortened (a check every 3 s, 5 missed, by default: about 15 s) so that a lost node
#: is noticed in about 2 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", **FAST_HEALTH_CHECKS}
#: On loopback (the fallback), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps the nodes there (else Ray 2.60 binds the
#: machine's interface); between namespaces it must not be set: with it Ray refuses a second node's ``ray start``.
LOOPBACK_ENV = {**RAY_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
for _name, _value in RAY_ENV.items():  # before Ray is imported: it reads some of them once, at import
    os.environ.setdefault(_name, _value)

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.e2e
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
RAY_PORT = 6390
#: On this loaded 2-core machine a /simulate answer from an actor can miss the default 2 s: the nodes' processes,
#: the actors among them, inherit this.
ACTOR_ENV = {"EMS_STEP_TIMEOUT_S": "10"}
UP_LINE = re.compile(r"^up\s+(?P<name>.+?)\s+(?P<url>https?://\S+)\s+node (?P<node>[0-9a-f]+)\s*$", re.MULTILINE)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class NamespaceCluster:
    """A Ray head and a worker node, each in a network namespace with an address of its own."""

    def __init__(self, temp: Path) -> None:
        tag, subnet = f"{os.getpid() % 10000}", f"10.234.{os.getpid() % 250 + 1}"
        self.bridge = f"emsrb{tag}"
        self.veths = [f"emsrv{tag}{i}" for i in range(2)]
        self.namespaces = [f"emsr{tag}head", f"emsr{tag}work"]
        self.ips = [f"{subnet}.10", f"{subnet}.11"]
        self.subnet, self.temp = subnet, temp
        self.address = f"{self.ips[0]}:{RAY_PORT}"
        self.env = {**RAY_ENV, "COLUMNS": "200"}  # the coordinator's
        self.kind = "two nodes in network namespaces"

    def up(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for namespace, veth, ip in zip(self.namespaces, self.veths, self.ips, strict=True):
            _ip("netns", "add", namespace)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        head = ["--head", "--port", str(RAY_PORT), "--include-dashboard", "false", "--temp-dir", str(self.temp)]
        self._ray_start(0, head)
        self._ray_start(1, ["--address", self.address])

    def _ray_start(self, node: int, args: list[str]) -> None:
        ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        flags = ["--node-ip-address", self.ips[node], "--num-cpus", "1", "--object-store-memory", str(80 * 1024**2)]
        done = subprocess.run(
            ["ip", "netns", "exec", self.namespaces[node], ray, "start", *args, *flags],
            capture_output=True,
            text=True,
            timeout=120,
            env=_without_loopback(child_env(**RAY_ENV, **ACTOR_ENV)),
        )
        assert done.returncode == 0, f"ray start {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"

    def command(self, args: list[str]) -> list[str]:
        """A command run on the head node (in its namespace), as a driver must be."""
        return ["ip", "netns", "exec", self.namespaces[0], *args]

    def child_env(self) -> dict[str, str]:
        return _without_loopback(child_env(**self.env))

    def lose_worker(self) -> None:
        self._kill(self.namespaces[1])

    def _kill(self, namespace: str) -> None:
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def down(self) -> None:
        for namespace in self.namespaces:
            self._kill(namespace)
        time.sleep(0.5)  # the kernel reaps them before the namespace goes
        for namespace, veth in zip(self.namespaces, self.veths, strict=True):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def _without_loopback(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}


class LoopbackCluster:
    """The fallback: ``ray.cluster_utils.Cluster``, a head and a worker raylet on 127.0.0.1."""

    def __init__(self) -> None:
        self.ips = ["127.0.0.1"]
        self.env = {**LOOPBACK_ENV, "COLUMNS": "200"}
        self.kind = "two raylets on loopback (ray.cluster_utils.Cluster)"

    def up(self) -> None:
        os.environ.update({**ACTOR_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        try:
            self.cluster = ray_cluster_utils.Cluster(
                initialize_head=True, head_node_args={**NODE, "include_dashboard": False}
            )
            self.worker = self.cluster.add_node(**NODE)
        finally:
            for name in ACTOR_ENV:
                os.environ.pop(name)
        self.address = self.cluster.address
        assert self.address.startswith("127.0.0.1:"), self.address  # loopback only
        self.cluster.wait_for_nodes()

    def command(self, args: list[str]) -> list[str]:
        return args

    def child_env(self) -> dict[str, str]:
        return child_env(**self.env)

    def lose_worker(self) -> None:
        self.cluster.remove_node(self.worker, allow_graceful=False)

    def down(self) -> None:
        if hasattr(self, "cluster"):
            self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceCluster | LoopbackCluster]:
    """A head node and one worker node, for every test of the module."""
    cluster: NamespaceCluster | LoopbackCluster
    if os.geteuid() == 0 and shutil.which("ip") is not None:
        cluster = NamespaceCluster(tmp_path_factory.mktemp("ray"))
    elif os.environ.get("CI"):
        pytest.fail("the Ray tests need root and iproute2 for their namespace nodes under CI")
    else:
        cluster = LoopbackCluster()
    try:
        cluster.up()
        print(f"\nRay cluster: {cluster.kind}, at {cluster.address}")
        yield cluster
    finally:
        cluster.down()


def coordinator(cluster, tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        cluster.command(
            [
                sys.executable,
                "run_distributed_simulation.py",
                "--ray",
                cluster.address,
                "--log-dir",
                str(tmp_path / "logs"),
                "--state-dir",
                str(tmp_path / "state"),
                "--report",
                str(tmp_path / "report"),
                "--heartbeat-s",
                "0.5",
                "--exit",
                *args,
            ]
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cluster.child_env(),
    )


def summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report" / "summary.json").read_text())


def cycles(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "report" / "cycles.jsonl").read_text().splitlines()]


def steps_once_each(tmp_path: Path, agent_id: str) -> list[int]:
    steps = pd.read_csv(tmp_path / "logs" / f"{agent_id}_log.csv")["step"].tolist()
    assert steps == sorted(set(steps)), f"{agent_id} was stepped twice for one cycle, or its log repeats a step"
    return steps


# -- a run across two nodes ------------------------------------------------------------------------
def test_a_run_completes_with_its_agents_spread_over_two_nodes(cluster, tmp_path):
    process = coordinator(cluster, tmp_path, "--homes", "4", "--homes-per-process", "2", "--cycles", "4")
    out = process.communicate(timeout=120)[0]
    assert process.returncode == 0, out
    placed = {m["name"]: m for m in UP_LINE.finditer(out)}
    assert {m["url"].split("//")[1].split(":")[0] for m in placed.values()} == set(cluster.ips), out  # their own IPs
    assert set(placed) == {"grid agent", "homes 1/2", "homes 2/2", "storage"}
    assert len({m["node"] for m in placed.values()}) == 2, out  # spread over both nodes
    assert [c["cycle"] for c in cycles(tmp_path)] == [1, 2, 3, 4]
    assert [(c["unreachable"], c["agents_stepped"]) for c in cycles(tmp_path)] == [([], 5)] * 4
    for agent_id in ("home_1", "home_2", "home_3", "home_4", "battery_T1"):
        assert steps_once_each(tmp_path, agent_id) == [1, 2, 3, 4]  # the logs came back to --log-dir
    assert pd.read_csv(tmp_path / "logs" / "grid_agent_log.csv")["cycle"].tolist() == [1, 2, 3, 4]
    assert "stopped 4 agent actors" in out


# -- a node lost mid-run -----------------------------------------------------------------------------
def test_worker_node_lost_mid_run_cycles_go_on_its_agents_unreachable_then_back(cluster, tmp_path):
    """Kill the worker node (its raylet and with it its actors) at cycle 10 of 80, 0.2 s apart."""
    process = coordinator(
        cluster, tmp_path, "--homes", "4", "--homes-per-process", "1", "--cycles", "80", "--interval", "0.2"
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        grid_url = _wait_for(lambda: _grid_url(lines), 90.0, "the grid agent never came up")
        _wait_for(lambda: _status(grid_url).get("cycles", 0) >= 10, 60.0, "the run never reached cycle 10")
        placed = list(UP_LINE.finditer("".join(lines)))
        head = next(m["node"] for m in placed if m["name"] == "grid agent")  # the grid agent is on the head node
        on_worker = {m["name"] for m in placed if m["node"] != head}
        assert on_worker, "".join(lines)
        killed_at = time.monotonic()
        cluster.lose_worker()
        lost = _wait_for(lambda: _last_unreachable(grid_url), 30.0, "no cycle listed the lost agents")
        lost_after_s = time.monotonic() - killed_at
        _wait_for(
            lambda: _last_unreachable(grid_url) == [] and _status(grid_url)["last_cycle"]["agents_stepped"] == 5,
            60.0,
            "the lost agents never came back",
        )
        back_after_s = time.monotonic() - killed_at
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=5)
    out = "".join(lines)
    print(f"\nnode lost: listed unreachable after {lost_after_s:.1f} s, back after {back_after_s:.1f} s")
    assert process.returncode == 0, out
    found = summary(tmp_path)["run"]["faults"]
    assert set(lost) <= set(found["unreachable"]) == hosted_by(on_worker)  # exactly the lost node's agents
    results = cycles(tmp_path)
    assert [c["cycle"] for c in results] == list(range(1, 81))  # every cycle ran: the grid agent was not lost
    assert results[-1]["unreachable"] == [] and results[-1]["agents_stepped"] == 5
    for agent_id in ("home_1", "home_2", "home_3", "home_4", "battery_T1"):
        steps = steps_once_each(tmp_path, agent_id)
        assert steps[0] == 1  # a restarted host resumed from its committed state (the state folder is shared here)
    assert not list((tmp_path / "logs").glob("*.old.csv"))  # and kept its log: it did not start afresh


def hosted_by(names: set[str]) -> set[str]:
    """The agents the named hosts of a 4-home feeder at one home per process hold."""
    return {"battery_T1" if name == "storage" else f"home_{name.split()[1].split('/')[0]}" for name in names}


def _wait_for(check, timeout_s: float, why: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(why)


def _grid_url(lines: list[str]) -> str | None:
    found = [m["url"] for m in UP_LINE.finditer("".join(lines)) if m["name"] == "grid agent"]
    return found[0] if found else None


def _status(grid_url: str) -> dict:
    try:
        return httpx.get(f"{grid_url}/status", timeout=1.0).json()
    except (httpx.HTTPError, ValueError):
        return {}


def _last_unreachable(grid_url: str) -> list[str] | None:
    last = _status(grid_url).get("last_cycle")
    return None if last is None else last["unreachable"]
