"""The shared bearer token: the header a client sends and the dependency a server checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Header

from agents.common.errors import UnauthorizedError
from agents.common.settings import agent_token_from_env


def auth_headers() -> dict[str, str]:
    """The Authorization header for calls to other agents, when AGENT_TOKEN is set."""
    token = agent_token_from_env()
    return {"Authorization": f"Bearer {token}"} if token else {}


def require_token_dependency(agent_id: str):
    """A dependency that enforces ``Authorization: Bearer $AGENT_TOKEN`` when the token is set."""
    token = agent_token_from_env()

    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise UnauthorizedError("missing or wrong bearer token", agent_id)

    return check
