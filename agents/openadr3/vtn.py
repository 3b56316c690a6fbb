"""The OpenADR 3.0.1 VTN's rules, over its object store; its routes (``agents.openadr3.routes``) are a FastAPI
sub-application the grid agent mounts at ``/openadr3/3.0.1``.

Who may do what, by role (a stricter reading of the document's scopes, see README "OpenADR 3 (VTN)"):

- ``bl`` (business logic) reads everything, writes programs, events, subscriptions, VENs and resources.
- ``ven`` reads programs and the events that target one of its VENs or resources (or target nobody); writes
  reports, subscriptions, VENs and resources, all of them its own: the VTN ties each object to the client that
  created it, and another VEN's object answers 403 (the document's ``read_all`` scope would let it read them).
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from agents.openadr3.clients import Client, Role, Tokens
from agents.openadr3.problems import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
)
from agents.openadr3.store import ObjectStore
from models.openadr3 import (
    Subscription,
)

#: Where the grid agent mounts the VTN.
BASE_PATH = "/openadr3/3.0.1"
#: The document's upper bound of ``limit``, also our default.
MAX_LIMIT = 50


@dataclass(frozen=True)
class Caller:
    """The authenticated client of a request."""

    client: Client

    @property
    def is_bl(self) -> bool:
        return self.client.role is Role.bl

    @property
    def client_id(self) -> str:
        return self.client.client_id


def now() -> datetime:
    """The VTN's clock, timezone-aware (the OpenADR client library refuses naive date-times)."""
    return datetime.now(UTC)


def dump(obj: BaseModel) -> dict[str, Any]:
    """An object as its JSON body (absent, not null, where the document has no value)."""
    return obj.model_dump(mode="json", exclude_none=True)


def targeted(targets: list[dict[str, Any]] | None, target_type: str | None, target_values: list[str] | None) -> bool:
    """Whether an object's targets match the ``targetType``/``targetValues`` query (no query: everything)."""
    if target_type is None and not target_values:
        return True
    wanted = set(target_values or [])
    for target in targets or []:
        if target_type is not None and target.get("type") != target_type:
            continue
        if not wanted or wanted & {str(value) for value in target.get("values", [])}:
            return True
    return False


