"""How device agents join the feeder: register with the grid agent, then heartbeat."""

from __future__ import annotations

import asyncio
import logging
import random

import httpx

from agents.common.auth import auth_headers
from agents.common.settings import DeviceSettings
from agents.device.agent import DeviceAgent
from models.schemas import AgentReport

logger = logging.getLogger(__name__)


async def register_forever(
    agents: DeviceAgent | list[DeviceAgent], client: httpx.AsyncClient, settings: DeviceSettings, base_url: str | None = None
) -> None:
    """Register with the grid agent, then heartbeat; retry with back-off and jitter while it is away.

    One agent registers through the contract's ``POST /agents/{agent_id}/status``; a process
    hosting many sends them all in one ``POST /registrations``. Either way the grid agent learns
    the per-agent URL and the process's batch URL.
    """
    agents = [agents] if isinstance(agents, DeviceAgent) else agents
    base_url = base_url or settings.own_url
    delay_s = 0.25
    registered = False
    last_refusal = None
    headers = auth_headers()
    who = agents[0].agent_id if len(agents) == 1 else f"{len(agents)} agents at {base_url}"
    while True:
        try:
            reports = [
                AgentReport(url=agent.url(base_url, len(agents) == 1), batch_url=base_url, status=agent.status()).model_dump(mode="json")
                for agent in agents
            ]
            if len(agents) == 1:
                response = await client.post(f"/agents/{agents[0].agent_id}/status", json=reports[0], headers=headers)
            else:
                response = await client.post("/registrations", json={"reports": reports}, headers=headers)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            for agent in agents:
                agent.metrics.peer_error(settings.grid_url, exc)
            refusal = f"HTTP {exc.response.status_code}: {exc.response.text[:200]}"
            if refusal != last_refusal:  # say why once, not every retry
                logger.warning("%s: the grid agent at %s refused registration (%s); retrying", who, settings.grid_url, refusal)
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
        for agent in agents:
            agent.heard_from_grid()
        if not registered:
            logger.info("%s: registered with the grid agent at %s", who, settings.grid_url)
        registered, delay_s, last_refusal = True, 0.25, None
        await asyncio.sleep(settings.heartbeat_s)
