"""TLS between hosts: every process's client and server SSL settings, and the rule for plain HTTP.

The rule: a process given any TLS file (``--tls-certfile``, ``--tls-ca-file`` or
``--tls-client-certfile``) sends nothing over plain HTTP beyond loopback. Its clients refuse an
``http://`` URL whose host is not a loopback address (127.0.0.0/8, ::1, ``localhost``): a device
agent at start-up for its ``--grid-url``; the grid agent at registration, for a callback URL (a 422
naming it), and again at call time. So, with TLS on, the bearer token never crosses the network in
clear. Without TLS, a server bound beyond loopback with ``AGENT_TOKEN`` set warns at start-up.

Clients verify servers against ``--tls-ca-file`` (the system's store without it) and, for mutual
TLS, present ``--tls-client-certfile``; a server started with ``--tls-require-client-cert`` refuses
a client without a certificate signed by ``--tls-ca-file`` during the handshake.
"""

from __future__ import annotations

import ipaddress
import ssl
from typing import Any
from urllib.parse import urlsplit

from agents.common.settings import ServerSettings, StartupError

#: Why a plain-HTTP URL beyond loopback is refused while TLS is on.
PLAIN_HTTP_REFUSED = (
    "plain http:// beyond loopback is refused while TLS is on (the bearer token would cross the network in clear); "
    "use https://"
)


def is_loopback(host: str | None) -> bool:
    """Whether a host name or address is this machine's loopback (127.0.0.0/8, ::1, localhost)."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_beyond_loopback(url: str) -> bool:
    """Whether ``url`` is ``http://`` to a host that is not loopback (what a process with TLS on refuses)."""
    parts = urlsplit(url)
    return parts.scheme.lower() == "http" and not is_loopback(parts.hostname)


def client_ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The context a client verifies servers with and presents its certificate from; None without TLS files.

    Raises StartupError naming the file that cannot be read.
    """
    if settings.tls_ca_file is None and settings.tls_client_certfile is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"--tls-ca-file {settings.tls_ca_file}: {_reason(exc)}") from exc
    if settings.tls_client_certfile is not None:
        try:
            context.load_cert_chain(str(settings.tls_client_certfile), str(settings.tls_client_keyfile))
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(
                f"--tls-client-certfile {settings.tls_client_certfile} with --tls-client-keyfile "
                f"{settings.tls_client_keyfile}: {_reason(exc)}"
            ) from exc
    return context


def server_ssl_options(settings: ServerSettings) -> dict[str, Any]:
    """uvicorn's ``ssl_*`` arguments for ``settings`` ({} without --tls-certfile), checked by loading them once.

    Raises StartupError naming the file that cannot be read.
    """
    if settings.tls_certfile is None:
        return {}
    check = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        check.load_cert_chain(str(settings.tls_certfile), str(settings.tls_keyfile))
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"--tls-certfile {settings.tls_certfile} with --tls-keyfile {settings.tls_keyfile}: {_reason(exc)}"
        ) from exc
    options: dict[str, Any] = {"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)}
    if settings.tls_ca_file is not None:
        try:
            check.load_verify_locations(cafile=str(settings.tls_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"--tls-ca-file {settings.tls_ca_file}: {_reason(exc)}") from exc
        options["ssl_ca_certs"] = str(settings.tls_ca_file)
    if settings.tls_require_client_cert:
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def plaintext_token_warning(settings: ServerSettings, token: str | None) -> str | None:
    """The start-up warning of a server bound beyond loopback with a token and without TLS, else None."""
    if token is None or settings.tls_certfile is not None or is_loopback(settings.host):
        return None
    return (
        f"serving plain HTTP on {settings.host}:{settings.port} with AGENT_TOKEN set: the bearer token crosses "
        "the network in clear; give --tls-certfile and --tls-keyfile (README: Between hosts: TLS)"
    )


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
