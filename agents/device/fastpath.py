"""The batch routes as plain ASGI: what a device process answers every cycle, without FastAPI's per-request work.

``POST /batch/simulate`` and ``POST /batch/curtail`` carry every cycle of a run. FastAPI answers a
request by matching it against each route in turn, solving the route's dependencies (the bearer
token) and validating the body from Python objects: about 250 us of the 350 us a home agent spent
on one ``/batch/simulate`` in process, the step itself included (``bench/profile_cycle.py`` finds
the same share in a running feeder). This middleware answers those two routes itself when the
request is one FastAPI would accept and answer 200 (a JSON body that validates, the right token, a
well-formed ``X-Cycle-Id`` if any),
with the same handler and the same JSON. Anything else (a missing or wrong token, a body that does
not validate, another content type) goes on to FastAPI with its body replayed, so every error keeps
its one shape, and the routes stay declared in FastAPI for the OpenAPI document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agents.common.auth import bearer_accepted
from models.schemas import CYCLE_ID_PATTERN

#: A fast route: the body's model and the handler that answers it (given the body and ``X-Cycle-Id`` or None) with
#: a batch result, whose ``to_json`` is the answer.
Route = tuple[type[BaseModel], Callable[[Any, str | None], Any]]

_CYCLE_ID = re.compile(CYCLE_ID_PATTERN)
_JSON_HEADERS = [(b"content-type", b"application/json")]


class BatchFastPath:
    """ASGI middleware answering ``routes`` (path -> body model and handler) for POST requests FastAPI would take."""

    def __init__(self, app: ASGIApp, routes: dict[str, Route], token: str | None) -> None:
        self.app = app
        self.routes = routes
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before its body was in
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        answer = self._answer(route, scope, body)
        if answer is None:
            await self.app(scope, _replay(body, receive), send)
            return
        headers = [*_JSON_HEADERS, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    def _answer(self, route: Route, scope: Scope, body: bytes) -> bytes | None:
        """The answer's JSON, or None for a request FastAPI should answer (with its error)."""
        authorization = content_type = cycle_id = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"x-cycle-id":
                cycle_id = value.decode("latin-1")
        if cycle_id is not None and _CYCLE_ID.fullmatch(cycle_id) is None:
            return None
        if content_type is None or content_type.split(";", 1)[0].strip().lower() != "application/json":
            return None
        if not bearer_accepted(self.token, authorization):
            return None
        model, handler = route
        try:
            request = model.model_validate_json(body)
        except ValidationError:
            return None
        return handler(request, cycle_id).to_json()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then whatever the client sends next (a disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