class Vtn:
    """The VTN's rules over the object store: ids, times, owners, uniqueness and who may see what."""

    def __init__(self, store: ObjectStore, tokens: Tokens) -> None:
        self.store = store
        self.tokens = tokens
        #: What else hears of objects: each has ``vet(kind, body)`` (raises to refuse one), ``created(kind, body,
        #: owner, new)`` and ``check_callback(url, field)`` (raises BadRequest); the grid agent's feeder is one.
        self.listeners: list[Any] = []

    def _store(self, kind: str, object_id: str, owner: str, body: dict, parent: str | None, new: bool) -> None:
        for listener in self.listeners:
            listener.vet(kind, body)
        if new:
            self.store.insert(kind, object_id, owner, body, parent)
        else:
            self.store.replace(kind, object_id, body)
        for listener in self.listeners:
            listener.created(kind, body, owner, new)

    async def check_callbacks(self, subscription: Subscription) -> None:
        """BadRequest naming the field when a subscription's callback URL cannot be called back."""
        for i, operation in enumerate(subscription.objectOperations):
            for listener in self.listeners:
                await listener.check_callback(operation.callbackUrl, f"objectOperations[{i}].callbackUrl")

    # --- reading and writing objects -------------------------------------------------------------------------
    def create(self, kind: str, obj: BaseModel, caller: Caller, parent: str | None = None, **fixed: Any) -> dict:
        """Store a new object with its server-assigned id, times and type; answer its body."""
        stamp = now()
        object_id = self.store.new_id(kind)
        body = dump(
            obj.model_copy(
                update={
                    "id": object_id,
                    "createdDateTime": stamp,
                    "modificationDateTime": stamp,
                    "objectType": kind.upper(),
                    **fixed,
                }
            )
        )
        self._store(kind, object_id, caller.client_id, body, parent, new=True)
        return body

    def update(self, kind: str, object_id: str, old: dict, obj: BaseModel, **fixed: Any) -> dict:
        """Replace an object's content; its id, creation time and type stay."""
        body = dump(
            obj.model_copy(
                update={
                    "id": object_id,
                    "createdDateTime": datetime.fromisoformat(old["createdDateTime"]),
                    "modificationDateTime": now(),
                    "objectType": kind.upper(),
                    **fixed,
                }
            )
        )
        owner = self.find(kind, object_id)[0]
        self._store(kind, object_id, owner, body, None, new=False)
        return body

    def find(self, kind: str, object_id: str) -> tuple[str, dict]:
        """(owner, body) of an object, or NotFound."""
        found = self.store.get(kind, object_id)
        if found is None:
            raise NotFound(f"no {kind} {object_id}")
        return found

    def owned(self, kind: str, object_id: str, caller: Caller) -> dict:
        """An object the caller may read and write: a bl client any, a VEN its own (else Forbidden)."""
        owner, body = self.find(kind, object_id)
        if not caller.is_bl and owner != caller.client_id:
            raise Forbidden(f"{kind} {object_id} belongs to another client")
        return body

    def visible(self, kind: str, caller: Caller, parent: str | None = None) -> list[dict]:
        """Every object of a kind the caller may list: a bl client all, a VEN its own."""
        return [body for owner, body in self.store.all(kind, parent) if caller.is_bl or owner == caller.client_id]

    def unique(self, kind: str, field: str, value: str, except_id: str | None = None, parent: str | None = None):
        """Conflict when another object of the kind (under ``parent``) has this ``field`` value."""
        for _, body in self.store.all(kind, parent):
            if body.get(field) == value and body["id"] != except_id:
                raise Conflict(f"a {kind} with {field} {value!r} exists already: {body['id']}")

    def program_exists(self, program_id: str) -> None:
        if self.store.get("program", program_id) is None:
            raise BadRequest(f"programID {program_id} names no program")

    # --- targeting -----------------------------------------------------------------------------------------------
    def event_for(self, event: dict, caller: Caller, mine: list[list[dict[str, Any]]] | None = None) -> bool:
        """Whether the caller may see an event: a bl client any, a VEN an untargeted one or one aimed at one of its
        VENs: every target of the event (VEN_NAME, RESOURCE_NAME, a group...) names that VEN or its resources."""
        if caller.is_bl or not event.get("targets"):
            return True
        mine = self.targets_per_ven(caller) if mine is None else mine
        return any(
            all(
                any(targeted([target], own["type"], [str(v) for v in own["values"]]) for own in ven)
                for target in event["targets"]
            )
            for ven in mine
        )

    def targets_per_ven(self, caller: Caller) -> list[list[dict[str, Any]]]:
        """For each of the caller's VENs, what it answers to (its name, its resources' names, and their targets)."""
        return [self._targets_of(ven, caller) for ven in self.visible("ven", caller)]

    def _targets_of(self, ven: dict, caller: Caller) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = [{"type": "VEN_NAME", "values": [ven["venName"]]}]
        targets.extend(ven.get("targets") or [])
        for resource in self.visible("resource", caller, parent=ven["id"]):
            targets.append({"type": "RESOURCE_NAME", "values": [resource["resourceName"]]})
            targets.extend(resource.get("targets") or [])
        return targets

    def ven_of_resource(self, ven_id: str, caller: Caller) -> dict:
        """The VEN in a resource path, which the caller must own (or be bl)."""
        return self.owned("ven", ven_id, caller)

    def with_resources(self, ven: dict) -> dict:
        resources = [body for _, body in self.store.all("resource", parent=ven["id"])]
        return {**ven, "resources": resources} if resources else ven
