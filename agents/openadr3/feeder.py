"""The VTN's part in the simulation: the feeder's program, external VENs as agents, commands as events, webhooks.

What travels in which OpenADR object (README "OpenADR 3 (VTN)" has the same table for users):

- One program per feeder, ``FEEDER_PROGRAM_NAME``, made by the VTN at start-up (and again should a client
  delete it), with one standing event, ``TELEMETRY_EVENT_NAME``, whose report descriptors ask each VEN for
  its readings. A VEN reports against that event.
- A VEN takes part with a resource whose ``attributes`` name its transformer (``TRANSFORMER_ID``) and, on a
  network, its bus (``BUS``). It is then an agent of ``agent_type`` ``ven`` with the id ``{venName}.{resourceName}``.
- Its report's latest interval gives, in kW: ``USAGE`` or ``DEMAND`` = its net power (> 0 imports, < 0 exports);
  ``UP_REGULATION_AVAILABLE`` = how far it could lower its net power, ``DOWN_REGULATION_AVAILABLE`` = how far
  it could raise it (both >= 0; unreported: 0, so the planners leave it alone). The planners see these as
  ``shed_load`` and ``curtail_solar`` headroom.
- A command for it becomes an event of one interval at the cycle's simulated time, lasting one step, targeted
  at its VEN_NAME and RESOURCE_NAME: ``DISPATCH_SETPOINT_RELATIVE`` = the signed shift of its net power in kW
  (``shed_load`` -x, ``curtail_solar`` +x), with ``IMPORT_CAPACITY_LIMIT`` (when it imports and is told to
  lower) or ``EXPORT_CAPACITY_LIMIT`` (when it exports and is told to raise) = the limit that shift means.
  The event asks for a ``DELTA_USAGE`` report: the shift it applied, in kW.
- A cycle waits for a report from each VEN received since the cycle before, at most ``--ven-report-timeout-s``;
  a VEN without one is unreachable for that cycle, like an agent that does not answer ``/simulate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from agents.common.errors import PeerUnavailableError
from agents.cycle.peers import PeerCallError
from agents.cycle.registry import now
from agents.openadr3.clients import Client, Role
from agents.openadr3.problems import BadRequest
from agents.openadr3.vtn import Caller
from models.openadr3 import Event, Program
from models.schemas import AgentRecord, AgentStatus, AgentType, CurtailAction, Flexibility

if TYPE_CHECKING:
    from agents.cycle.calls import AgentCalls
    from agents.cycle.registry import Registry
    from agents.openadr3.vtn import Vtn

logger = logging.getLogger(__name__)

FEEDER_PROGRAM_NAME = "feeder-flexibility"
TELEMETRY_EVENT_NAME = "feeder telemetry"
TRANSFORMER_ATTRIBUTE = "TRANSFORMER_ID"
BUS_ATTRIBUTE = "BUS"
NET_POWER_TYPES = ("USAGE", "DEMAND")
LOWER_AVAILABLE = "UP_REGULATION_AVAILABLE"
RAISE_AVAILABLE = "DOWN_REGULATION_AVAILABLE"
DISPATCH = "DISPATCH_SETPOINT_RELATIVE"
APPLIED = "DELTA_USAGE"
#: Units a reading may come in, and the factor to kW.
KW_PER_UNIT = {"KW": 1.0, "W": 1e-3, "MW": 1e3}
#: The owner of the objects the VTN makes itself: no client's id (client ids are configured; this has brackets).
VTN_OWNER = "(vtn)"
#: A step the VEN does not state is one of these.
DEFAULT_STEP_S = 900.0


def to_kw(value: float, units: str | None) -> float:
    """A reading in ``units`` (KW when unstated) as kW."""
    return value * KW_PER_UNIT[(units or "KW").upper()]


def iso_duration(seconds: float) -> str:
    """An ISO 8601 duration of whole seconds (``PT900S``), as OpenADR writes interval lengths."""
    return f"PT{round(seconds)}S"


def duration_s(text: str | None) -> float | None:
    """Seconds in an ISO 8601 duration of days, hours, minutes and seconds (``PT15M``); None when unstated or not
    of that form (months and years have no fixed length)."""
    if not text:
        return None
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", text)
    if match is None:
        return None
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return total or None


def simulated(moment: datetime | None) -> datetime | None:
    """A time from OpenADR (timezone-aware) as the simulation keeps its times: naive, in UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment is not None and moment.tzinfo else moment


