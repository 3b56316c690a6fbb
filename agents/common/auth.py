"""The shared bearer token: the header a client sends and the dependency a server checks."""

from __future__ import annotations

import hmac
import os
from typing import Annotated

from fastapi import Header

from agents.common.errors import UnauthorizedError
from agents.common.settings import agent_token_from_env

#: Set to 1 by the coordinator for the agents it starts when it made up their token (AGENT_TOKEN unset).
GENERATED_TOKEN_ENV = "AGENT_TOKEN_GENERATED"


def refusal_message(generated: bool) -> str:
    """What a 401 says: how to get a token that works, never the token itself."""
    if generated:
        return (
            "missing or wrong bearer token: run_distributed_simulation.py started this agent with a random token of"
            " its own. To call it yourself, stop the coordinator, set AGENT_TOKEN before starting it again"
            " (export AGENT_TOKEN=<a secret of yours>) and send Authorization: Bearer $AGENT_TOKEN"
        )
    return "missing or wrong bearer token: send Authorization: Bearer <the AGENT_TOKEN this agent was started with>"


def auth_headers() -> dict[str, str]:
    """The Authorization header for calls to other agents, when AGENT_TOKEN is set."""
    token = agent_token_from_env()
    return {"Authorization": f"Bearer {token}"} if token else {}


def require_token_dependency(agent_id: str):
    """A dependency that enforces ``Authorization: Bearer $AGENT_TOKEN`` when the token is set."""
    token = agent_token_from_env()
    message = refusal_message(os.environ.get(GENERATED_TOKEN_ENV) == "1")

    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise UnauthorizedError(message, agent_id)

    return check
