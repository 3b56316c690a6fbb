"""End to end against software no one here wrote: the ``openadr3-client`` package drives the grid agent's VTN.

The client needs Python >= 3.12 and the project runs on 3.11, so it runs as a program of its own
(tests/openadr3_client_driver.py) in a virtual environment this module makes once from the pinned
tests/requirements-openadr3-client.txt and keeps in pytest's cache, or in .cache/ without it (made again when that
file changes). The grid
agent runs as a real subprocess on a free loopback port; the client talks HTTP to it and prints JSON lines.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_e2e import ROOT, Agent, child_env, spawn  # noqa: F401 (spawn: a fixture)

pytestmark = pytest.mark.e2e

REQUIREMENTS = ROOT / "tests" / "requirements-openadr3-client.txt"
DRIVER = ROOT / "tests" / "openadr3_client_driver.py"
CLIENTS = [
    {"client_id": "bl_client", "client_secret": "bl-s3cret", "role": "bl"},
    {"client_id": "ven_1", "client_secret": "ven-1-s3cret", "role": "ven"},
    {"client_id": "ven_2", "client_secret": "ven-2-s3cret", "role": "ven"},
]
SECRETS = {"BL_SECRET": "bl-s3cret", "VEN_SECRET": "ven-1-s3cret", "OTHER_SECRET": "ven-2-s3cret"}


def python_312() -> str | None:
    """A Python >= 3.12 interpreter: pyenv's own (its shim on PATH refuses while 3.11 is selected), else PATH's."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3.1[2-9]")))
    for candidate in [*found, shutil.which("python3.13"), shutil.which("python3.12")]:
        if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="module")
def client_python(request: pytest.FixtureRequest) -> str:
    """The Python of a virtual environment with openadr3-client installed from the pinned requirements."""
    interpreter = python_312()
    if interpreter is None:
        if os.environ.get("CI"):
            pytest.fail("openadr3-client needs Python >= 3.12, and none is installed")
        pytest.skip("openadr3-client needs Python >= 3.12, and none is installed here")
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + interpreter.encode()).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: the project's .cache/ then
    folder = Path(cache.mkdir("openadr3-client")) if cache is not None else ROOT / ".cache" / "openadr3-client"
    venv = folder / digest
    python, done = venv / "bin" / "python", venv / "installed"
    if not done.exists():
        shutil.rmtree(venv, ignore_errors=True)
        for command in (
            [interpreter, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        ):
            made = subprocess.run(command, capture_output=True, text=True, timeout=600)
            assert made.returncode == 0, f"{' '.join(command)} failed:\n{made.stdout[-2000:]}{made.stderr[-2000:]}"
        done.write_text(REQUIREMENTS.read_text())
    return str(python)


@pytest.fixture
def grid(spawn: Callable[..., Agent]) -> Agent:
    """A grid agent with the VTN on, a 15 kW transformer and the three clients; stopped afterwards."""
    agent = spawn(
        "grid_agent_server.py",
        "--openadr3",
        "--transformer-rating-kw",
        "15",
        "--planner",
        "optimal",
        env={"OPENADR3_CLIENTS": json.dumps(CLIENTS)},
    )
    agent.wait_healthy()
    return agent


def drive(python: str, grid: Agent, *args: str, timeout_s: float = 300.0) -> list[dict]:
    """Run the client program against the grid agent; its JSON lines."""
    env = {**child_env(**SECRETS), "OAUTHLIB_INSECURE_TRANSPORT": "1"}
    vtn = f"{grid.url}/openadr3/3.0.1"
    done = subprocess.run(
        [python, str(DRIVER), *args, "--vtn", vtn, "--grid", grid.url],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"the openadr3-client program failed:\n{done.stderr[-3000:]}\n{grid.text()[-2000:]}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_openadr3_client_registers_reads_its_events_reports_and_cannot_read_another_ven(client_python, grid):
    steps = {line["step"]: line for line in drive(client_python, grid, "handshake", "--net-kw", "20")}
    (t1,) = steps["cycle"]["result"]["transformers"]
    assert t1["loading_before_kw"] == pytest.approx(21.0)  # ven_a's 20 kW and ven_b's 1 kW, as they reported
    assert t1["state_before"] == "overload" and t1["state_after"] == "normal"
    (action,) = steps["cycle"]["result"]["actions"]
    assert action["agent_id"] == "ven_a.site" and action["status"] == "sent"
    names = [e["name"] for e in steps["events"]["events"]]
    assert "study: evening peak" in names  # the business-logic client's event, aimed at ven_a
    event = steps["event"]["event"]
    assert event["id"] in action["reason"]
    assert event["intervals"][0]["payloads"][0] == {"type": "DISPATCH_SETPOINT_RELATIVE", "values": [-6.0]}
    report = steps["report"]["report"]
    assert report["eventID"] == event["id"] and report["id"].startswith("report-")
    assert steps["other_ven"]["status"] == 403 and steps["other_event"]["status"] == 403


def test_a_ven_written_with_openadr3_client_is_curtailed_through_96_cycles(client_python, grid):
    lines = drive(client_python, grid, "run", "--cycles", "96", "--base-kw", "12", "--peak-kw", "22", "--flex-kw", "8")
    assert len(lines) == 96
    overloaded = 0
    for line in lines:
        result = line["result"]
        (t1,) = result["transformers"]
        assert t1["agents_reporting"] == 1 and result["unreachable"] == []
        assert t1["loading_before_kw"] == pytest.approx(line["base_kw"])  # its report is the transformer's loading
        if line["base_kw"] > 15.0 + 1e-6:
            overloaded += 1
            assert t1["state_before"] == "overload"
            (action,) = result["actions"]
            assert action["status"] == "sent" and action["requested_kw"] == pytest.approx(line["base_kw"] - 15.0)
            assert line["events"] and line["shift_kw"] == pytest.approx(15.0 - line["base_kw"])
            assert line["net_kw"] == pytest.approx(15.0)  # it followed the event
            assert t1["loading_after_kw"] == pytest.approx(15.0) and t1["state_after"] == "normal"
        else:
            assert result["actions"] == [] and line["events"] == []
    # hours of overload, every cycle of it curtailed by an event: more events than one page of the VTN's lists
    assert overloaded > 50
