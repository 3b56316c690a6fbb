"""Errors of the agents and the one JSON shape they are rendered in.

AgentError                 base: code, message, the agent that raised it
 ├── BadRequestError       the caller sent something wrong (4xx)
 │    ├── CallbackUrlError a registration's URL the grid agent cannot call back (422)
 │    ├── ConflictError    a command id reused with a different body, or a call meant for another agent (409)
 │    │    └── FeederBusyError  a run (or another request) holds the grid agent's feeder past the wait (409)
 │    ├── NotFoundError    an agent this process does not host, or a run it does not know (404)
 │    └── UnauthorizedError  no or wrong bearer token (401)
 └── PeerUnavailableError  another agent did not answer (502)
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.schemas import ErrorBody


class AgentError(Exception):
    """Base of every error an agent raises on purpose."""

    status_code = 500
    code = "agent_error"
    detail: list[dict] | None = None

    def __init__(self, message: str, agent_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.agent_id = agent_id


class BadRequestError(AgentError):
    """The caller sent something wrong."""

    status_code = 400
    code = "bad_request"


class CallbackUrlError(BadRequestError):
    """A registration names a URL the grid agent cannot call: unreachable, its own, or plain HTTP under TLS."""

    status_code = 422
    code = "callback_refused"

    def __init__(self, refusals: dict[str, str], agent_id: str = "") -> None:
        shown = "; ".join(f"{url}: {reason}" for url, reason in refusals.items())
        super().__init__(f"the grid agent cannot use the callback URL {shown}", agent_id)
        self.refusals = refusals
        self.detail = [{"field": "url", "url": url, "message": reason} for url, reason in refusals.items()]


class ConflictError(BadRequestError):
    """The request contradicts an earlier one (same command id, different body)."""

    status_code = 409
    code = "conflict"


class FeederBusyError(ConflictError):
    """The feeder is held by a run, or by another request for longer than the bounded wait."""

    code = "feeder_busy"


class NotFoundError(BadRequestError):
    """The path names an agent this process does not host, or a run the grid agent does not know."""

    status_code = 404
    code = "not_found"


class UnauthorizedError(BadRequestError):
    """A mutating request came without the shared bearer token."""

    status_code = 401
    code = "unauthorized"


class PeerUnavailableError(AgentError):
    """Another agent did not answer, or answered with an error."""

    status_code = 502
    code = "peer_unavailable"

    def __init__(self, peer_id: str, reason: str, agent_id: str = "") -> None:
        super().__init__(f"agent {peer_id} did not answer: {reason}", agent_id)
        self.peer_id = peer_id
        self.reason = reason


#: What each error status means, for the OpenAPI ``responses=`` of the routes that can answer it.
_ERROR_DESCRIPTIONS = {
    400: "The body cannot be read (not UTF-8 JSON), or contradicts itself",
    401: "Missing or wrong bearer token (only when AGENT_TOKEN is set)",
    404: "No such agent in this process",
    409: "A command_id reused with another body, or a call meant for another agent",
    422: "Invalid request; detail names each field (or the callback URL that cannot be reached, and why)",
}


def error_responses(*status_codes: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict]:
    """The ``responses=`` of a route: each error status it can answer, all in the one ErrorBody shape.

    ``descriptions`` replaces the generic text of a status where the route means something more precise.
    """
    texts = {**_ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {code: {"model": ErrorBody, "description": texts[code]} for code in status_codes}


def _field_name(loc: tuple) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI, agent_id: str) -> None:
    """Render every error, ours or FastAPI's, as one ``ErrorBody`` JSON shape."""

    def render(status_code: int, body: ErrorBody, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(
            status_code=status_code, content=jsonable_encoder(body.model_dump(exclude_none=True)), headers=headers
        )

    @app.exception_handler(AgentError)
    async def _agent_error(_: Request, exc: AgentError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, UnauthorizedError) else None
        body = ErrorBody(error=exc.code, message=exc.message, agent_id=exc.agent_id or agent_id, detail=exc.detail)
        return render(exc.status_code, body, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = [
            {
                "field": "body" if e.get("type") == "json_invalid" else _field_name(tuple(e.get("loc", ()))),
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in errors
        ]
        fields = ", ".join(sorted({d["field"] for d in detail}))
        message = f"invalid request: {fields}: {detail[0]['message']}" if detail else "invalid request"
        return render(422, ErrorBody(error="validation_error", message=message, agent_id=agent_id, detail=detail))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return render(exc.status_code, ErrorBody(error="http_error", message=str(exc.detail), agent_id=agent_id))
