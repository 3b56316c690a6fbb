"""A lab's certificates in one command: a CA, a certificate per host, a certificate per client.

    python -m agents.common.certs --out certs/ --hosts grid.lab,10.0.0.5 home1.lab --clients prometheus alice

writes into ``certs/``: ``ca.pem`` (what every process trusts: ``--tls-ca-file``), ``ca-key.pem``
(keep it off the agents' hosts), and for each host ``HOST.pem`` and ``HOST-key.pem`` (that host's
``--tls-certfile``/``--tls-keyfile``; good for client authentication too, so also its
``--tls-client-certfile``/``--tls-client-keyfile`` under mutual TLS), and for each client
``NAME.pem`` and ``NAME-key.pem`` (client authentication only: Prometheus, a browser, curl).
A host known by several names is given as one comma-separated entry (``grid.lab,10.0.0.5``): its
certificate carries them all and its files take the first; an IP address goes in as one. A folder that already holds
``ca.pem`` and ``ca-key.pem`` keeps its CA, so a host added later is signed by the same CA.
Keys are ECDSA P-256, written readable by their owner only.

For a lab, not for production: there is no revocation, and whoever holds ``ca-key.pem`` can
mint certificates every agent trusts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Validity of the CA and of the certificates it signs (days).
CA_DAYS = 3650
LEAF_DAYS = 825


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "energy-management lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    """A host as it belongs in subjectAltName: an IP address entry for an address, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """Signatures for every certificate; certificate and CRL signing for the CA's alone."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(days: int = CA_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate that may sign leaf certificates only (path length 0)."""
    key = _key()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    name = _name("energy-management lab CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(signs_certificates=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    *,
    server: bool,
    days: int = LEAF_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``name`` signed by the CA: a host's (server and client use, each of the
    comma-separated names in ``name`` in subjectAltName) when ``server``, else a client's (client use only)."""
    names = [part.strip() for part in name.split(",") if part.strip()]
    key = _key()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key readable by its owner only (created so, never widened)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def load_or_make_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    """The CA in ``out`` (ca.pem, ca-key.pem), made there if absent; the flag says whether it was made."""
    cert_path, key_path = out / "ca.pem", out / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an ECDSA key made by this script")
        return cert, key, False
    if cert_path.exists() or key_path.exists():
        raise ValueError(f"{out} holds only one of ca.pem and ca-key.pem; remove it or give the other")
    cert, key = make_ca()
    _write_cert(cert_path, cert)
    _write_key(key_path, key)
    return cert, key, True


def _file_stem(name: str) -> str:
    stem = name.split(",")[0].strip().replace(":", "_").replace("/", "_")
    if not stem or stem.startswith("."):
        raise ValueError(f"{name!r} cannot name a certificate file")
    return stem


def make_lab(out: Path, hosts: Sequence[str], clients: Sequence[str] = (), days: int = LEAF_DAYS) -> list[Path]:
    """Write the CA (unless ``out`` has one), a certificate per host and per client; return the files written."""
    leaves = [(name, _file_stem(name), True) for name in hosts] + [(name, _file_stem(name), False) for name in clients]
    files = ["ca.pem", "ca-key.pem", *(f"{stem}{suffix}" for _, stem, _ in leaves for suffix in (".pem", "-key.pem"))]
    if len(set(files)) != len(files):
        raise ValueError("two certificates would share a file (a name given twice, 'ca', or NAME beside NAME-key)")
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key, made = load_or_make_ca(out)
    written = [out / "ca.pem", out / "ca-key.pem"] if made else []
    for name, stem, server in leaves:
        cert, key = issue(ca_cert, ca_key, name, server=server, days=days)
        _write_cert(out / f"{stem}.pem", cert)
        _write_key(out / f"{stem}-key.pem", key)
        written += [out / f"{stem}.pem", out / f"{stem}-key.pem"]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.common.certs``: make a lab's CA and certificates."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.common.certs",
        description="Make a CA and certificates for a lab (host names or IP addresses as the agents are called).",
    )
    parser.add_argument("--out", type=Path, required=True, help="Folder for the files (a CA already there is reused)")
    parser.add_argument(
        "--hosts", nargs="*", default=[], help="Agent servers' names or IP addresses; NAME,ALIAS,... for one host"
    )
    parser.add_argument("--clients", nargs="*", default=[], help="Names of client-only certificates (prometheus)")
    parser.add_argument("--days", type=int, default=LEAF_DAYS, help=f"Validity of each certificate ({LEAF_DAYS})")
    args = parser.parse_args(argv)
    if not args.hosts and not args.clients:
        parser.error("give --hosts and/or --clients")
    if args.days < 1:
        parser.error("--days must be at least 1")
    try:
        written = make_lab(args.out, args.hosts, args.clients, args.days)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