def aware(moment: datetime) -> datetime:
    """A simulated time (naive, taken as UTC) as OpenADR writes times: timezone-aware."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def agent_id_of(ven_name: str, resource_name: str) -> str:
    """The agent id a VEN's resource takes part under: ``{venName}.{resourceName}`` (the name alone when both are
    the same, as a home agent run as a VEN names them), in the agent ids' alphabet."""
    name = ven_name if resource_name == ven_name else f"{ven_name}.{resource_name}"
    text = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    return ("_" + text[1:] if text.startswith(".") else text)[:64]


@dataclass(frozen=True)
class Participant:
    """A VEN's resource that names its transformer: an agent on the feeder."""

    agent_id: str
    owner: str
    ven_id: str
    ven_name: str
    resource_id: str
    resource_name: str
    transformer_id: str
    bus: int | None


@dataclass(frozen=True)
class Reading:
    """What a VEN last reported for one resource (kW; flexibility >= 0)."""

    seq: int
    net_power_kw: float
    lower_kw: float
    raise_kw: float
    timestamp: datetime | None
    step_s: float


def _attribute(attributes: list[dict[str, Any]] | None, name: str) -> Any:
    for item in attributes or []:
        if item.get("type") == name and item.get("values"):
            return item["values"][0]
    return None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{where} must be a finite number (kW), not {value!r}")
    return float(value)


