"""TLS between hosts: the plain-HTTP rule, the flags, and the seed's trio over mutual TLS as real processes."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agents import home
from agents.common.settings import GridSettings, HomeSettings, StartupError
from agents.common.tls import (
    PLAIN_HTTP_REFUSED,
    client_ssl_context,
    is_loopback,
    plain_http_beyond_loopback,
    plaintext_token_warning,
    server_ssl_options,
)
from agents.coordinator.run import CoordinatorSettings, plan_children
from agents.cycle.peers import AiohttpPeers, HttpxPeers, PeerCallError
from tests.conftest import TlsFiles, make_home_settings
from tests.test_e2e import HOST, ROOT, child_env, free_port, free_port_block, pid_gone, stop, wait_until

TOKEN = "s3cret-token-for-tls-tests"
UP_LINE = re.compile(r"^up\s+(?P<name>.+?)\s+https://127\.0\.0\.1:(?P<port>\d+)\s+pid (?P<pid>\d+)\s*$", re.MULTILINE)


def tls_flags(files: TlsFiles, *, require: bool = True) -> list[str]:
    """Every TLS flag, the server certificate doubling as the client certificate (trustme's serve both)."""
    flags = ["--tls-certfile", str(files.cert), "--tls-keyfile", str(files.key), "--tls-ca-file", str(files.ca)]
    flags += ["--tls-client-certfile", str(files.cert), "--tls-client-keyfile", str(files.key)]
    return flags + (["--tls-require-client-cert"] if require else [])


# -- the rule for plain HTTP ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("grid.lab", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://grid.lab:8000", True),
        ("http://10.0.0.5", True),
        ("HTTP://grid.lab", True),
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8001/agents/h1", False),
        ("http://[::1]:8000", False),
        ("https://grid.lab:8000", False),
    ],
)
def test_plain_http_beyond_loopback(url, refused):
    assert plain_http_beyond_loopback(url) is refused


@pytest.mark.parametrize("peers_class", [HttpxPeers, AiohttpPeers])
async def test_grid_peers_refuse_plain_http_beyond_loopback_with_tls_on(tls_files, peers_class):
    context = ssl.create_default_context(cafile=tls_files.ca)
    seen: list[str] = []
    transport = httpx.MockTransport(lambda request: seen.append(str(request.url)) or httpx.Response(200, json={}))
    peers = HttpxPeers(2.0, 4, transport, context) if peers_class is HttpxPeers else AiohttpPeers(2.0, 4, context)
    try:
        for call in (
            peers.post("http://home.lab:8001/curtail", {}, {"Authorization": f"Bearer {TOKEN}"}),
            peers.get("http://home.lab:8001/health", 1.0),
        ):
            with pytest.raises(PeerCallError) as refused:
                await call
            assert refused.value.kind == "insecure"
            assert PLAIN_HTTP_REFUSED in str(refused.value)
            assert not refused.value.retryable
        assert seen == []
        if peers_class is HttpxPeers:  # loopback and https go through
            await peers.post("http://127.0.0.1:8001/curtail", {}, {})
            await peers.post("https://home.lab:8001/curtail", {}, {})
            assert seen == ["http://127.0.0.1:8001/curtail", "https://home.lab:8001/curtail"]
    finally:
        await peers.aclose()


async def test_grid_peers_without_tls_call_plain_http(tls_files):
    seen: list[str] = []
    transport = httpx.MockTransport(lambda request: seen.append(str(request.url)) or httpx.Response(200, json={}))
    peers = HttpxPeers(2.0, 4, transport)
    await peers.post("http://home.lab:8001/curtail", {}, {})
    await peers.aclose()
    assert seen == ["http://home.lab:8001/curtail"]


@pytest.mark.parametrize(
    ("grid_url", "refused"),
    [("http://grid.lab:8000", True), ("http://127.0.0.1:8000", False), ("https://grid.lab:8000", False)],
)
def test_device_refuses_a_plain_grid_url_beyond_loopback_with_tls_on(tmp_path, tls_files, grid_url, refused):
    settings = make_home_settings(tmp_path, grid_url=grid_url, tls_ca_file=tls_files.ca)
    if refused:
        with pytest.raises(StartupError, match=f"--grid-url {grid_url}: plain http:// beyond loopback is refused"):
            home.create_app(settings)
    else:
        home.create_app(settings)
    home.create_app(make_home_settings(tmp_path, grid_url=grid_url))  # without TLS: as before


