"""The coordinator on a real multi-node Ray cluster (``--ray``): agents as actors, a run across nodes, a node lost.

The cluster is ``ray.cluster_utils.Cluster``: a head and a worker node, each its own raylet with
its own processes, on loopback (this sandbox can make network namespaces, but Ray 2.60 binds the
machine's interface unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and a cluster inside namespaces
costs a second copy of Ray's start-up; the nodes here share 127.0.0.1 and differ by node id).
One cluster serves the whole module (about 10 s to start, about 1 GB); it is shut down after.
"""

from __future__ import annotations

import json
import os
import re
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

#: Ray's node failure detection, shortened (about 15 s by default) so that a lost node is noticed in about 2 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}
#: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps the nodes on loopback (else Ray 2.60 binds the machine's interface).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **FAST_HEALTH_CHECKS}
for _name, _value in RAY_ENV.items():  # before Ray is imported: it reads some of them once, at import
    os.environ.setdefault(_name, _value)

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.e2e
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
UP_LINE = re.compile(r"^up\s+(?P<name>.+?)\s+(?P<url>https?://\S+)\s+node (?P<node>[0-9a-f]+)\s*$", re.MULTILINE)


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A head node and one worker node on this machine, for every test of the module."""
    # the nodes' processes, the actors among them, inherit the environment as it is when they start: on this
    # loaded 2-core machine a /simulate answer from an actor can miss the default 2 s, so give it 10
    os.environ["EMS_STEP_TIMEOUT_S"] = "10"
    try:
        cluster = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
        cluster.worker = cluster.add_node(**NODE)
    finally:
        os.environ.pop("EMS_STEP_TIMEOUT_S")
    try:
        assert cluster.address.startswith("127.0.0.1:"), cluster.address  # loopback only
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def coordinator(cluster, tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
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
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(COLUMNS="200", **RAY_ENV),
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
    assert all(m["url"].startswith("http://127.0.0.1:") for m in placed.values()), out
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
    """Kill the worker node's raylet (and with it its actors) at cycle 10 of 80, 0.2 s apart."""
    process = coordinator(
        cluster, tmp_path, "--homes", "4", "--homes-per-process", "1", "--cycles", "80", "--interval", "0.2"
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        grid_url = _wait_for(lambda: _grid_url(lines), 90.0, "the grid agent never came up")
        _wait_for(lambda: _status(grid_url).get("cycles", 0) >= 10, 60.0, "the run never reached cycle 10")
        worker = cluster.worker.node_id
        on_worker = {m["name"] for m in UP_LINE.finditer("".join(lines)) if worker.startswith(m["node"])}
        assert on_worker and "grid agent" not in on_worker, "".join(lines)
        killed_at = time.monotonic()
        cluster.remove_node(cluster.worker, allow_graceful=False)
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
