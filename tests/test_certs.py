"""The lab's certificate script: a CA and certificates that TLS handshakes accept, and keys kept private."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509

from agents.common.certs import main, make_lab

ROOT = Path(__file__).resolve().parent.parent


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> ssl.SSLSocket:
    """A TLS handshake over a socket pair; returns the server's side (raises what the client's side raised)."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    accepted: list[ssl.SSLSocket | BaseException] = []

    def serve() -> None:
        try:
            accepted.append(server.wrap_socket(left, server_side=True))
        except (ssl.SSLError, OSError) as exc:
            accepted.append(exc)
            left.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname=server_hostname):
            pass
    finally:
        thread.join(timeout=5)
        right.close()
    side = accepted[0]
    if isinstance(side, BaseException):
        raise side
    side.close()
    return side


def server_context(folder: Path, host: str, require_client: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / f"{host}.pem", folder / f"{host}-key.pem")
    if require_client:
        context.load_verify_locations(folder / "ca.pem")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(folder: Path, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=folder / "ca.pem")
    if cert:
        context.load_cert_chain(folder / f"{cert}.pem", folder / f"{cert}-key.pem")
    return context


def test_make_lab_certificates_pass_a_handshake_by_name_and_address(tmp_path):
    assert main(["--out", str(tmp_path), "--hosts", "grid.lab,10.0.0.5", "127.0.0.1", "--clients", "prometheus"]) == 0
    handshake(server_context(tmp_path, "grid.lab"), client_context(tmp_path), "grid.lab")
    handshake(server_context(tmp_path, "grid.lab"), client_context(tmp_path), "10.0.0.5")
    handshake(server_context(tmp_path, "127.0.0.1"), client_context(tmp_path), "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(server_context(tmp_path, "grid.lab"), client_context(tmp_path), "home1.lab")


def test_make_lab_certificates_authenticate_clients(tmp_path):
    make_lab(tmp_path, ["grid.lab", "home1.lab"], ["prometheus"])
    for client in ("prometheus", "home1.lab"):  # a host's certificate is good for client authentication too
        server = server_context(tmp_path, "grid.lab", require_client=True)
        assert handshake(server, client_context(tmp_path, client), "grid.lab") is not None
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(server_context(tmp_path, "grid.lab", True), client_context(tmp_path), "grid.lab")
    prometheus = x509.load_pem_x509_certificate((tmp_path / "prometheus.pem").read_bytes())
    usage = prometheus.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]  # a client-only certificate cannot serve


def test_make_lab_keys_are_private_and_a_second_run_keeps_the_ca(tmp_path):
    first = make_lab(tmp_path, ["grid.lab"])
    assert {p.name for p in first} == {"ca.pem", "ca-key.pem", "grid.lab.pem", "grid.lab-key.pem"}
    for key in ("ca-key.pem", "grid.lab-key.pem"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    ca = (tmp_path / "ca.pem").read_bytes()
    second = make_lab(tmp_path, ["home2.lab"])
    assert {p.name for p in second} == {"home2.lab.pem", "home2.lab-key.pem"}
    assert (tmp_path / "ca.pem").read_bytes() == ca
    handshake(server_context(tmp_path, "home2.lab"), client_context(tmp_path), "home2.lab")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hosts", "grid.lab", "grid.lab"], "share a file"),
        (["--hosts", "ca"], "share a file"),
        (["--hosts", ".hidden"], "cannot name a certificate file"),
    ],
)
def test_make_lab_refuses_clashing_names(tmp_path, capsys, args, message):
    assert main(["--out", str(tmp_path), *args]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ca.pem").exists()


def test_certs_runs_as_a_module(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "agents.common.certs", "--out", str(tmp_path), "--hosts", "localhost,127.0.0.1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "localhost.pem").exists() and (tmp_path / "localhost-key.pem").exists()
