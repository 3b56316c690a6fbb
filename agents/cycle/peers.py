"""The grid agent's client for calls to other agents: aiohttp on the network, httpx in process.

The cycle's fan-out is the grid agent's hot path. Measured on this project's 2-core machine
(bench/peer_client.py), aiohttp costs about a quarter of the client CPU of httpx per call, so the
grid agent talks to real agents through aiohttp. Tests hand the grid agent an httpx transport
that routes to in-process apps (ASGITransport), so the same calls run through httpx there.
Both raise the one PeerCallError below, so callers see no difference.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import aiohttp
import httpx


class PeerCallError(Exception):
    """A call to another agent failed; ``kind`` is connect, timeout, http_status or protocol."""

    def __init__(self, kind: str, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code

    @property
    def retryable(self) -> bool:
        """Whether the request certainly never reached the agent, so repeating it is safe."""
        return self.kind == "connect"


class PeerClient(Protocol):
    """POST JSON to another agent and get the answer's bytes back."""

    async def post(self, url: str, body: Any, headers: dict[str, str]) -> bytes: ...

    async def aclose(self) -> None: ...


class HttpxPeers:
    """Calls through httpx, with any transport (tests route it to in-process apps)."""

    def __init__(self, timeout_s: float, max_connections: int, transport: httpx.AsyncBaseTransport | None = None) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.AsyncClient(timeout=timeout_s, limits=limits, transport=transport)

    async def post(self, url: str, body: Any, headers: dict[str, str]) -> bytes:
        try:
            response = await self.client.post(url, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise PeerCallError("timeout", f"timed out ({type(exc).__name__})") from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise PeerCallError("connect", f"{type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise PeerCallError("protocol", f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise PeerCallError("http_status", f"HTTP {response.status_code} from {url}", response.status_code)
        return response.content

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpPeers:
    """Calls through one aiohttp session with a bounded, keep-alive connection pool."""

    def __init__(self, timeout_s: float, max_connections: int) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_connections = max_connections
        self.session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: Any, headers: dict[str, str]) -> bytes:
        if self.session is None:  # made on first use, inside the running event loop
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections)
            self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        try:
            async with self.session.post(url, data=data, headers={**headers, "Content-Type": "application/json"}) as response:
                content = await response.read()
        except asyncio.TimeoutError as exc:
            raise PeerCallError("timeout", "timed out") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ServerDisconnectedError) as exc:
            kind = "connect" if isinstance(exc, aiohttp.ClientConnectorError) else "protocol"
            raise PeerCallError(kind, f"{type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise PeerCallError("protocol", f"{type(exc).__name__}: {exc}") from exc
        if response.status >= 400:
            raise PeerCallError("http_status", f"HTTP {response.status} from {url}", response.status)
        return content

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()


def make_peers(timeout_s: float, max_connections: int, transport: httpx.AsyncBaseTransport | None = None) -> PeerClient:
    """aiohttp for real agents; httpx when a transport routes calls in process."""
    if transport is not None:
        return HttpxPeers(timeout_s, max_connections, transport)
    return AiohttpPeers(timeout_s, max_connections)
