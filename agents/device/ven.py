"""A device agent as an OpenADR 3 VEN (``--protocol openadr3``): it steps with the feeder and takes its commands
from the VTN's events instead of ``POST /curtail``.

It joins once: a token from ``/auth/token`` (client id from ``--openadr3-client-id``, secret from
``OPENADR3_CLIENT_SECRET``), its VEN (``venName`` = its agent id) and one resource of the same name whose attributes
name its transformer and bus, so the grid agent lists it as agent ``{agent_id}`` of type ``ven``. Then, each
interval:

1. it steps (as ``/simulate`` would) and reports its net power (``USAGE``) and how far it could lower and raise it
   (``UP_REGULATION_AVAILABLE``, ``DOWN_REGULATION_AVAILABLE``) against the feeder program's telemetry event;
2. it waits until the telemetry event asks for a later interval: the cycle of its report is over;
3. it follows the events for its interval: a ``DISPATCH_SETPOINT_RELATIVE`` of -x kW becomes ``discharge_battery``,
   then ``shed_load`` for what the battery could not do; +x kW ``charge_battery``, then ``curtail_solar``; and it
   reports the shift it applied (``DELTA_USAGE``, kW) against each event.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from typing import Any

import httpx

from agents.common.errors import AgentError
from agents.common.settings import DeviceSettings, StartupError
from agents.device.agent import DeviceAgent
from models.schemas import AgentStatus, CurtailAction, CurtailCommand

logger = logging.getLogger(__name__)

FEEDER_PROGRAM_NAME = "feeder-flexibility"
TELEMETRY_EVENT_NAME = "feeder telemetry"
DISPATCH = "DISPATCH_SETPOINT_RELATIVE"
#: The order in which a shift of net power is served: lowering by the battery first, then the load; raising by
#: the battery first, then the solar.
SERVED_BY = {
    -1: (CurtailAction.discharge_battery, CurtailAction.shed_load),
    1: (CurtailAction.charge_battery, CurtailAction.curtail_solar),
}
#: How often it asks the VTN whether the cycle is over.
POLL_S = 0.05
#: Events per page (the document's largest ``limit``).
PAGE = 50


def client_secret_from_env() -> str:
    """The VEN's client secret, from ``OPENADR3_CLIENT_SECRET`` only (never a flag, never logged)."""
    secret = os.environ.get("OPENADR3_CLIENT_SECRET")
    if not secret:
        raise StartupError("--protocol openadr3 needs the client secret in OPENADR3_CLIENT_SECRET")
    return secret


def utc(moment: datetime) -> str:
    """A simulated time (naive, taken as UTC) as OpenADR writes it."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat().replace("+00:00", "Z")


class VtnError(Exception):
    """The VTN answered with an error, or not at all."""


class Vtn:
    """Calls to the VTN with a bearer token, fetched again when it is refused."""

    def __init__(self, client: httpx.AsyncClient, client_id: str, client_secret: str) -> None:
        self.client = client
        self.client_id = client_id
        self._secret = client_secret
        self._token: str | None = None

    async def _fetch_token(self) -> str:
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._secret}
        try:
            response = await self.client.post("auth/token", data=form)
        except httpx.HTTPError as exc:  # the VTN not up yet, or a wrong --vtn-url: the VEN retries
            raise VtnError(f"POST auth/token: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise VtnError(f"POST auth/token answered {response.status_code} (wrong client id or secret?)")
        return response.json()["access_token"]

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One call; its JSON answer, or VtnError."""
        for attempt in range(2):
            if self._token is None:
                self._token = await self._fetch_token()
            headers = {"Authorization": f"Bearer {self._token}"}
            try:
                response = await self.client.request(method, path, json=body, params=params or None, headers=headers)
            except httpx.HTTPError as exc:
                raise VtnError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if response.status_code == 403 and attempt == 0:  # an expired token (or a restarted VTN): once more
                self._token = None
                continue
            if response.status_code >= 400:
                raise VtnError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
            return response.json()
        raise AssertionError("unreachable: the loop returns or raises")


