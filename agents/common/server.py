"""Running an agent's app: logging, TLS options, a clear error for a busy port or a bad certificate."""

from __future__ import annotations

import gc
import logging
import socket
import sys
from collections.abc import Callable

import uvicorn
from fastapi import Response
from pydantic import BaseModel

from agents.common.settings import ServerSettings, StartupError, agent_token_from_env, configure_logging
from agents.common.tls import plaintext_token_warning, server_ssl_options

logger = logging.getLogger(__name__)


#: Seconds an agent keeps an idle keep-alive connection open. Longer than its callers keep theirs (the grid agent's
#: client, ``CLIENT_KEEP_ALIVE_S``; httpx's 5 s), so that a caller never sends on a connection the server is closing:
#: with uvicorn's default of 5 s and cycles 5 s apart (the coordinator's default interval) a /simulate now and then
#: met a connection reset, which a non-idempotent call cannot retry.
SERVER_KEEP_ALIVE_S = 75.0
#: How every agent's uvicorn runs, as a script or as a Ray actor.
UVICORN_OPTIONS = {
    "access_log": False,
    "proxy_headers": False,  # no proxy in front of an agent; its callers' own addresses are the ones that count
    "timeout_keep_alive": SERVER_KEEP_ALIVE_S,
}
#: Seconds the grid agent keeps an idle connection to an agent for reuse: less than ``SERVER_KEEP_ALIVE_S``.
CLIENT_KEEP_ALIVE_S = 30.0


#: The collector's first threshold once an app is built (Python's default is 700 allocations). A cycle allocates
#: and frees tens of thousands of short-lived objects per thousand agents (statuses parsed and built, rows, JSON),
#: so at 700 the young generation is collected dozens of times a cycle and the older ones, which hold every agent,
#: again and again: parsing a batch of statuses took 2.4 times as long with the default collector as with this.
GC_FIRST_THRESHOLD = 50_000


def settle_memory() -> None:
    """After start-up: move what the app built (modules, agents, data) out of the collector's sight, and collect
    young objects less often. Objects made later are collected as usual; only the frequency changes."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_FIRST_THRESHOLD, second, third)


#: FastAPI's native OpenTelemetry off: it asks the global providers whether to trace at every request (a few
#: microseconds each, on the routes every cycle calls), and the agents' own metrics are Prometheus's.
TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}


def serve(create_app: Callable, settings: ServerSettings) -> None:
    """Build the app and run it under uvicorn (HTTPS with --tls-certfile); a busy port or a bad
    certificate is a one-line error, not a traceback."""
    configure_logging(settings.log_level)
    try:
        ssl_options = server_ssl_options(settings)
        app = create_app(settings)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    warning = plaintext_token_warning(settings, agent_token_from_env())
    if warning:
        logger.warning("%s", warning)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((settings.host, settings.port))
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        probe.close()
    options = {**UVICORN_OPTIONS, **ssl_options}
    settle_memory()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, **options)


def json_response(model: BaseModel) -> Response:
    """A model as a JSON answer, serialised once by pydantic. For the hot routes (batch steps, a run's
    results): FastAPI would validate the model again before serialising it; the route's ``response_model``
    still documents it."""
    return Response(content=model.model_dump_json(), media_type="application/json")
