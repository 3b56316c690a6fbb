"""How device agents join the feeder: register with the grid agent, then heartbeat."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time

import httpx
from pydantic import ValidationError

from agents.common.auth import auth_headers
from agents.common.settings import DeviceSettings, StartupError
from agents.common.tls import PLAIN_HTTP_REFUSED, client_ssl_context, plain_http_beyond_loopback
from agents.device.agent import DeviceAgent
from models.schemas import AgentReport, FeederClock

logger = logging.getLogger(__name__)

REFUSED = "%s: the grid agent at %s refused registration (%s); retrying"


def registration_ssl_context(settings: DeviceSettings) -> ssl.SSLContext | None:
    """The TLS context of the client to the grid agent (None without TLS files); StartupError when the files
    cannot be read, or when TLS is on and --grid-url is plain HTTP beyond loopback."""
    if settings.tls_on and plain_http_beyond_loopback(settings.grid_url):
        raise StartupError(f"--grid-url {settings.grid_url}: {PLAIN_HTTP_REFUSED}")
    return client_ssl_context(settings)


def check_vtn_url(settings: DeviceSettings) -> None:
    """StartupError when TLS is on and --vtn-url is plain HTTP beyond loopback."""
    if settings.vtn_url and settings.tls_on and plain_http_beyond_loopback(settings.vtn_url):
        raise StartupError(f"--vtn-url {settings.vtn_url}: {PLAIN_HTTP_REFUSED}")


def vtn_client(settings: DeviceSettings, ssl_context: ssl.SSLContext | None) -> httpx.AsyncClient:
    """With --protocol openadr3, the client to the VTN, with the same TLS as the client to the grid agent (the app
    checked the URL with ``check_vtn_url`` when it was built)."""
    assert settings.vtn_url is not None, "the settings require --vtn-url with --protocol openadr3"
    verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    return httpx.AsyncClient(base_url=settings.vtn_url, timeout=settings.request_timeout_s, verify=verify)


def registration_client(settings: DeviceSettings, ssl_context: ssl.SSLContext | None) -> httpx.AsyncClient:
    """The client to the grid agent, verifying it (and presenting this agent's certificate) with ``ssl_context``."""
    verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    return httpx.AsyncClient(base_url=settings.grid_url, timeout=settings.request_timeout_s, verify=verify)


async def register_once(
    agents: list[DeviceAgent], client: httpx.AsyncClient, base_url: str, headers: dict[str, str]
) -> FeederClock | None:
    """Register (or heartbeat) once; return the feeder's clock from the answer. Raises httpx.HTTPError.

    One agent registers through the contract's ``POST /agents/{agent_id}/status``; a process
    hosting many sends them all in one ``POST /registrations``. Either way the grid agent learns
    the per-agent URL and the process's batch URL, and answers with the feeder's clock, which an
    agent with nothing saved follows before its first step (``DeviceAgent.follow_feeder``).
    """
    reports = [
        AgentReport(
            url=agent.url(base_url, len(agents) == 1), batch_url=base_url, status=agent.current_status()
        ).model_dump(mode="json")
        for agent in agents
    ]
    if len(agents) == 1:
        response = await client.post(f"/agents/{agents[0].agent_id}/status", json=reports[0], headers=headers)
    else:
        response = await client.post("/registrations", json={"reports": reports}, headers=headers)
    response.raise_for_status()
    clock = feeder_clock(response)
    for agent in agents:
        agent.heard_from_grid()
        agent.follow_feeder(clock)
    return clock


def feeder_clock(response: httpx.Response) -> FeederClock | None:
    """The feeder's clock in the grid agent's answer; None when it has none (a new run, or a grid agent of an
    earlier release), or sends one that does not parse (logged)."""
    try:
        found = response.json().get("feeder_clock")
        return None if found is None else FeederClock.model_validate(found)
    except (ValueError, AttributeError, ValidationError) as exc:
        logger.warning("the grid agent's answer at %s has no usable feeder_clock: %s", response.url, exc)
        return None


async def register_forever(
    agents: DeviceAgent | list[DeviceAgent],
    client: httpx.AsyncClient,
    settings: DeviceSettings,
    base_url: str | None = None,
) -> None:
    """Register with the grid agent, then heartbeat (``register_once``); retry with back-off and jitter while
    it is away."""
    agents = [agents] if isinstance(agents, DeviceAgent) else agents
    base_url = base_url or settings.own_url
    delay_s = 0.25
    registered = False
    last_refusal, refusal_told = None, False
    headers = auth_headers()
    who = agents[0].agent_id if len(agents) == 1 else f"{len(agents)} agents at {base_url}"
    answered_at = 0.0  # time.monotonic() of the last heartbeat answered
    while True:
        if registered and all((a.last_grid_contact or 0.0) > answered_at for a in agents):
            # the grid agent has called every one of them since: it knows they are here, a heartbeat would only
            # cost both sides (at 10,000 homes, as much as a fifth of the grid agent's time)
            answered_at = time.monotonic()
            await asyncio.sleep(settings.heartbeat_s)
            continue
        try:
            await register_once(agents, client, base_url, headers)
        except httpx.HTTPStatusError as exc:
            for agent in agents:
                agent.metrics.peer_error(settings.grid_url, exc)
            refusal = f"HTTP {exc.response.status_code}: {exc.response.text[:300]}"
            # Say why once, not every retry; quietly the first time, as the grid agent's probe of a process
            # that has just started may come before it listens, and the retry then succeeds.
            if refusal == last_refusal and not refusal_told:
                logger.warning(REFUSED, who, settings.grid_url, refusal)
                refusal_told = True
            elif refusal != last_refusal:
                logger.info(REFUSED, who, settings.grid_url, refusal)
                refusal_told = False
            last_refusal, registered = refusal, False
            await asyncio.sleep(delay_s * random.uniform(0.8, 1.2))
            delay_s = min(delay_s * 2, settings.heartbeat_s)
            continue
        except httpx.HTTPError as exc:
            for agent in agents:
                agent.metrics.peer_error(settings.grid_url, exc)
                agent.check_fail_safe()
            if registered:
                logger.warning("%s: lost the grid agent at %s (%s); retrying", who, settings.grid_url, exc)
            registered = False
            await asyncio.sleep(delay_s * random.uniform(0.8, 1.2))
            delay_s = min(delay_s * 2, settings.heartbeat_s)
            continue
        answered_at = time.monotonic()
        if not registered:
            logger.info("%s: registered with the grid agent at %s", who, settings.grid_url)
        registered, delay_s, last_refusal, refusal_told = True, 0.25, None, False
        await asyncio.sleep(settings.heartbeat_s)
