"""CloudEvents ingest as OpenMeter serves it: `POST /api/v1/events`.

The body is one CloudEvent (`application/cloudevents+json`), a JSON array of them
(`application/cloudevents-batch+json`), or either as `application/json`. Each event is
CloudEvents 1.0 in its JSON format: `specversion` "1.0", `id`, `source`, `type`, `subject`,
optional `time` (RFC 3339; the time it arrives when absent), `data` (an object) and
`datacontenttype` (only `application/json`). Mapped by `chalicelib.domain.ingest_mapping`:
`subject` is the customer (the organization's ORG-* id or UUID, or an alias), `type` names the
meter, `data` holds the quantity (the meter's `value_property`, else `value`) and metadata.

Answers as OpenMeter's: `204` with no body when every event is stored or is a duplicate. Duplicates
are by (`source`, `id`) within the service's 48-hour idempotency window and are dropped silently,
whatever their payload. A malformed request or event is a `400` and nothing is stored; an event the
catalog refuses is a `400` naming it, the others being stored. Errors are problem details (RFC 7807,
`application/problem+json`). A batch holds at most 100 events.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from chalice.app import Blueprint
from pydantic import BaseModel, Field

from chalicelib.api.http import NO_BODY, Call, Reply, endpoint
from chalicelib.api.schemas import Schema
from chalicelib.dialects import ingest_mapping
from chalicelib.domain.auth import METERING_WRITE
from chalicelib.domain.ingest_mapping import ForeignEvent, check_name, event_key
from chalicelib.domain.usage import MAX_BATCH_EVENTS, check_timestamp
from chalicelib.errors import ErrorCode, MeteringError, validation_error

bp = Blueprint(__name__)

BODY_LIMIT = 1024 * 1024
SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_CONTEXT = ("specversion", "id", "source", "type", "subject", "time", "data", "datacontenttype", "dataschema")
_EXTENSION = re.compile(r"^[a-z0-9]{1,20}$")


class ProblemPublic(Schema):
    """An error as OpenMeter gives it: a problem details object (RFC 7807)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    extensions: dict[str, Any] | None = None


class ProblemDialect:
    """Errors as problem details: {"type", "title", "status", "detail", "instance", "extensions"}."""

    content_type = "application/problem+json"
    error_model: type[BaseModel] = ProblemPublic

    def error_body(self, error: MeteringError, request_id: str) -> Any:
        extensions: dict[str, Any] = {"code": error.code, "request_id": request_id}
        if error.field is not None:
            extensions["field"] = error.field
        return {
            "type": "about:blank",
            "title": HTTPStatus(error.http_status).phrase,
            "status": error.http_status,
            "detail": error.message,
            "instance": f"urn:request:{request_id}",
            "extensions": extensions,
        }


OPENMETER = ProblemDialect()


class CloudEventPublic(Schema):
    """One CloudEvent (JSON format, spec 1.0) as `POST /api/v1/events` takes it."""

    specversion: str = Field(description='"1.0"')
    id: str
    source: str
    type: str = Field(description="The meter id, such as agent.runs (or a type the organization maps).")
    subject: str = Field(description="The customer: the organization's ORG-* id or UUID (or an alias).")
    time: str | None = Field(default=None, description="RFC 3339; when absent, the time the event arrives.")
    data: dict[str, Any] | None = Field(default=None, description="The quantity and metadata.")
    datacontenttype: str | None = None
    dataschema: str | None = None


def name(index: int | None) -> str:
    return "event" if index is None else f"events[{index}]"


def parse_event(data: Any, where: str, call: Call) -> ForeignEvent:
    """One CloudEvent in neutral words; a 400 naming the attribute that is wrong."""
    if not isinstance(data, dict):
        raise validation_error(where, "must be a CloudEvent (a JSON object)")
    for attribute in data:
        if attribute not in _CONTEXT and not (isinstance(attribute, str) and _EXTENSION.fullmatch(attribute)):
            raise validation_error(f"{where}.{attribute}"[:120], "is not a CloudEvents attribute name")
    if data.get("specversion") != "1.0":
        raise validation_error(f"{where}.specversion", 'must be "1.0"')
    event_id = check_name(data.get("id"), f"{where}.id", 256)
    source = check_name(data.get("source"), f"{where}.source", 256)
    event_type = check_name(data.get("type"), f"{where}.type", 128)
    subject = check_name(data.get("subject"), f"{where}.subject", 256)
    content_type = data.get("datacontenttype")
    if content_type is not None and content_type != "application/json":
        raise validation_error(f"{where}.datacontenttype", 'must be "application/json" (or absent)')
    payload = data.get("data")
    if payload is not None and not isinstance(payload, dict):
        raise validation_error(f"{where}.data", "must be a JSON object")
    time = data.get("time")
    timestamp = None
    if time is not None:
        settings = call.container.settings
        timestamp = check_timestamp(time, call.container.clock(), f"{where}.time", days_back=settings.period_days_back)
    return ForeignEvent(
        dialect="cloudevents",
        key=event_key("cloudevents", source, event_id),
        customer=subject,
        event_type=event_type,
        properties=payload or {},
        timestamp=timestamp,
        fields={
            "customer": f"{where}.subject",
            "event_type": f"{where}.type",
            "properties": f"{where}.data",
            "timestamp": f"{where}.time",
        },
    )


def events_of(call: Call) -> tuple[list[Any], bool]:
    """The request's events and whether it is a batch, by its Content-Type (JSON: by the body's shape)."""
    data = call.json()
    content_type = (call.header("content-type") or "").split(";")[0].strip().lower()
    if content_type == BATCH or (content_type != SINGLE and isinstance(data, list)):
        if not isinstance(data, list):
            raise MeteringError(ErrorCode.VALIDATION_ERROR, f"A {BATCH} body must be a JSON array of CloudEvents.")
        if not 1 <= len(data) <= MAX_BATCH_EVENTS:
            raise MeteringError(
                ErrorCode.VALIDATION_ERROR, f"A batch must hold 1 to {MAX_BATCH_EVENTS} CloudEvents, not {len(data)}."
            )
        return data, True
    if not isinstance(data, dict):
        raise MeteringError(ErrorCode.VALIDATION_ERROR, f"A {SINGLE} body must be one CloudEvent (a JSON object).")
    return [data], False


@endpoint(
    bp,
    "/api/v1/events",
    methods=("POST",),
    scope=METERING_WRITE,
    dialect=OPENMETER,
    max_body_bytes=BODY_LIMIT,
    body=CloudEventPublic,
    responses={204: None},
)
def ingest_events(call: Call) -> Reply:
    """Ingest a CloudEvent or a batch of them (OpenMeter's ingest); duplicates of (source, id) are dropped."""
    data, batch = events_of(call)

    def where(index: int) -> str:
        return name(index if batch else None)

    events = ingest_mapping.parse_each(data, lambda index, item: parse_event(item, where(index), call))
    ingest_mapping.ingest_all(call.container, call.organization_id, events, where)
    return Reply(NO_BODY, 204)
