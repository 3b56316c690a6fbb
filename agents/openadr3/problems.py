"""Errors of the VTN and their one body, the OpenADR document's ``problem``, under ``/openadr3`` only.

VtnError                 base: HTTP status, title, detail (rendered as a problem)
 ├── BadRequest          the request cannot be served as sent: invalid body or parameter, unknown programID (400)
 ├── Forbidden           no token, a wrong or expired one, or a role or owner that may not do this (403)
 ├── NotFound            no object of this id (404)
 └── Conflict            a name the document wants unique is taken (409): programName, venName,
                         a resourceName within its VEN

The token endpoint answers its own 400s in RFC 6749's ``authError`` shape, as the document says.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.openadr3 import Problem

logger = logging.getLogger(__name__)

#: The ``problem`` body's media type is plain JSON in the document.
_TITLES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
}


class VtnError(Exception):
    """Base of the errors the VTN raises on purpose."""

    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(VtnError):
    """The request cannot be served as sent."""

    status_code = 400


class Forbidden(VtnError):
    """No valid token, or the client's role or ownership does not allow this."""

    status_code = 403


class NotFound(VtnError):
    """No object of this id."""

    status_code = 404


class Conflict(VtnError):
    """A name that must be unique is taken."""

    status_code = 409


def problem_responses(*status_codes: int) -> dict[int | str, dict]:
    """The ``responses=`` of a route: each error status it can answer, as a problem."""
    return {code: {"model": Problem, "description": _TITLES[code] + "."} for code in status_codes}


def problem(request: Request, status_code: int, detail: str) -> JSONResponse:
    """A problem body for this request."""
    instance = str(request.base_url.replace(path=quote(request.url.path, safe="/")))  # a URI even for a fuzzed path
    body = Problem(title=_TITLES.get(status_code, "Error"), status=status_code, detail=detail, instance=instance)
    return JSONResponse(status_code=status_code, content=body.model_dump(exclude_none=True))


def _field(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if part not in ("body", "query", "path", "header")) or "body"


def install_problem_handlers(app: FastAPI) -> None:
    """Render every error of ``app`` (the VTN's sub-application) as a problem; 422s become the document's 400."""

    @app.exception_handler(VtnError)
    async def _vtn_error(request: Request, exc: VtnError) -> JSONResponse:
        return problem(request, exc.status_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        shown = "; ".join(f"{_field(tuple(e.get('loc', ())))}: {e.get('msg', '')}" for e in errors[:5])
        return problem(request, 400, f"invalid request: {shown}" if shown else "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("OpenADR 3 VTN: %s %s failed", request.method, request.url.path)
        return problem(request, 500, "the VTN failed to serve this request; its log says why")