class DeviceVen:
    """One device agent taking part through the VTN; ``run`` is its whole life."""

    def __init__(self, agent: DeviceAgent, settings: DeviceSettings, vtn: Vtn) -> None:
        self.agent = agent
        self.settings = settings
        self.vtn = vtn
        self.name = agent.agent_id
        self.program_id = ""
        self.telemetry_id = ""
        self.offset = 0  # events of the program fetched so far
        self.pending: AgentStatus | None = None  # a step not yet reported

    async def join(self) -> None:
        """Its VEN and resource (made if missing, brought up to date if its transformer moved), and the program."""
        attributes = [{"type": "TRANSFORMER_ID", "values": [self.settings.transformer_id]}]
        if self.settings.bus is not None:
            attributes.append({"type": "BUS", "values": [self.settings.bus]})
        vens = await self.vtn.call("GET", "vens", venName=self.name)
        ven = vens[0] if vens else await self.vtn.call("POST", "vens", {"venName": self.name})
        resource = {"resourceName": self.name, "attributes": attributes}
        found = await self.vtn.call("GET", f"vens/{ven['id']}/resources", resourceName=self.name)
        if not found:
            await self.vtn.call("POST", f"vens/{ven['id']}/resources", resource)
        elif found[0].get("attributes") != attributes:
            await self.vtn.call("PUT", f"vens/{ven['id']}/resources/{found[0]['id']}", resource)
        programs = await self.vtn.call("GET", "programs")
        (program,) = [p for p in programs if p["programName"] == FEEDER_PROGRAM_NAME]
        events = await self.vtn.call("GET", "events", programID=program["id"])
        (telemetry,) = [e for e in events if e.get("eventName") == TELEMETRY_EVENT_NAME]
        self.program_id, self.telemetry_id = program["id"], telemetry["id"]
        logger.info("%s: joined the VTN at %s as VEN %s", self.name, self.settings.vtn_url, ven["id"])

    async def report(self, event_id: str, status: AgentStatus, payloads: list[tuple[str, float]]) -> None:
        interval: dict[str, Any] = {"id": 0, "payloads": [{"type": kind, "values": [kw]} for kind, kw in payloads]}
        if status.timestamp is not None:
            interval["intervalPeriod"] = {"start": utc(status.timestamp), "duration": f"PT{round(status.step_s)}S"}
        body = {
            "programID": self.program_id,
            "eventID": event_id,
            "clientName": self.name,
            "resources": [{"resourceName": self.name, "intervals": [interval]}],
        }
        await self.vtn.call("POST", "reports", body)

    async def step(self) -> AgentStatus:
        """Step (unless a step is still to be reported, after the VTN was away), and report where it left it."""
        status = self.pending = self.pending or self.agent.simulate()
        flexibility = status.flexibility
        await self.report(
            self.telemetry_id,
            status,
            [
                ("USAGE", status.net_power_kw),
                ("UP_REGULATION_AVAILABLE", flexibility.discharge_battery_kw + flexibility.shed_load_kw),
                ("DOWN_REGULATION_AVAILABLE", flexibility.charge_battery_kw + flexibility.curtail_solar_kw),
            ],
        )
        self.pending = None
        return status

    async def wait_for_cycle(self, status: AgentStatus) -> None:
        """Until the telemetry event asks for an interval after this one."""
        mine = utc(status.timestamp) if status.timestamp is not None else None
        while True:
            event = await self.vtn.call("GET", f"events/{self.telemetry_id}")
            self.agent.heard_from_grid()
            start = (event.get("intervalPeriod") or {}).get("start")
            if start is not None and (mine is None or _instant(start) > _instant(mine)):
                return
            await asyncio.sleep(POLL_S)

    async def follow(self, status: AgentStatus, seen: set[str]) -> None:
        """Apply the events for this interval, once each, and report what was applied."""
        if status.timestamp is None:
            return
        mine = _instant(utc(status.timestamp))
        for event in await self.new_events():
            start = (event.get("intervalPeriod") or {}).get("start")
            if event["id"] in seen or start is None or _instant(start) != mine:
                continue
            seen.add(event["id"])
            try:
                shift_kw = sum(
                    float(p["values"][0]) for i in event["intervals"] for p in i["payloads"] if p["type"] == DISPATCH
                )
                applied_kw = self.apply(event["id"], shift_kw)
            except (LookupError, TypeError, ValueError, AgentError) as exc:  # an event it cannot follow: say so
                logger.warning("%s: event %s not followed: %s", self.name, event["id"], exc)
                continue
            await self.report(event["id"], self.agent.current_status(), [("DELTA_USAGE", applied_kw)])

    async def new_events(self) -> list[dict[str, Any]]:
        """The feeder program's events it may see that it has not fetched before, page by page (the VTN lists
        them oldest first)."""
        found: list[dict[str, Any]] = []
        while True:
            page = await self.vtn.call("GET", "events", programID=self.program_id, skip=self.offset, limit=PAGE)
            found += page
            self.offset += len(page)
            if len(page) < PAGE:
                return found

    def apply(self, event_id: str, shift_kw: float) -> float:
        """Shift net power by ``shift_kw`` as the commands of SERVED_BY; answers the signed shift applied."""
        if abs(shift_kw) <= 1e-9:
            return 0.0
        direction = 1 if shift_kw > 0 else -1
        left, applied = abs(shift_kw), 0.0
        for action in SERVED_BY[direction]:
            if left <= 1e-9:
                break
            headroom = self.agent.current_status().flexibility.headroom_kw(action)
            if headroom <= 1e-9:
                continue
            command = CurtailCommand(
                command_id=f"{event_id}-{action.value}", action=action, power_kw=min(left, headroom)
            )
            result = self.agent.curtail(command)
            applied += result.applied_kw
            left -= result.applied_kw
        return direction * applied

    async def run(self) -> None:
        """Join (retrying while the VTN is away), then step with the feeder for as long as the app runs."""
        delay_s, seen = 0.25, set()
        while True:
            try:
                if not self.telemetry_id:
                    await self.join()
                status = await self.step()
                await self.wait_for_cycle(status)
                await self.follow(status, seen)
                delay_s = 0.25
            except (VtnError, ValueError, KeyError) as exc:
                logger.warning("%s: the VTN at %s: %s; retrying", self.name, self.settings.vtn_url, exc)
                self.telemetry_id, self.offset = "", 0
                self.agent.check_fail_safe()
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self.settings.heartbeat_s)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