def readings_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per resource name, the figures of a report's latest interval: ``net_power_kw``, ``lower_kw``, ``raise_kw``
    (absent when not reported), ``timestamp`` and ``step_s``; BadRequest naming the field when one is not a
    finite number or its units are unknown."""
    units = {d["payloadType"]: d.get("units") for d in report.get("payloadDescriptors") or []}
    for payload_type, unit in units.items():
        if unit is not None and unit.upper() not in KW_PER_UNIT:
            raise BadRequest(f"payloadDescriptors: units {unit!r} of {payload_type} is not one of KW, W, MW")
    found: dict[str, dict[str, Any]] = {}
    for r, resource in enumerate(report.get("resources") or []):
        intervals = resource.get("intervals") or []
        if not intervals:
            continue
        i, latest = max(enumerate(intervals), key=lambda pair: pair[1]["id"])
        figures: dict[str, Any] = {}
        for p, payload in enumerate(latest.get("payloads") or []):
            kind = payload.get("type")
            if kind not in (*NET_POWER_TYPES, LOWER_AVAILABLE, RAISE_AVAILABLE):
                continue
            where = f"resources[{r}].intervals[{i}].payloads[{p}].values"
            if len(payload.get("values") or []) != 1:
                raise BadRequest(f"{where} must hold one number (kW) for {kind}")
            value = to_kw(_number(payload["values"][0], where), units.get(kind))
            if kind in NET_POWER_TYPES:
                figures["net_power_kw"] = value
            elif value < 0:
                raise BadRequest(f"{where}: {kind} is a headroom, >= 0 kW, not {value!r}")
            else:
                figures["lower_kw" if kind == LOWER_AVAILABLE else "raise_kw"] = value
        if "net_power_kw" not in figures:
            continue
        period = latest.get("intervalPeriod") or resource.get("intervalPeriod")
        if period:
            figures["timestamp"] = datetime.fromisoformat(period["start"])
            figures["step_s"] = duration_s(period.get("duration"))
        found[resource["resourceName"]] = figures
    return found


class FeederBridge:
    """The feeder seen through the VTN: which VENs take part, what they report, and their commands as events.

    ``calls`` is the grid agent's client to other agents (webhook notifications and callback probes go through
    it, with its timeouts and TLS); ``registry`` is where the VENs appear as agents.
    """

    def __init__(self, vtn: Vtn, registry: Registry, calls: AgentCalls, base_url: str, grid_agent_id: str) -> None:
        self.vtn = vtn
        self.registry = registry
        self.calls = calls
        self.base_url = base_url.rstrip("/")
        self.grid_agent_id = grid_agent_id
        self.caller = Caller(Client(client_id=VTN_OWNER, client_secret="-", role=Role.bl))
        self.readings: dict[tuple[str, str], Reading] = {}
        self._consumed: dict[str, int] = {}
        self._steps: dict[str, int] = {}
        self._seq = 0
        self._participants: dict[str, Participant] = {}
        self._clashes: set[str] = set()  # VEN resources left out because a REST agent has their id (warned once)
        self.program_id = self.telemetry_event_id = ""
        self._arrived = asyncio.Event()
        self._notifying: set[asyncio.Task] = set()
        self.program_id, self.telemetry_event_id = self.ensure_program()
        vtn.listeners.append(self)

    # -- the program and its standing event -----------------------------------------------------------
    def ensure_program(self) -> tuple[str, str]:
        """(program id, telemetry event id), made when missing (at start-up, or after a client deleted them)."""
        known = self.telemetry_event_id
        if known and self.vtn.store.get("program", self.program_id) and self.vtn.store.get("event", known):
            return self.program_id, known
        program = next(
            (p for _, p in self.vtn.store.all("program") if p["programName"] == FEEDER_PROGRAM_NAME),
            None,
        )
        if program is None:
            program = self.vtn.create(
                "program",
                Program(
                    programName=FEEDER_PROGRAM_NAME,
                    programLongName="Feeder flexibility: the grid agent's coordination cycles as events",
                    retailerName=self.grid_agent_id,
                    payloadDescriptors=[
                        {"payloadType": kind, "units": "KW"}
                        for kind in (DISPATCH, "IMPORT_CAPACITY_LIMIT", "EXPORT_CAPACITY_LIMIT")
                    ],
                ),
                self.caller,
            )
        event = next(
            (
                e
                for _, e in self.vtn.store.all("event")
                if e["programID"] == program["id"] and e.get("eventName") == TELEMETRY_EVENT_NAME
            ),
            None,
        )
        if event is None:
            event = self.vtn.create(
                "event",
                Event(
                    programID=program["id"],
                    eventName=TELEMETRY_EVENT_NAME,
                    reportDescriptors=[
                        {"payloadType": kind, "readingType": "DIRECT_READ", "units": "KW"}
                        for kind in (NET_POWER_TYPES[0], LOWER_AVAILABLE, RAISE_AVAILABLE)
                    ],
                    intervals=[],
                ),
                self.caller,
            )
        self.program_id, self.telemetry_event_id = program["id"], event["id"]
        return self.program_id, self.telemetry_event_id

    # -- the VTN's hooks ------------------------------------------------------------------------------
    def vet(self, kind: str, body: dict[str, Any]) -> None:
        """Refuse (BadRequest, naming the field) a report on the feeder's program whose readings are not numbers."""
        if kind == "report" and body.get("programID") == self.program_id:
            readings_of(body)

    def created(self, kind: str, body: dict[str, Any], owner: str, new: bool = True) -> None:
        """A new or replaced object: a report on the feeder program is a reading; an event is notified."""
        if kind == "report" and body.get("programID") == self.program_id:
            for resource_name, figures in readings_of(body).items():
                self._seq += 1
                self.readings[(owner, resource_name)] = Reading(
                    seq=self._seq,
                    net_power_kw=figures["net_power_kw"],
                    lower_kw=figures.get("lower_kw", 0.0),
                    raise_kw=figures.get("raise_kw", 0.0),
                    timestamp=figures.get("timestamp"),
                    step_s=figures.get("step_s") or DEFAULT_STEP_S,
                )
            self._arrived.set()
        elif kind == "event":
            self._notify(body, "CREATE" if new else "UPDATE")

    async def check_callback(self, url: str, field: str) -> None:
        """Refuse (BadRequest naming ``field``) a callback URL registrations would refuse, or one that does not
        answer HTTP at all within --probe-timeout-s (any HTTP status will do: a webhook need not serve GET)."""
        reason = self.registry.refusal(url) if url.lower().startswith(("http://", "https://")) else "not http(s)"
        if reason is None and self.calls.peers is not None:
            try:
                async with asyncio.timeout(self.registry.settings.probe_timeout_s):
                    await self.calls.peers.get(url, self.registry.settings.probe_timeout_s)
            except TimeoutError:
                reason = f"no answer within {self.registry.settings.probe_timeout_s:g} s"
            except PeerCallError as exc:
                if exc.kind != "http_status":
                    reason = f"{exc.kind}: {exc}"
        if reason is not None:
            raise BadRequest(f"{field} {url!r} cannot be called back: {reason}")

    # -- VENs as agents -------------------------------------------------------------------------------
    def participants(self) -> dict[str, Participant]:
        """Every VEN resource that names its transformer, by agent id."""
        found: dict[str, Participant] = {}
        for owner, ven in self.vtn.store.all("ven"):
            for _, resource in self.vtn.store.all("resource", parent=ven["id"]):
                transformer = _attribute(resource.get("attributes"), TRANSFORMER_ATTRIBUTE)
                if transformer is None:
                    continue
                bus = _attribute(resource.get("attributes"), BUS_ATTRIBUTE)
                agent_id = agent_id_of(ven["venName"], resource["resourceName"])
                found[agent_id] = Participant(
                    agent_id=agent_id,
                    owner=owner,
                    ven_id=ven["id"],
                    ven_name=ven["venName"],
                    resource_id=resource["id"],
                    resource_name=resource["resourceName"],
                    transformer_id=str(transformer),
                    bus=bus if isinstance(bus, int) and not isinstance(bus, bool) and bus >= 0 else None,
                )
        return found

    def sync(self) -> dict[str, Participant]:
        """Put every participating VEN resource in the registry as an agent of type ``ven``; drop the gone ones."""
        participants = self._participants = self.participants()
        records = self.registry.records
        for agent_id in [a for a, r in records.items() if r.agent_type is AgentType.ven and a not in participants]:
            del records[agent_id]
        for p in list(participants.values()):
            url = f"{self.base_url}/vens/{p.ven_id}/resources/{p.resource_id}"
            record = records.get(p.agent_id)
            if record is not None and record.agent_type is not AgentType.ven:  # a REST agent has that id: it stays
                if p.agent_id not in self._clashes:
                    self._clashes.add(p.agent_id)
                    logger.warning(
                        "VEN resource %s/%s is left out: its id %s is a registered %s agent's",
                        p.ven_id,
                        p.resource_id,
                        p.agent_id,
                        record.agent_type.value,
                    )
                del participants[p.agent_id]
                continue
            if record is None:
                records[p.agent_id] = AgentRecord(
                    agent_id=p.agent_id,
                    agent_type=AgentType.ven,
                    url=url,
                    transformer_id=p.transformer_id,
                    bus=p.bus,
                    healthy=False,  # until its first report
                    last_seen=now(),
                )
            else:
                record.url, record.transformer_id, record.bus = url, p.transformer_id, p.bus
        return participants

    async def collect(self, records: list[AgentRecord], timeout_s: float) -> list[AgentStatus | Exception]:
        """Each VEN's status from its report received since the last cycle, waiting at most ``timeout_s`` for
        them all; an exception for each VEN that sent none."""
        self.ensure_program()
        participants = self._participants or self.sync()  # the cycle synced at its start
        deadline = time.monotonic() + timeout_s
        while True:
            fresh = {r.agent_id: self._fresh(participants.get(r.agent_id)) for r in records}
            left = deadline - time.monotonic()
            if all(fresh.values()) or left <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        answers: list[AgentStatus | Exception] = []
        for record in records:
            p, reading = participants.get(record.agent_id), fresh[record.agent_id]
            if p is None or reading is None:
                why = "its resource is gone" if p is None else f"no report of its interval within {timeout_s:g} s"
                answers.append(PeerUnavailableError(record.agent_id, why, self.grid_agent_id))
                continue
            self._consumed[p.agent_id] = reading.seq
            self._steps[p.agent_id] = self._steps.get(p.agent_id, 0) + 1
            answers.append(self._status(p, reading))
        return answers

    def _fresh(self, p: Participant | None) -> Reading | None:
        if p is None:
            return None
        reading = self.readings.get((p.owner, p.resource_name))
        if reading is None or reading.seq <= self._consumed.get(p.agent_id, 0):
            return None
        return reading

    def _status(self, p: Participant, reading: Reading) -> AgentStatus:
        return AgentStatus(
            agent_id=p.agent_id,
            agent_type=AgentType.ven,
            transformer_id=p.transformer_id,
            bus=p.bus,
            step=self._steps[p.agent_id],
            timestamp=simulated(reading.timestamp),
            step_s=reading.step_s,
            net_power_kw=reading.net_power_kw,
            flexibility=Flexibility(shed_load_kw=reading.lower_kw, curtail_solar_kw=reading.raise_kw),
        )

    # -- commands as events ---------------------------------------------------------------------------
    def dispatch(
        self, status: AgentStatus, action: CurtailAction, power_kw: float, start: datetime | None, step_s: float
    ) -> dict[str, Any]:
        """The event that tells a VEN to shift its net power by ``power_kw`` the way ``action`` goes, for one step
        from ``start`` (the cycle's simulated time; now when the feeder has none); answers the event."""
        p = self._participants.get(status.agent_id)  # as of this cycle's sync
        if p is None:
            raise PeerUnavailableError(status.agent_id, "its resource is gone", self.grid_agent_id)
        shift_kw = action.direction * power_kw
        after_kw = status.net_power_kw + shift_kw
        payloads = [{"type": DISPATCH, "values": [shift_kw]}]
        descriptors = [{"payloadType": DISPATCH, "units": "KW"}]
        if shift_kw < 0 < status.net_power_kw:
            payloads.append({"type": "IMPORT_CAPACITY_LIMIT", "values": [max(after_kw, 0.0)]})
            descriptors.append({"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"})
        elif shift_kw > 0 > status.net_power_kw:
            payloads.append({"type": "EXPORT_CAPACITY_LIMIT", "values": [max(-after_kw, 0.0)]})
            descriptors.append({"payloadType": "EXPORT_CAPACITY_LIMIT", "units": "KW"})
        event = Event(
            programID=self.ensure_program()[0],
            eventName=f"{action.value} {power_kw:g} kW for {p.agent_id}",
            priority=0,
            targets=[
                {"type": "VEN_NAME", "values": [p.ven_name]},
                {"type": "RESOURCE_NAME", "values": [p.resource_name]},
            ],
            payloadDescriptors=descriptors,
            reportDescriptors=[{"payloadType": APPLIED, "readingType": "DIRECT_READ", "units": "KW"}],
            intervalPeriod={"start": aware(start) if start else now(), "duration": iso_duration(step_s)},
            intervals=[{"id": 0, "payloads": payloads}],
        )
        return self.vtn.create("event", event, self.caller)

    def cycle_done(self, timestamp: datetime | None, step_s: float) -> None:
        """After a cycle's commands: the telemetry event's ``intervalPeriod`` becomes the next interval, the one whose
        reports the VTN waits for now, so a VEN that steps with the feeder knows that the cycle of its last report is
        over and its events for that interval are out."""
        if timestamp is None:
            return
        _, telemetry_id = self.ensure_program()
        found = self.vtn.store.get("event", telemetry_id)
        if found is None:
            return
        body = dict(found[1])
        start = aware(timestamp) + timedelta(seconds=step_s)
        body["intervalPeriod"] = {"start": start, "duration": iso_duration(step_s)}
        self.vtn.update("event", telemetry_id, found[1], Event.model_validate(body))

    # -- webhooks -------------------------------------------------------------------------------------
    def _notify(self, event: dict[str, Any], operation_name: str) -> None:
        """POST a notification of a new (CREATE) or replaced (UPDATE) event to every subscription of its program that
        asked for that and may see the event; in the background, with the grid agent's call timeout; failures are
        logged."""
        if self.calls.peers is None:
            return
        for owner, subscription in self.vtn.store.all("subscription"):
            if subscription["programID"] != event["programID"] or not self._may_see(owner, event):
                continue
            for operation in subscription["objectOperations"]:
                if "EVENT" not in operation["objects"] or operation_name not in operation["operations"]:
                    continue
                token = operation.get("bearerToken")
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                verb = "POST" if operation_name == "CREATE" else "PUT"
                body = {"objectType": "EVENT", "operation": verb, "object": event}
                task = asyncio.get_running_loop().create_task(self._post(operation["callbackUrl"], body, headers))
                self._notifying.add(task)
                task.add_done_callback(self._notifying.discard)

    def _may_see(self, owner: str, event: dict[str, Any]) -> bool:
        client = self.vtn.tokens.clients.get(owner)
        return client is not None and self.vtn.event_for(event, Caller(client))

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        assert self.calls.peers is not None
        try:
            await self.calls.peers.post(url, body, headers)
        except PeerCallError as exc:
            logger.warning("notifying %s of event %s failed: %s", url, body["object"]["id"], exc)

    async def aclose(self) -> None:
        """Let the notifications in flight finish (each is bounded by the call timeout)."""
        if self._notifying:
            await asyncio.gather(*self._notifying, return_exceptions=True)
