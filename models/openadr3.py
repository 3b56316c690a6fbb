"""OpenADR 3.0.1 objects as Pydantic models, written from the official OpenAPI document (specs/openadr3-3.0.1.yaml).

Field names are the document's own (camelCase, ``URL``, ``client_id``), so a model dumps to the wire as it is.
Strings, integers and booleans are strict (``"1"`` is not a number here); date-times must carry their offset
(RFC 3339, as ``format: date-time`` says); an optional field the document does not mark ``nullable`` may be
left out but not sent as null. ``id``, ``createdDateTime``, ``modificationDateTime`` and
``objectType`` are the VTN's to set: whatever a client sends in them is replaced.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr

#: The document's ``objectID``: URL safe, 1 to 128 characters.
OBJECT_ID_PATTERN = r"^[a-zA-Z0-9_-]*$"
ObjectID = Annotated[str, Field(strict=True, min_length=1, max_length=128, pattern=OBJECT_ID_PATTERN)]
#: The document's ``duration`` (ISO 8601), e.g. ``PT1H``; its pattern needs look-ahead, hence python-re below.
DURATION_PATTERN = (
    r"^(-?)P(?=\d|T\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)([DW]))?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)
Duration = Annotated[str, Field(strict=True, pattern=DURATION_PATTERN, examples=["PT1H"])]


def _not_null(value: object) -> object:
    if value is None:
        raise ValueError("may be left out but not null (the document does not make it nullable)")
    return value


#: An optional field the document does not make ``nullable``: absent is fine, an explicit null is not.
NotNull = BeforeValidator(_not_null)
#: An optional field given by a ``$ref``, which OpenAPI 3.0 cannot mark ``nullable`` (it ignores a $ref's siblings),
#: while the document marks every other optional field of its objects nullable; OpenADR libraries (openadr3-client)
#: send null for each one left unset. Null is taken as absent.
NULL_AS_ABSENT = ("intervalPeriod", "timeZoneOffset", "duration", "randomizeStart")
Name = Annotated[str, Field(strict=True, min_length=1, max_length=128)]
Number = Annotated[float, Field(strict=True)]


class ObjectTypes(str, Enum):
    """Types of objects addressable through the API."""

    PROGRAM = "PROGRAM"
    EVENT = "EVENT"
    REPORT = "REPORT"
    SUBSCRIPTION = "SUBSCRIPTION"
    VEN = "VEN"
    RESOURCE = "RESOURCE"


class _Wire(BaseModel):
    """Unknown fields are ignored (the document allows them); the duration pattern needs Python's re."""

    model_config = ConfigDict(extra="ignore", regex_engine="python-re")


class Point(_Wire):
    """A pair of floats, typically a point on a 2 dimensional grid."""

    x: Number
    y: Number


class ValuesMap(_Wire):
    """One or more values of one type, e.g. ``{"type": "PRICE", "values": [0.17]}``."""

    type: Name
    values: list[StrictBool | StrictInt | Number | StrictStr | Point]


class IntervalPeriod(_Wire):
    """Start, duration and randomization of an interval or a set of them."""

    start: AwareDatetime
    duration: Duration | None = None
    randomizeStart: Duration | None = None


class Interval(_Wire):
    """A temporal window and its payloads; ``id`` is the client's number, not a sequence number."""

    id: Annotated[int, Field(strict=True, ge=-(2**31), lt=2**31)]
    intervalPeriod: IntervalPeriod | None = None
    payloads: list[ValuesMap]


class EventPayloadDescriptor(_Wire):
    """Context to interpret event payload values (units, currency)."""

    objectType: Annotated[Literal["EVENT_PAYLOAD_DESCRIPTOR"] | None, NotNull] = None
    payloadType: Name
    units: StrictStr | None = None
    currency: StrictStr | None = None


class ReportPayloadDescriptor(_Wire):
    """Context to interpret report payload values (reading type, units, accuracy, confidence)."""

    objectType: Annotated[Literal["REPORT_PAYLOAD_DESCRIPTOR"] | None, NotNull] = None
    payloadType: Name
    readingType: StrictStr | None = None
    units: StrictStr | None = None
    accuracy: Number | None = None
    confidence: Annotated[int, Field(strict=True, ge=0, le=100)] | None = None


