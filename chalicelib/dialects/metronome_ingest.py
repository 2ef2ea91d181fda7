"""Metronome's ingest, `POST /v1/ingest`: a JSON array of 1-100 usage events, as Metronome's SDK sends them.

Each event is `{transaction_id, customer_id, event_type, timestamp, properties?}`, mapped by
`chalicelib.domain.ingest_mapping`: the customer is the organization (its ORG-* id or UUID, or an
alias its mapping lists), `event_type` names the meter, the quantity is the property the meter's
`value_property` names (else `value`), and the organization's default active line for the meter
takes it. The timestamp is the event time; its UTC date is the period date.

Answers as Metronome's: `200` with no body when every event is stored or is a duplicate.
Duplicates are by `transaction_id` (our key `metronome <transaction_id>`): a transaction id seen
within the last 48 hours is ignored, whatever its payload, as Metronome ignores duplicates (its
own window is 34 days; ours is the service's 48-hour idempotency window). A malformed request or
event is a `400` and nothing is stored; an event the catalog refuses (a paused line, an archived
meter) is a `400` naming it, the others being stored, so the same request can be sent again.
Errors are Metronome's `{"message", "code"}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from chalice.app import Blueprint
from pydantic import Field, RootModel

from chalicelib.api.http import NO_BODY, Call, Reply, endpoint
from chalicelib.api.schemas import Schema
from chalicelib.dialects import ingest_mapping
from chalicelib.dialects.metronome import METRONOME
from chalicelib.domain.auth import METERING_WRITE
from chalicelib.domain.ingest_mapping import ForeignEvent, check_name, event_key
from chalicelib.domain.usage import MAX_BATCH_EVENTS, check_timestamp
from chalicelib.errors import ErrorCode, MeteringError, validation_error

bp = Blueprint(__name__)

BODY_LIMIT = 1024 * 1024
MAX_TRANSACTION_ID = 128
_FIELDS = ("transaction_id", "customer_id", "event_type", "timestamp", "properties")


class MetronomeUsageEvent(Schema):
    """One event of `POST /v1/ingest` (the body is an array of 1-100 of them)."""

    transaction_id: str = Field(
        min_length=1, max_length=MAX_TRANSACTION_ID, description="Deduplicates the event (48 hours here)."
    )
    customer_id: str = Field(description="The organization's UUID or ORG-* id (or an alias its mapping lists).")
    event_type: str = Field(description="The meter id, such as agent.runs (or a type its mapping lists).")
    timestamp: str = Field(description="RFC 3339, with a zone: the event time.")
    properties: dict[str, Any] | None = Field(
        default=None, description="The quantity (the meter's value_property, else value) and metadata."
    )


class MetronomeIngestBody(RootModel[Annotated[list[MetronomeUsageEvent], Field(min_length=1, max_length=100)]]):
    """The body of `POST /v1/ingest`: a JSON array of 1-100 usage events."""


def name(index: int) -> str:
    return f"usage[{index}]"


def parse_event(data: Any, index: int, call: Call) -> ForeignEvent:
    """One Metronome event in neutral words; a 400 naming the field that is wrong."""
    where = name(index)
    if not isinstance(data, dict):
        raise validation_error(where, "must be an object")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise validation_error(f"{where}.{unknown[0]}", "unknown field")
    transaction_id = check_name(data.get("transaction_id"), f"{where}.transaction_id", MAX_TRANSACTION_ID)
    customer = check_name(data.get("customer_id"), f"{where}.customer_id", 256)
    event_type = check_name(data.get("event_type"), f"{where}.event_type", 128)
    if data.get("timestamp") is None:
        raise validation_error(f"{where}.timestamp", "is required (RFC 3339, with a zone)")
    now = call.container.clock()
    timestamp = check_timestamp(
        data["timestamp"], now, f"{where}.timestamp", days_back=call.container.settings.period_days_back
    )
    properties = data.get("properties") or {}
    if not isinstance(properties, dict):
        raise validation_error(f"{where}.properties", "must be an object")
    return ForeignEvent(
        dialect="metronome",
        key=event_key("metronome", transaction_id),
        customer=customer,
        event_type=event_type,
        properties=properties,
        timestamp=timestamp,
        fields={
            "customer": f"{where}.customer_id",
            "event_type": f"{where}.event_type",
            "properties": f"{where}.properties",
            "timestamp": f"{where}.timestamp",
        },
    )


@endpoint(
    bp,
    "/v1/ingest",
    methods=("POST",),
    scope=METERING_WRITE,
    dialect=METRONOME,
    max_body_bytes=BODY_LIMIT,
    body=MetronomeIngestBody,
    responses={200: None},
)
def ingest_usage(call: Call) -> Reply:
    """Ingest 1-100 usage events (Metronome's ingest); duplicates of a transaction_id are ignored."""
    data = call.json()
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_BATCH_EVENTS:
        raise MeteringError(
            ErrorCode.VALIDATION_ERROR,
            f"The body must be a JSON array of 1 to {MAX_BATCH_EVENTS} usage events.",
            field="usage",
        )
    events = ingest_mapping.parse_each(data, lambda index, item: parse_event(item, index, call))
    ingest_mapping.ingest_all(call.container, call.organization_id, events, name)
    return Reply(NO_BODY, 200)
