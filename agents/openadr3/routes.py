"""The OpenADR 3.0.1 VTN's routes: one FastAPI sub-application with the document's paths, methods, parameters and
operation ids (specs/openadr3-3.0.1.yaml), each route a thin call into ``agents.openadr3.vtn.Vtn``, which holds
the rules of who may see and write what. (No ``from __future__ import annotations``: FastAPI must read the routes'
annotations, some of them local to the functions that add them, as objects.)"""

import base64
import binascii
from collections.abc import Callable, Iterable
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import Depends, FastAPI, Form, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from agents.openadr3.clients import Tokens
from agents.openadr3.problems import (
    BadRequest,
    Forbidden,
    NotFound,
    install_problem_handlers,
    problem_responses,
)
from agents.openadr3.store import ObjectStore
from agents.openadr3.vtn import BASE_PATH, MAX_LIMIT, Caller, Vtn, dump, targeted
from models.openadr3 import (
    OBJECT_ID_PATTERN,
    AuthError,
    ClientCredentialResponse,
    Event,
    ObjectTypes,
    Program,
    Report,
    Resource,
    Subscription,
    Ven,
)

ObjectIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=OBJECT_ID_PATTERN)]
ObjectIdQuery = Annotated[str | None, Query(min_length=1, max_length=128, pattern=OBJECT_ID_PATTERN)]
TargetType = Annotated[str | None, Query(description="Indicates targeting type, e.g. GROUP")]
TargetValues = Annotated[list[str] | None, Query(description="List of target values, e.g. group names")]
Skip = Annotated[int, Query(ge=0, lt=2**31, description="number of records to skip for pagination.")]
Limit = Annotated[int, Query(ge=0, le=MAX_LIMIT, description="maximum number of records to return.")]

_READ = problem_responses(400, 403, 500)
_READ_ONE = problem_responses(400, 403, 404, 500)
_CREATE = problem_responses(400, 403, 409, 500)
_UPDATE = problem_responses(400, 403, 404, 409, 500)


def _page(items: Iterable[dict[str, Any]], skip: int, limit: int) -> list[dict[str, Any]]:
    return list(items)[skip : skip + limit]


def create_vtn_app(store: ObjectStore, tokens: Tokens) -> FastAPI:
    """The VTN's app: every path of the OpenADR 3.0.1 document, its errors as problems."""
    app = FastAPI(
        title="OpenADR 3 API (VTN of the grid agent)",
        version="3.0.1",
        description="The OpenADR 3.0.1 API; see specs/openadr3-3.0.1.yaml for the official document.",
    )
    vtn = Vtn(store, tokens)
    app.state.vtn = vtn
    install_problem_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="A token from POST /auth/token")

    async def caller_of(
        request: Request, _: Annotated[Any, Depends(bearer)], authorization: Annotated[str | None, Header()] = None
    ) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Forbidden("send Authorization: Bearer <a token from POST /auth/token>")
        client = tokens.client_of(token.strip())
        if client is None:
            raise Forbidden("the bearer token is unknown or expired: get a new one from POST /auth/token")
        return Caller(client)

    Authed = Annotated[Caller, Depends(caller_of)]

    def bl_only(caller: Caller, what: str) -> None:
        if not caller.is_bl:
            raise Forbidden(f"only a business-logic (bl) client may write {what}")

    def ven_only(caller: Caller, what: str) -> None:
        if caller.is_bl:
            raise Forbidden(f"only a VEN client may write {what}")

    _add_token_route(app, tokens)
    _add_program_routes(app, vtn, Authed, bl_only)
    _add_event_routes(app, vtn, Authed, bl_only)
    _add_report_routes(app, vtn, Authed, ven_only)
    _add_subscription_routes(app, vtn, Authed)
    _add_ven_routes(app, vtn, Authed)
    _add_resource_routes(app, vtn, Authed)
    _answer_400_not_422_in_openapi(app)
    return app


