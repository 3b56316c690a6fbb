"""Running an agent's app: logging, TLS options, a clear error for a busy port or a bad certificate."""

from __future__ import annotations

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
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=False,  # no proxy in front of an agent; its callers' own addresses are the ones that count
        **ssl_options,
    )


#: FastAPI's native OpenTelemetry off: it asks the global providers whether to trace at every request (a few
#: microseconds each, on the routes every cycle calls), and the agents' own metrics are Prometheus's.
TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}


def json_response(model: BaseModel) -> Response:
    """A model as a JSON answer, serialised once by pydantic. For the hot routes (batch steps, a run's
    results): FastAPI would validate the model again before serialising it; the route's ``response_model``
    still documents it."""
    return Response(content=model.model_dump_json(), media_type="application/json")
