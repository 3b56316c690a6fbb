"""Drives the grid agent's VTN with the ``openadr3-client`` package, as software no one here wrote would.

Runs under Python 3.12 in the virtual environment the OpenADR tests make (tests/requirements-openadr3-client.txt);
it imports nothing of this project. Each subcommand prints one JSON object per line on stdout, for the test to read:

- ``handshake``: a business-logic client creates a program and an event for a VEN; two VEN clients register a
  VEN and a resource each on a transformer; the first reports its net power, the grid agent runs a cycle, the
  VEN reads its events and reports what it applied; it then tries to read the other VEN (a 403).
- ``run``: a VEN that registers on a transformer and, through ``--cycles`` cycles, reports its net power and
  headroom, has the grid agent run the cycle, reads the events aimed at it and follows them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import UTC, datetime, timedelta

import requests
from openadr3_client._models.common.interval import Interval
from openadr3_client._models.common.interval_period import IntervalPeriod
from openadr3_client.bl.http_factory import BusinessLogicHttpClientFactory
from openadr3_client.oadr301._vtn.interfaces.filters import PaginationFilter
from openadr3_client.oadr301.models.event.event import NewEvent
from openadr3_client.oadr301.models.event.event_payload import EventPayload, EventPayloadType
from openadr3_client.oadr301.models.program.program import NewProgram
from openadr3_client.oadr301.models.report.report import NewReport, ReportResource
from openadr3_client.oadr301.models.report.report_payload import ReportPayload, ReportPayloadType
from openadr3_client.oadr301.models.ven.resource import NewResource
from openadr3_client.oadr301.models.ven.ven import NewVen
from openadr3_client.ven.http_factory import VirtualEndNodeHttpClientFactory
from openadr3_client.version import OADRVersion

os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the tests' VTN is plain HTTP on loopback

FEEDER_PROGRAM_NAME = "feeder-flexibility"
TELEMETRY_EVENT_NAME = "feeder telemetry"
STEP = timedelta(minutes=15)
START = datetime(2025, 6, 1, 16, 0, tzinfo=UTC)


def say(**fields: object) -> None:
    print(json.dumps(fields, default=str), flush=True)


def _client_options(vtn: str, client_id: str, secret: str) -> dict:
    """What either kind of client needs: the VTN, the credentials and its token endpoint, OpenADR 3.0.1."""
    return {
        "vtn_base_url": vtn,
        "client_id": client_id,
        "client_secret": secret,
        "token_url": f"{vtn}/auth/token",
        "allow_insecure_http": True,
        "version": OADRVersion.OADR_301,
    }


def ven_client(vtn: str, client_id: str, secret: str):
    return VirtualEndNodeHttpClientFactory.create_http_ven_client(**_client_options(vtn, client_id, secret))


def bl_client(vtn: str, client_id: str, secret: str):
    return BusinessLogicHttpClientFactory.create_http_bl_client(**_client_options(vtn, client_id, secret))


def feeder_program(ven):
    """(program id, telemetry event id) of the grid agent's feeder program."""
    (program,) = [
        p for p in ven.programs.get_programs(target=None, pagination=None) if p.program_name == FEEDER_PROGRAM_NAME
    ]
    events = ven.events.get_events(target=None, pagination=None, program_id=program.id)
    (telemetry,) = [e for e in events if e.event_name == TELEMETRY_EVENT_NAME]
    return program.id, telemetry.id


def join(ven, ven_name: str, resource_name: str, transformer: str):
    """A VEN and one resource whose attributes name its transformer."""
    created = ven.vens.create_ven(new_ven=NewVen(ven_name=ven_name))
    resource = ven.vens.create_ven_resource(
        ven_id=created.id,
        new_resource=NewResource(
            resource_name=resource_name,
            venID=created.id,
            attributes=({"type": "TRANSFORMER_ID", "values": [transformer]},),
        ),
    )
    return created, resource


def report(ven, program_id: str, event_id: str, client_name: str, resource: str, start, payloads) -> object:
    """Post a report of one interval of ``payloads`` ((type, kW) pairs)."""
    interval = Interval[ReportPayload](
        id=0,
        interval_period=IntervalPeriod(start=start, duration=STEP) if start else None,
        payloads=tuple(ReportPayload(type=ReportPayloadType(kind), values=(float(kw),)) for kind, kw in payloads),
    )
    return ven.reports.create_report(
        new_report=NewReport(
            programID=program_id,
            eventID=event_id,
            client_name=client_name,
            resources=(ReportResource(resource_name=resource, intervals=(interval,)),),
        )
    )


def coordinate(grid: str) -> dict:
    answer = requests.post(f"{grid}/coordinate", timeout=30)
    answer.raise_for_status()
    return answer.json()


def dispatch_kw(event) -> float:
    """The event's DISPATCH_SETPOINT_RELATIVE, kW (0 when it has none)."""
    return sum(
        float(payload.values[0])
        for interval in event.intervals
        for payload in interval.payloads
        if payload.type == EventPayloadType.DISPATCH_SETPOINT_RELATIVE
    )