# -- the flags -----------------------------------------------------------------------------------
def test_own_url_is_https_when_serving_tls(tmp_path, tls_files):
    settings = make_home_settings(tmp_path, port=8123, tls_certfile=tls_files.cert, tls_keyfile=tls_files.key)
    assert settings.own_url == "https://127.0.0.1:8123"
    assert make_home_settings(tmp_path, port=8123).own_url == "http://127.0.0.1:8123"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-certfile", "{cert}"], "--tls-certfile and --tls-keyfile go together"),
        (["--tls-client-keyfile", "{key}"], "--tls-client-certfile and --tls-client-keyfile go together"),
        (["--tls-require-client-cert"], "--tls-require-client-cert needs --tls-certfile, --tls-keyfile and --tls-ca"),
        (["--tls-ca-file", "/nowhere/ca.pem"], "--tls-ca-file: Path does not point to a file"),
    ],
)
def test_bad_tls_flags_are_one_line_errors(tls_files, capsys, flags, message):
    args = [f.format(cert=tls_files.cert, key=tls_files.key) for f in flags]
    with pytest.raises(SystemExit) as exited:
        GridSettings.from_cli(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_server_ssl_options_for_uvicorn(tls_files):
    settings = GridSettings(tls_certfile=tls_files.cert, tls_keyfile=tls_files.key, tls_ca_file=tls_files.ca)
    assert server_ssl_options(settings) == {
        "ssl_certfile": str(tls_files.cert),
        "ssl_keyfile": str(tls_files.key),
        "ssl_ca_certs": str(tls_files.ca),
    }
    required = settings.model_copy(update={"tls_require_client_cert": True})
    assert server_ssl_options(required)["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert server_ssl_options(GridSettings()) == {}


def test_a_key_that_does_not_fit_the_certificate_is_a_startup_error(tls_files):
    settings = GridSettings(tls_certfile=tls_files.cert, tls_keyfile=tls_files.stranger_key)
    with pytest.raises(StartupError, match=f"--tls-certfile {tls_files.cert} with --tls-keyfile"):
        server_ssl_options(settings)
    with pytest.raises(StartupError, match="--tls-client-certfile"):
        client_ssl_context(GridSettings(tls_client_certfile=tls_files.cert, tls_client_keyfile=tls_files.stranger_key))


@pytest.mark.parametrize(
    ("host", "token", "tls", "warns"),
    [
        ("0.0.0.0", TOKEN, False, True),
        ("10.0.0.5", TOKEN, False, True),
        ("127.0.0.1", TOKEN, False, False),
        ("0.0.0.0", None, False, False),
        ("0.0.0.0", TOKEN, True, False),
    ],
)
def test_plaintext_token_warning(tls_files, host, token, tls, warns):
    files = {"tls_certfile": tls_files.cert, "tls_keyfile": tls_files.key} if tls else {}
    warning = plaintext_token_warning(HomeSettings(host=host, **files), token)
    assert (warning is not None) is warns
    if warns:
        assert f"serving plain HTTP on {host}:8001 with AGENT_TOKEN set" in warning
        assert TOKEN not in warning


def test_coordinator_hands_its_tls_flags_to_every_child(tmp_path, tls_files, monkeypatch):
    monkeypatch.chdir(tls_files.ca.parent)
    relative = {
        "tls_certfile": Path("server.pem"),
        "tls_keyfile": Path("server-key.pem"),
        "tls_ca_file": Path("ca.pem"),
    }
    settings = CoordinatorSettings(base_port=9100, log_dir=tmp_path, **relative)
    children = plan_children(settings)
    assert [c.url for c in children] == [f"https://127.0.0.1:{p}" for p in (9100, 9101, 9102)]
    for child in children:
        command = child.command
        files = {"--tls-certfile": tls_files.cert, "--tls-keyfile": tls_files.key, "--tls-ca-file": tls_files.ca}
        for flag, path in files.items():
            assert command[command.index(flag) + 1] == str(path)  # absolute, whatever the child's working folder
        assert "--tls-require-client-cert" not in command
    assert children[1].command[children[1].command.index("--grid-url") + 1] == "https://127.0.0.1:9100"


def test_coordinator_requiring_client_certificates_needs_its_own(tls_files, capsys):
    flags = tls_flags(tls_files, require=False)[:6]  # a server certificate and the CA, no client certificate
    with pytest.raises(SystemExit):
        CoordinatorSettings.from_cli([*flags, "--tls-require-client-cert"])
    assert "the coordinator calls its agents too" in capsys.readouterr().err


# -- real processes ------------------------------------------------------------------------------
@dataclass
class Trio:
    """The seed's three agents, started by the coordinator over mutual TLS and kept up."""

    base_port: int
    output: Path
    log_dir: Path
    process: subprocess.Popen

    def url(self, offset: int = 0) -> str:
        return f"https://{HOST}:{self.base_port + offset}"


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[Trio]:
    """The coordinator runs two cycles over mutual TLS and keeps its agents up; stopped with SIGTERM at the end."""
    folder = tmp_path_factory.mktemp("trio")
    base = free_port_block()
    output = folder / "coordinator.out"
    command = [
        sys.executable,
        "run_distributed_simulation.py",
        "--base-port",
        str(base),
        "--cycles",
        "2",
        "--interval",
        "0",
        "--log-dir",
        str(folder / "logs"),
        "--state-dir",
        str(folder / "state"),
        *tls_flags(tls_files),
    ]
    with output.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(COLUMNS="200", AGENT_TOKEN=TOKEN),
        )
    trio = Trio(base, output, folder / "logs", process)
    try:
        up = wait_until(lambda: "press Ctrl+C" in output.read_text() or process.poll() is not None, 90.0)
        assert up and process.poll() is None, output.read_text()[-3000:]
        yield trio
    finally:
        pids = [int(m["pid"]) for m in UP_LINE.finditer(output.read_text())]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        stop(process, grace_s=15.0)
        for pid in pids:
            if not wait_until(lambda pid=pid: pid_gone(pid), 5.0):
                os.kill(pid, signal.SIGKILL)


def client(files: TlsFiles, cert: tuple[Path, Path] | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=files.ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    return httpx.Client(verify=context, timeout=5.0)


@pytest.mark.e2e
def test_coordinator_runs_the_seed_trio_over_mutual_tls(trio):
    text = trio.output.read_text()
    assert {m["name"] for m in UP_LINE.finditer(text)} == {"grid agent", "home agent", "battery agent"}
    assert "cycle 1" in text and "cycle 2" in text and "unreachable:" not in text  # no agent missed a cycle
    assert "Traceback" not in text
    grid_log = (trio.log_dir / "grid_agent_log.csv").read_text().splitlines()
    assert len(grid_log) == 3  # a header and two cycles
    grid_output = (trio.log_dir / "grid_agent_server.log").read_text()
    assert f"Uvicorn running on https://127.0.0.1:{trio.base_port}" in grid_output
    assert f"registered at https://127.0.0.1:{trio.base_port + 1}" in grid_output


@pytest.mark.e2e
def test_a_client_with_a_certificate_signed_by_the_ca_is_served(trio, tls_files):
    with client(tls_files, (tls_files.client_cert, tls_files.client_key)) as c:
        for offset in (0, 1, 2):
            assert c.get(f"{trio.url(offset)}/health").json()["status"] == "ok"
        agents = c.get(f"{trio.url()}/agents").json()
        assert {a["url"] for a in agents} == {trio.url(1), trio.url(2)}
        assert all(a["healthy"] for a in agents)
        result = c.post(f"{trio.url()}/coordinate", headers={"Authorization": f"Bearer {TOKEN}"})
        assert result.status_code == 200, result.text
        assert result.json()["unreachable"] == []


@pytest.mark.e2e
@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_a_client_without_a_certificate_of_the_ca_is_refused(trio, tls_files, who):
    cert = None if who == "no certificate" else (tls_files.stranger_cert, tls_files.stranger_key)
    with client(tls_files, cert) as c:
        for offset in (0, 1):
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)) as refused:
                c.get(f"{trio.url(offset)}/health")
            reason = str(refused.value)
            assert re.search(r"SSL|certificate|alert|closed|reset|disconnected", reason, re.IGNORECASE), reason


@pytest.mark.e2e
def test_a_client_that_does_not_trust_the_ca_refuses_the_server(trio, tls_files):
    with httpx.Client(timeout=5.0) as c, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        c.get(f"{trio.url()}/health")


@pytest.mark.e2e
def test_a_server_bound_beyond_loopback_with_a_token_and_no_tls_warns(tmp_path):
    port = free_port()
    output = tmp_path / "grid.out"
    command = [
        sys.executable,
        "grid_agent_server.py",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--log-dir",
        str(tmp_path / "logs"),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    with output.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(AGENT_TOKEN=TOKEN),
        )
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://{HOST}:{port}/health", timeout=1.0).status_code == 200  # loopback only
            except httpx.HTTPError:
                return process.poll() is not None

        assert wait_until(healthy, 30.0) and process.poll() is None, output.read_text()[-2000:]
        time.sleep(0.2)
        text = output.read_text()
        assert f"WARNING agents.common.server: serving plain HTTP on 0.0.0.0:{port} with AGENT_TOKEN set" in text
        assert TOKEN not in text
    finally:
        stop(process)