class ReportDescriptor(_Wire):
    """A report requested from a VEN by an event."""

    payloadType: Name
    readingType: StrictStr | None = None
    units: StrictStr | None = None
    targets: list[ValuesMap] | None = None
    aggregate: StrictBool = False
    startInterval: StrictInt = -1
    numIntervals: StrictInt = -1
    historical: StrictBool = True
    frequency: StrictInt = -1
    repeat: StrictInt = 1


class ProgramDescription(_Wire):
    """A human or machine readable program description."""

    URL: StrictStr


class _VtnObject(_Wire):
    """What the VTN provisions on every top-level object."""

    id: Annotated[ObjectID | None, NotNull] = None
    createdDateTime: Annotated[datetime | None, NotNull] = None
    modificationDateTime: Annotated[datetime | None, NotNull] = None


class Program(_VtnObject):
    """Program metadata from VTN to VEN."""

    objectType: Annotated[Literal["PROGRAM"] | None, NotNull] = None
    programName: Name
    programLongName: StrictStr | None = None
    retailerName: StrictStr | None = None
    retailerLongName: StrictStr | None = None
    programType: StrictStr | None = None
    country: StrictStr | None = None
    principalSubdivision: StrictStr | None = None
    timeZoneOffset: Duration | None = None
    intervalPeriod: IntervalPeriod | None = None
    programDescriptions: list[ProgramDescription] | None = None
    bindingEvents: StrictBool | None = None
    localPrice: StrictBool | None = None
    payloadDescriptors: list[EventPayloadDescriptor | ReportPayloadDescriptor] | None = None
    targets: list[ValuesMap] | None = None


class Event(_VtnObject):
    """A Demand Response request to VENs; ``intervalPeriod``, if present, is the intervals' default."""

    objectType: Annotated[Literal["EVENT"] | None, NotNull] = None
    programID: ObjectID
    eventName: StrictStr | None = None
    priority: Annotated[int, Field(strict=True, ge=0)] | None = None
    targets: list[ValuesMap] | None = None
    reportDescriptors: list[ReportDescriptor] | None = None
    payloadDescriptors: list[EventPayloadDescriptor] | None = None
    intervalPeriod: IntervalPeriod | None = None
    intervals: list[Interval]


class ReportResource(_Wire):
    """Report data of one resource (``AGGREGATED_REPORT``: of more than one)."""

    resourceName: Name
    intervalPeriod: IntervalPeriod | None = None
    intervals: list[Interval]


class Report(_VtnObject):
    """A VEN's report on an event."""

    objectType: Annotated[Literal["REPORT"] | None, NotNull] = None
    programID: ObjectID
    eventID: ObjectID
    clientName: Name
    reportName: StrictStr | None = None
    payloadDescriptors: list[ReportPayloadDescriptor] | None = None
    resources: list[ReportResource]


class ObjectOperation(_Wire):
    """Objects and operations to be notified of, at a callback URL."""

    objects: list[ObjectTypes]
    operations: list[Literal["READ", "CREATE", "UPDATE", "DELETE"]]
    callbackUrl: StrictStr
    bearerToken: StrictStr | None = None


class Subscription(_VtnObject):
    """A client's request to be notified of operations on objects."""

    objectType: Annotated[Literal["SUBSCRIPTION"] | None, NotNull] = None
    clientName: Name
    programID: ObjectID
    objectOperations: list[ObjectOperation]
    targets: list[ValuesMap] | None = None


class Resource(_VtnObject):
    """An energy device or system controlled by a VEN; ``venID`` is set by the VTN from the path."""

    objectType: Annotated[Literal["RESOURCE"] | None, NotNull] = None
    resourceName: Name
    venID: Annotated[ObjectID | None, NotNull] = None
    attributes: list[ValuesMap] | None = None
    targets: list[ValuesMap] | None = None


class Ven(_VtnObject):
    """A client with the ven role; ``resources`` are answered from ``/vens/{venID}/resources``."""

    objectType: Annotated[Literal["VEN"] | None, NotNull] = None
    venName: Name
    attributes: list[ValuesMap] | None = None
    targets: list[ValuesMap] | None = None
    resources: list[Resource] | None = None


class ClientCredentialResponse(_Wire):
    """The answer of ``/auth/token`` (snake case per RFC 6749)."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    scope: str | None = None


class AuthError(_Wire):
    """An RFC 6749 error of ``/auth/token`` (400)."""

    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "invalid_scope",
        "unauthorized_client",
        "unsupported_grant_type",
    ]
    error_description: str | None = None


class Problem(_Wire):
    """The document's error body (from Zalando's problem schema)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