def handshake(args: argparse.Namespace) -> None:
    bl = bl_client(args.vtn, args.bl_id, args.bl_secret)
    program = bl.programs.create_program(new_program=NewProgram(program_name="study-evening-peak"))
    mine, theirs = (
        ven_client(args.vtn, args.ven_id, args.ven_secret),
        ven_client(args.vtn, args.other_id, args.other_secret),
    )
    join(mine, "ven_a", "site", args.transformer)
    ven_b, _ = join(theirs, "ven_b", "site", args.transformer)
    bl.events.create_event(
        new_event=NewEvent(
            programID=program.id,
            event_name="study: evening peak",
            targets=({"type": "VEN_NAME", "values": ["ven_a"]},),
            intervals=(
                Interval[EventPayload](
                    id=0,
                    interval_period=IntervalPeriod(start=START, duration=STEP),
                    payloads=(EventPayload(type=EventPayloadType.IMPORT_CAPACITY_LIMIT, values=(5.0,)),),
                ),
            ),
        )
    )
    say(step="program", program_id=program.id)
    feeder_id, telemetry_id = feeder_program(mine)
    report(
        mine,
        feeder_id,
        telemetry_id,
        "ven_a",
        "site",
        START,
        [("USAGE", args.net_kw), ("UP_REGULATION_AVAILABLE", 10.0)],
    )
    report(theirs, feeder_id, telemetry_id, "ven_b", "site", START, [("USAGE", 1.0)])
    result = coordinate(args.grid)
    say(step="cycle", result=result)
    events = mine.events.get_events(target=None, pagination=None, program_id=None)
    say(
        step="events",
        events=[
            {"id": e.id, "name": e.event_name, "program": e.program_id, "dispatch_kw": dispatch_kw(e)} for e in events
        ],
    )
    (dispatch,) = [e for e in events if e.program_id == feeder_id and dispatch_kw(e)]
    posted = report(mine, feeder_id, dispatch.id, "ven_a", "site", START, [("DELTA_USAGE", dispatch_kw(dispatch))])
    say(step="report", report=json.loads(posted.model_dump_json(by_alias=True)))
    say(step="event", event=json.loads(dispatch.model_dump_json(by_alias=True)))
    try:
        mine.vens.get_ven_by_id(ven_id=ven_b.id)
        say(step="other_ven", status=200)
    except requests.HTTPError as exc:
        say(step="other_ven", status=exc.response.status_code)
    try:
        theirs.events.get_event_by_id(event_id=dispatch.id)
        say(step="other_event", status=200)
    except requests.HTTPError as exc:
        say(step="other_event", status=exc.response.status_code)


def run(args: argparse.Namespace) -> None:
    """A VEN whose household draws an evening peak (``--peak-kw`` at its top), of which ``--flex-kw`` can wait."""
    ven = ven_client(args.vtn, args.ven_id, args.ven_secret)
    join(ven, args.ven_name, "site", args.transformer)
    feeder_id, telemetry_id = feeder_program(ven)
    fetched = 0  # the program's events read so far: the VTN lists them oldest first, at most 50 a page
    for k in range(args.cycles):
        start = START + k * STEP
        base_kw = args.base_kw + (args.peak_kw - args.base_kw) * max(0.0, math.sin(math.pi * k / args.cycles)) ** 2
        flex_kw = min(args.flex_kw, base_kw)
        report(
            ven,
            feeder_id,
            telemetry_id,
            args.ven_name,
            "site",
            start,
            [("USAGE", base_kw), ("UP_REGULATION_AVAILABLE", flex_kw)],
        )
        result = coordinate(args.grid)
        events = []
        while True:
            page = ven.events.get_events(
                target=None, pagination=PaginationFilter(skip=fetched, limit=50), program_id=feeder_id
            )
            events += page
            fetched += len(page)
            if len(page) < 50:
                break
        ours = [e for e in events if e.interval_period and e.interval_period.start == start]
        shift_kw = sum(dispatch_kw(e) for e in ours)
        applied_kw = max(shift_kw, -flex_kw)  # it follows the event as far as its flexibility goes
        for event in ours:
            report(ven, feeder_id, event.id, args.ven_name, "site", start, [("DELTA_USAGE", applied_kw)])
        say(
            cycle=k + 1,
            base_kw=base_kw,
            net_kw=base_kw + applied_kw,
            events=[e.id for e in ours],
            shift_kw=shift_kw,
            result=result,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["handshake", "run"])
    parser.add_argument("--vtn", required=True)
    parser.add_argument("--grid", required=True)
    parser.add_argument("--transformer", default="T1")
    parser.add_argument("--bl-id", default="bl_client")
    parser.add_argument("--ven-id", default="ven_1")
    parser.add_argument("--other-id", default="ven_2")
    parser.add_argument("--ven-name", default="ven_a")
    parser.add_argument("--net-kw", type=float, default=20.0)
    parser.add_argument("--cycles", type=int, default=96)
    parser.add_argument("--base-kw", type=float, default=4.0)
    parser.add_argument("--peak-kw", type=float, default=22.0)
    parser.add_argument("--flex-kw", type=float, default=8.0)
    args = parser.parse_args()
    args.bl_secret = os.environ.get("BL_SECRET", "")
    args.ven_secret = os.environ.get("VEN_SECRET", "")
    args.other_secret = os.environ.get("OTHER_SECRET", "")
    {"handshake": handshake, "run": run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