def _answer_400_not_422_in_openapi(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route with input; the VTN answers those as the document's 400 problem."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for item in schema["paths"].values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_token_route(app: FastAPI, tokens: Tokens) -> None:
    """``POST /auth/token``: client credentials, as HTTP Basic or in the form body."""
    auth_error = {400: {"model": AuthError, "description": "Bad Request."}, **problem_responses(403, 500)}

    @app.post(
        "/auth/token",
        tags=["Auth"],
        operation_id="fetchToken",
        response_model=ClientCredentialResponse,
        response_model_exclude_none=True,
        responses=auth_error,
    )
    async def fetch_token(
        request: Request,
        grant_type: Annotated[str | None, Form()] = None,
        client_id: Annotated[str | None, Form()] = None,
        client_secret: Annotated[str | None, Form()] = None,
        scope: Annotated[str | None, Form()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Any:
        """Exchange a client's id and secret for a bearer token."""

        def refuse(error: str, description: str) -> JSONResponse:
            return JSONResponse(status_code=400, content={"error": error, "error_description": description})

        if grant_type is None:
            return refuse("invalid_request", "grant_type is missing (client_credentials)")
        if grant_type != "client_credentials":
            return refuse("unsupported_grant_type", "only grant_type client_credentials is served")
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                basic_id, colon, basic_secret = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                colon = ""
            if not colon:
                return refuse("invalid_request", "the Basic credentials are not base64 of client_id:client_secret")
            client_id, client_secret = unquote(basic_id), unquote(basic_secret)  # RFC 6749 2.3.1 form-encodes both
        if not client_id or not client_secret:
            return refuse("invalid_request", "send client_id and client_secret, as HTTP Basic or in the form")
        client = tokens.authenticate(client_id, client_secret)
        if client is None:
            raise Forbidden("unknown client_id or wrong client_secret")
        response = ClientCredentialResponse(access_token=tokens.issue(client), expires_in=int(tokens.ttl_s))
        return JSONResponse(dump(response), headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _add_program_routes(app: FastAPI, vtn: Vtn, Authed: Any, bl_only: Callable) -> None:
    """Programs: everyone reads them, a bl client writes them; programName is unique."""
    common = {"tags": ["programs"], "response_model": Program, "response_model_exclude_none": True}

    @app.get(
        "/programs",
        tags=["programs"],
        operation_id="searchAllPrograms",
        response_model=list[Program],
        response_model_exclude_none=True,
        responses=_READ,
    )
    async def search_all_programs(
        caller: Authed,
        targetType: TargetType = None,
        targetValues: TargetValues = None,
        skip: Skip = 0,
        limit: Limit = MAX_LIMIT,
    ) -> Any:
        """List programs, filtered by target, paged."""
        programs = (p for _, p in vtn.store.all("program") if targeted(p.get("targets"), targetType, targetValues))
        return _page(programs, skip, limit)

    @app.post("/programs", status_code=201, operation_id="createProgram", responses=_CREATE, **common)
    async def create_program(caller: Authed, program: Program) -> Any:
        """Create a program."""
        bl_only(caller, "programs")
        vtn.unique("program", "programName", program.programName)
        return vtn.create("program", program, caller)

    @app.get("/programs/{programID}", operation_id="searchProgramByProgramId", responses=_READ_ONE, **common)
    async def search_program_by_program_id(caller: Authed, programID: ObjectIdPath) -> Any:
        """Fetch a program."""
        return vtn.find("program", programID)[1]

    @app.put("/programs/{programID}", operation_id="updateProgram", responses=_UPDATE, **common)
    async def update_program(caller: Authed, programID: ObjectIdPath, program: Program) -> Any:
        """Replace a program's content."""
        bl_only(caller, "programs")
        old = vtn.find("program", programID)[1]
        vtn.unique("program", "programName", program.programName, except_id=programID)
        return vtn.update("program", programID, old, program)

    @app.delete("/programs/{programID}", operation_id="deleteProgram", responses=_READ_ONE, **common)
    async def delete_program(caller: Authed, programID: ObjectIdPath) -> Any:
        """Delete a program; answers it as it was."""
        bl_only(caller, "programs")
        old = vtn.find("program", programID)[1]
        vtn.store.delete("program", programID)
        return old


def _add_event_routes(app: FastAPI, vtn: Vtn, Authed: Any, bl_only: Callable) -> None:
    """Events: a bl client writes them; a VEN reads those that target it or nobody."""
    common = {"tags": ["events"], "response_model": Event, "response_model_exclude_none": True}

    def readable(event_id: str, caller: Caller) -> dict:
        event = vtn.find("event", event_id)[1]
        if not vtn.event_for(event, caller):
            raise Forbidden(f"event {event_id} targets other VENs")
        return event

    @app.get(
        "/events",
        tags=["events"],
        operation_id="searchAllEvents",
        response_model=list[Event],
        response_model_exclude_none=True,
        responses=_READ,
    )
    async def search_all_events(
        caller: Authed,
        programID: ObjectIdQuery = None,
        targetType: TargetType = None,
        targetValues: TargetValues = None,
        skip: Skip = 0,
        limit: Limit = MAX_LIMIT,
    ) -> Any:
        """List the events the caller may see, filtered by program and target, paged."""
        mine = None if caller.is_bl else vtn.targets_per_ven(caller)
        events = (
            e
            for _, e in vtn.store.all("event")
            if (programID is None or e["programID"] == programID)
            and targeted(e.get("targets"), targetType, targetValues)
            and vtn.event_for(e, caller, mine)
        )
        return _page(events, skip, limit)

    @app.post("/events", status_code=201, operation_id="createEvent", responses=_CREATE, **common)
    async def create_event(caller: Authed, event: Event) -> Any:
        """Create an event in an existing program."""
        bl_only(caller, "events")
        vtn.program_exists(event.programID)
        return vtn.create("event", event, caller)

    @app.get("/events/{eventID}", operation_id="searchEventsByID", responses=_READ_ONE, **common)
    async def search_events_by_id(caller: Authed, eventID: ObjectIdPath) -> Any:
        """Fetch an event."""
        return readable(eventID, caller)

    @app.put("/events/{eventID}", operation_id="updateEvent", responses=_UPDATE, **common)
    async def update_event(caller: Authed, eventID: ObjectIdPath, event: Event) -> Any:
        """Replace an event's content."""
        bl_only(caller, "events")
        old = vtn.find("event", eventID)[1]
        vtn.program_exists(event.programID)
        return vtn.update("event", eventID, old, event)

    @app.delete("/events/{eventID}", operation_id="deleteEvent", responses=_READ_ONE, **common)
    async def delete_event(caller: Authed, eventID: ObjectIdPath) -> Any:
        """Delete an event; answers it as it was."""
        bl_only(caller, "events")
        old = vtn.find("event", eventID)[1]
        vtn.store.delete("event", eventID)
        return old


def _add_report_routes(app: FastAPI, vtn: Vtn, Authed: Any, ven_only: Callable) -> None:
    """Reports: a VEN writes and reads its own; a bl client reads them all."""
    common = {"tags": ["reports"], "response_model": Report, "response_model_exclude_none": True}

    def checked(report: Report) -> None:
        vtn.program_exists(report.programID)
        if vtn.store.get("event", report.eventID) is None:
            raise BadRequest(f"eventID {report.eventID} names no event")

    @app.get(
        "/reports",
        tags=["reports"],
        operation_id="searchAllReports",
        response_model=list[Report],
        response_model_exclude_none=True,
        responses=_READ,
    )
    async def search_all_reports(
        caller: Authed,
        programID: ObjectIdQuery = None,
        eventID: ObjectIdQuery = None,
        clientName: Annotated[str | None, Query()] = None,
        skip: Skip = 0,
        limit: Limit = MAX_LIMIT,
    ) -> Any:
        """List the reports the caller may see, filtered by program, event and client name, paged."""
        reports = (
            r
            for r in vtn.visible("report", caller)
            if (programID is None or r["programID"] == programID)
            and (eventID is None or r["eventID"] == eventID)
            and (clientName is None or r["clientName"] == clientName)
        )
        return _page(reports, skip, limit)

    @app.post("/reports", status_code=201, operation_id="createReport", responses=_CREATE, **common)
    async def create_report(caller: Authed, report: Report) -> Any:
        """Create a report on an event."""
        ven_only(caller, "reports")
        checked(report)
        return vtn.create("report", report, caller)

    @app.get("/reports/{reportID}", operation_id="searchReportsByReportID", responses=_READ_ONE, **common)
    async def search_reports_by_report_id(caller: Authed, reportID: ObjectIdPath) -> Any:
        """Fetch a report."""
        return vtn.owned("report", reportID, caller)

    @app.put("/reports/{reportID}", operation_id="updateReport", responses=_UPDATE, **common)
    async def update_report(caller: Authed, reportID: ObjectIdPath, report: Report) -> Any:
        """Replace a report's content."""
        ven_only(caller, "reports")
        old = vtn.owned("report", reportID, caller)
        checked(report)
        return vtn.update("report", reportID, old, report)

    @app.delete("/reports/{reportID}", operation_id="deleteReport", responses=_READ_ONE, **common)
    async def delete_report(caller: Authed, reportID: ObjectIdPath) -> Any:
        """Delete a report; answers it as it was."""
        ven_only(caller, "reports")
        old = vtn.owned("report", reportID, caller)
        vtn.store.delete("report", reportID)
        return old


def _add_subscription_routes(app: FastAPI, vtn: Vtn, Authed: Any) -> None:
    """Subscriptions: any client writes its own, a bl client all; callback URLs are checked, and the feeder bridge
    (agents.openadr3.feeder) notifies them of events."""
    common = {"tags": ["subscriptions"], "response_model": Subscription, "response_model_exclude_none": True}

    @app.get(
        "/subscriptions",
        tags=["subscriptions"],
        operation_id="searchSubscriptions",
        response_model=list[Subscription],
        response_model_exclude_none=True,
        responses=_READ,
    )
    async def search_subscriptions(
        caller: Authed,
        programID: ObjectIdQuery = None,
        clientName: Annotated[str | None, Query()] = None,
        targetType: TargetType = None,
        targetValues: TargetValues = None,
        objects: Annotated[list[ObjectTypes] | None, Query()] = None,
        skip: Skip = 0,
        limit: Limit = MAX_LIMIT,
    ) -> Any:
        """List the subscriptions the caller may see, filtered, paged."""
        wanted = {o.value for o in objects or []}

        def matches(s: dict) -> bool:
            kinds = {kind for op in s["objectOperations"] for kind in op["objects"]}
            return (
                (programID is None or s["programID"] == programID)
                and (clientName is None or s["clientName"] == clientName)
                and targeted(s.get("targets"), targetType, targetValues)
                and (not wanted or bool(wanted & kinds))
            )

        return _page((s for s in vtn.visible("subscription", caller) if matches(s)), skip, limit)

    @app.post("/subscriptions", status_code=201, operation_id="createSubscription", responses=_CREATE, **common)
    async def create_subscription(caller: Authed, subscription: Subscription) -> Any:
        """Create a subscription to a program's objects (each callback URL must answer)."""
        vtn.program_exists(subscription.programID)
        await vtn.check_callbacks(subscription)
        return vtn.create("subscription", subscription, caller)

    @app.get("/subscriptions/{subscriptionID}", operation_id="searchSubscriptionByID", responses=_READ_ONE, **common)
    async def search_subscription_by_id(caller: Authed, subscriptionID: ObjectIdPath) -> Any:
        """Fetch a subscription."""
        return vtn.owned("subscription", subscriptionID, caller)

    @app.put("/subscriptions/{subscriptionID}", operation_id="updateSubscription", responses=_UPDATE, **common)
    async def update_subscription(caller: Authed, subscriptionID: ObjectIdPath, subscription: Subscription) -> Any:
        """Replace a subscription's content."""
        old = vtn.owned("subscription", subscriptionID, caller)
        vtn.program_exists(subscription.programID)
        await vtn.check_callbacks(subscription)
        return vtn.update("subscription", subscriptionID, old, subscription)

    @app.delete("/subscriptions/{subscriptionID}", operation_id="deleteSubscription", responses=_READ_ONE, **common)
    async def delete_subscription(caller: Authed, subscriptionID: ObjectIdPath) -> Any:
        """Delete a subscription; answers it as it was."""
        old = vtn.owned("subscription", subscriptionID, caller)
        vtn.store.delete("subscription", subscriptionID)
        return old


def _add_ven_routes(app: FastAPI, vtn: Vtn, Authed: Any) -> None:
    """VENs: a VEN client creates and sees its own, a bl client all; venName is unique."""
    common = {"tags": ["vens"], "response_model": Ven, "response_model_exclude_none": True}

    @app.get(
        "/vens",
        tags=["vens"],
        operation_id="searchVens",
        response_model=list[Ven],
        response_model_exclude_none=True,
        responses=_READ,
    )
    async def search_vens(
        caller: Authed,
        venName: Annotated[str | None, Query()] = None,
        targetType: TargetType = None,
        targetValues: TargetValues = None,
        skip: Skip = 0,
        limit: Limit = MAX_LIMIT,
    ) -> Any:
        """List the VENs the caller may see, filtered by name and target, paged."""
        vens = (
            v
            for v in vtn.visible("ven", caller)
            if (venName is None or v["venName"] == venName) and targeted(v.get("targets"), targetType, targetValues)
        )
        return [vtn.with_resources(v) for v in _page(vens, skip, limit)]

    @app.post("/vens", status_code=201, operation_id="createVen", responses=_CREATE, **common)
    async def create_ven(caller: Authed, ven: Ven) -> Any:
        """Create a VEN, owned by the calling client (its resources go to /vens/{venID}/resources)."""
        vtn.unique("ven", "venName", ven.venName)
        return vtn.create("ven", ven, caller, resources=None)

    @app.get("/vens/{venID}", operation_id="searchVenByID", responses=_READ_ONE, **common)
    async def search_ven_by_id(caller: Authed, venID: ObjectIdPath) -> Any:
        """Fetch a VEN with its resources."""
        return vtn.with_resources(vtn.owned("ven", venID, caller))

    @app.put("/vens/{venID}", operation_id="updateVen", responses=_UPDATE, **common)
    async def update_ven(caller: Authed, venID: ObjectIdPath, ven: Ven) -> Any:
        """Replace a VEN's content (not its resources)."""
        old = vtn.owned("ven", venID, caller)
        vtn.unique("ven", "venName", ven.venName, except_id=venID)
        return vtn.with_resources(vtn.update("ven", venID, old, ven, resources=None))

    @app.delete("/vens/{venID}", operation_id="deleteVen", responses=_READ_ONE, **common)
    async def delete_ven(caller: Authed, venID: ObjectIdPath) -> Any:
        """Delete a VEN and its resources; answers it as it was."""
        old = vtn.with_resources(vtn.owned("ven", venID, caller))
        vtn.store.delete("ven", venID)
        return old


def _add_resource_routes(app: FastAPI, vtn: Vtn, Authed: Any) -> None:
    """A VEN's resources: whoever may write the VEN writes them; resourceName is unique within the VEN."""
    common = {"tags": ["vens"], "response_model": Resource, "response_model_exclude_none": True}
    not_found_too = problem_responses(400, 403, 404, 500)

    def resource_of(ven_id: str, resource_id: str, caller: Caller) -> dict:
        vtn.ven_of_resource(ven_id, caller)
        resource = vtn.find("resource", resource_id)[1]
        if resource.get("venID") != ven_id:
            raise NotFound(f"VEN {ven_id} has no resource {resource_id}")
        return resource

    @app.get(
        "/vens/{venID}/resources",
        tags=["vens"],
        operation_id="searchVenResources",
        response_model=list[Resource],
        response_model_exclude_none=True,
        responses=not_found_too,
    )
    async def search_ven_resources(
        caller: Authed,
        venID: ObjectIdPath,
        resourceName: Annotated[str | None, Query()] = None,
        targetType: TargetType = None,
        targetValues: TargetValues = None,
        skip: Skip = 0,
        limit: Limit = MAX_LIMIT,
    ) -> Any:
        """List a VEN's resources, filtered by name and target, paged."""
        vtn.ven_of_resource(venID, caller)
        resources = (
            r
            for _, r in vtn.store.all("resource", parent=venID)
            if (resourceName is None or r["resourceName"] == resourceName)
            and targeted(r.get("targets"), targetType, targetValues)
        )
        return _page(resources, skip, limit)

    @app.post(
        "/vens/{venID}/resources",
        status_code=201,
        operation_id="createResource",
        responses=problem_responses(400, 403, 404, 409, 500),
        **common,
    )
    async def create_resource(caller: Authed, venID: ObjectIdPath, resource: Resource) -> Any:
        """Create a resource of a VEN."""
        vtn.ven_of_resource(venID, caller)
        vtn.unique("resource", "resourceName", resource.resourceName, parent=venID)
        return vtn.create("resource", resource, caller, parent=venID, venID=venID)

    @app.get(
        "/vens/{venID}/resources/{resourceID}", operation_id="searchVenResourceByID", responses=_READ_ONE, **common
    )
    async def search_ven_resource_by_id(caller: Authed, venID: ObjectIdPath, resourceID: ObjectIdPath) -> Any:
        """Fetch a VEN's resource."""
        return resource_of(venID, resourceID, caller)

    @app.put("/vens/{venID}/resources/{resourceID}", operation_id="updateVenResource", responses=_UPDATE, **common)
    async def update_ven_resource(
        caller: Authed, venID: ObjectIdPath, resourceID: ObjectIdPath, resource: Resource
    ) -> Any:
        """Replace a resource's content."""
        old = resource_of(venID, resourceID, caller)
        vtn.unique("resource", "resourceName", resource.resourceName, except_id=resourceID, parent=venID)
        return vtn.update("resource", resourceID, old, resource, venID=venID)

    @app.delete("/vens/{venID}/resources/{resourceID}", operation_id="deleteVenResource", responses=_READ_ONE, **common)
    async def delete_ven_resource(caller: Authed, venID: ObjectIdPath, resourceID: ObjectIdPath) -> Any:
        """Delete a resource; answers it as it was."""
        old = resource_of(venID, resourceID, caller)
        vtn.store.delete("resource", resourceID)
        return old


def mount_vtn(app: FastAPI, state_dir: FilePath, tokens: Tokens) -> Vtn:
    """Mount the VTN on ``app`` at BASE_PATH; answers it (the caller closes its store at shutdown)."""
    vtn_app = create_vtn_app(ObjectStore(state_dir), tokens)
    app.mount(BASE_PATH, vtn_app)
    return vtn_app.state.vtn
