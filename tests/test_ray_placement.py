"""The coordinator's --ray flag without a cluster: what it checks, and how a child's flags become an actor's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.coordinator.run import CoordinatorSettings, files_for_nodes, ray_arguments
from tests.test_e2e import ROOT


def test_without_ray_flag_ray_is_never_imported():
    code = (
        "import sys; from agents.coordinator.run import CoordinatorSettings, plan_children;"
        " plan_children(CoordinatorSettings()); assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize("address", ["auto", "local", "10.0.0.1:6379", "ray://head.lab:10001", "127.0.0.1:39201"])
def test_ray_flag_takes_an_address(address):
    assert CoordinatorSettings.from_cli(["--ray", address]).ray == address


@pytest.mark.parametrize("address", ["", "head", "10.0.0.1:", "http://head:6379", "auto; rm -rf /"])
def test_bad_ray_address_is_an_error_naming_the_flag(address, capsys):
    with pytest.raises(SystemExit) as exited:
        CoordinatorSettings.from_cli(["--ray", address])
    assert exited.value.code == 2
    assert "error: --ray:" in capsys.readouterr().err


def test_ray_arguments_drop_host_make_paths_absolute_and_point_to_the_grid_actor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--host", "127.0.0.1", "--log-dir", "logs", "--grid-url", "http://127.0.0.1:8000", "--fresh"]
    assert ray_arguments([*args, "--heartbeat-s", "0.5"], "http://10.0.0.2:41234") == [
        "--log-dir",
        str(tmp_path / "logs"),
        "--grid-url",
        "http://10.0.0.2:41234",
        "--fresh",
        "--heartbeat-s",
        "0.5",
    ]


def test_files_for_nodes_carry_the_scenario_the_flags_name(tmp_path):
    feeder = tmp_path / "feeder.toml"
    feeder.write_text("[[homes]]\n", encoding="utf-8")
    assert files_for_nodes(["--scenario", str(feeder), "--log-dir", str(tmp_path)]) == {
        str(feeder): feeder.read_bytes()
    }
    assert files_for_nodes(["--scenario", str(Path(tmp_path / "missing.toml"))]) == {}
