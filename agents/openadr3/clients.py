"""OpenADR 3 clients (id, secret, role) and the bearer tokens they exchange their credentials for.

Clients come from ``OPENADR3_CLIENTS`` (a JSON list of ``{"client_id", "client_secret", "role"}``) or the file
of ``--openadr3-clients`` with the same content. Secrets are compared in constant time and never logged or
repr'd. Tokens are opaque random strings held in memory with an expiry: a restart asks clients to log in again.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

#: How long a token is good for, in seconds.
TOKEN_TTL_S = 3600


class Role(str, Enum):
    """``bl``: business logic, writes programs and events; ``ven``: a VEN, reads and writes its own objects."""

    bl = "bl"
    ven = "ven"


class Client(BaseModel):
    """One client of the VTN."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: str = Field(min_length=1, max_length=4096)
    client_secret: SecretStr = Field(min_length=1, max_length=4096)
    role: Role


class ClientsError(ValueError):
    """The clients' list cannot be read; the message says where and why (never a secret)."""


def load_clients(file: Path | None) -> dict[str, Client]:
    """The clients of ``file`` if given, else of ``OPENADR3_CLIENTS``; raises ClientsError when neither holds any."""
    if file is not None:
        try:
            source, text = str(file), Path(file).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ClientsError(f"{file}: not a UTF-8 text file (byte {exc.start})") from exc
    else:
        source, text = "OPENADR3_CLIENTS", os.environ.get("OPENADR3_CLIENTS", "")
    if not text.strip():
        raise ClientsError("--openadr3 needs clients: set OPENADR3_CLIENTS or --openadr3-clients FILE")
    try:
        clients = TypeAdapter(list[Client]).validate_json(text)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        raise ClientsError(f"{source}: not a list of clients ({where})") from None
    by_id = {client.client_id: client for client in clients}
    if len(by_id) != len(clients):
        raise ClientsError(f"{source}: a client_id appears twice")
    if not by_id:
        raise ClientsError(f"{source}: the list of clients is empty")
    return by_id


@dataclass
class Tokens:
    """Issues and checks bearer tokens; ``clock`` is ``time.monotonic`` except in tests."""

    clients: dict[str, Client]
    ttl_s: float = TOKEN_TTL_S
    clock: object = time.monotonic
    _issued: dict[str, tuple[Client, float]] = field(default_factory=dict, repr=False)

    def authenticate(self, client_id: str, client_secret: str) -> Client | None:
        """The client whose credentials these are, or None."""
        client = self.clients.get(client_id)
        expected = client.client_secret.get_secret_value() if client else secrets.token_hex(16)
        same = hmac.compare_digest(expected.encode(), client_secret.encode())
        return client if client is not None and same else None

    def issue(self, client: Client) -> str:
        """A new token for ``client``; expired tokens are dropped on the way."""
        now = self.clock()
        self._issued = {token: held for token, held in self._issued.items() if held[1] > now}
        token = secrets.token_urlsafe(32)
        self._issued[token] = (client, now + self.ttl_s)
        return token

    def client_of(self, token: str) -> Client | None:
        """The client a live token was issued to, or None."""
        held = self._issued.get(token)
        if held is None or held[1] <= self.clock():
            return None
        return held[0]
