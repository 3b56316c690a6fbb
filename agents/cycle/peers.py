"""The grid agent's client for calls to other agents: aiohttp on the network, httpx in process.

The cycle's fan-out is the grid agent's hot path. Measured on this project's 2-core machine
(bench/peer_client.py), aiohttp costs about a quarter of the client CPU of httpx per call, so the
grid agent talks to real agents through aiohttp. Tests hand the grid agent an httpx transport
that routes to in-process apps (ASGITransport), so the same calls run through httpx there.
Both raise the one PeerCallError below, so callers see no difference.

With TLS on (an SSL context given), both verify the agents' certificates against it and present
the grid agent's client certificate, and neither sends anything over plain HTTP beyond loopback
(agents.common.tls states the rule): such a call fails as kind ``insecure`` before a byte is sent.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any, Protocol

import aiohttp
import httpx

from agents.common.server import CLIENT_KEEP_ALIVE_S
from agents.common.tls import PLAIN_HTTP_REFUSED, plain_http_beyond_loopback


class PeerCallError(Exception):
    """A call to another agent failed; ``kind`` is connect, timeout, http_status, protocol or insecure."""

    def __init__(self, kind: str, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code

    @property
    def retryable(self) -> bool:
        """Whether the request certainly never reached the agent, so repeating it is safe."""
        return self.kind == "connect"


class PeerClient(Protocol):
    """POST JSON to another agent and get the answer's bytes back; GET with a timeout of its own (probes)."""

    async def post(self, url: str, body: Any, headers: dict[str, str]) -> bytes: ...

    async def get(self, url: str, timeout_s: float) -> bytes: ...

    async def aclose(self) -> None: ...


class HttpxPeers:
    """Calls through httpx, with any transport (tests route it to in-process apps)."""

    def __init__(
        self,
        timeout_s: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.client = httpx.AsyncClient(timeout=timeout_s, limits=limits, transport=transport, verify=verify)
        self.https_only = ssl_context is not None

    async def post(self, url: str, body: Any, headers: dict[str, str]) -> bytes:
        _refuse_plain_http(url, self.https_only)
        return await self._call(self.client.build_request("POST", url, json=body, headers=headers))

    async def get(self, url: str, timeout_s: float) -> bytes:
        _refuse_plain_http(url, self.https_only)
        try:
            request = self.client.build_request("GET", url, timeout=timeout_s)
        except (httpx.InvalidURL, ValueError) as exc:
            raise PeerCallError("protocol", f"invalid URL: {exc}") from exc
        return await self._call(request)

    async def _call(self, request: httpx.Request) -> bytes:
        url = request.url
        try:
            response = await self.client.send(request)
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

    def __init__(self, timeout_s: float, max_connections: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:  # made on first use, inside the running event loop
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=self.max_connections,
                ssl=self.ssl_context if self.ssl_context is not None else True,
                keepalive_timeout=CLIENT_KEEP_ALIVE_S,  # gives a connection up before the agent would
            )
            self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self.session

    async def post(self, url: str, body: Any, headers: dict[str, str]) -> bytes:
        _refuse_plain_http(url, self.ssl_context is not None)
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        headers = {**headers, "Content-Type": "application/json"}
        return await self._call(url, self._session().post(url, data=data, headers=headers))

    async def get(self, url: str, timeout_s: float) -> bytes:
        _refuse_plain_http(url, self.ssl_context is not None)
        return await self._call(url, self._session().get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)))

    async def _call(self, url: str, request: Any) -> bytes:
        try:
            async with request as response:
                content = await response.read()
        except TimeoutError as exc:
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


def make_peers(
    timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> PeerClient:
    """aiohttp for real agents; httpx when a transport routes calls in process. ``ssl_context``: TLS on."""
    if transport is not None:
        return HttpxPeers(timeout_s, max_connections, transport, ssl_context)
    return AiohttpPeers(timeout_s, max_connections, ssl_context)


async def probe_health(peers: PeerClient, url: str, timeout_s: float) -> None:
    """Check that ``GET {url}/health`` answers ``{"status": "ok"}`` within ``timeout_s``; else PeerCallError.

    The deadline holds whatever the transport (an in-process one enforces no timeouts of its own).
    """
    try:
        async with asyncio.timeout(timeout_s):
            answer = await peers.get(f"{url}/health", timeout_s)
    except TimeoutError as exc:
        raise PeerCallError("timeout", f"no answer within {timeout_s:g} s") from exc
    try:
        ok = json.loads(answer).get("status") == "ok"
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise PeerCallError("protocol", '/health did not answer {"status": "ok"}')


def _refuse_plain_http(url: str, tls_on: bool) -> None:
    if tls_on and plain_http_beyond_loopback(url):
        raise PeerCallError("insecure", f"{url}: {PLAIN_HTTP_REFUSED}")
