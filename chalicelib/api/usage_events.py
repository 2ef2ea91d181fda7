"""Routes that ingest usage events (document 000): one event, or a batch of up to 100.

Both honour an `Idempotency-Key` header. One event: the header is its key (a body
`idempotency_key` must then be equal). A batch: the header keys the request, and each
event that has no key of its own gets `<header>:<index>` (its position in `events`), so a
retried batch is a replay item by item.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalice.app import Blueprint

from chalicelib import observability
from chalicelib.api.http import IDEMPOTENCY_HEADER, Call, Reply, endpoint, parse_model
from chalicelib.api.schemas import (
    BatchResultPublic,
    UsageEventBatchCreate,
    UsageEventCreate,
    UsageEventEnvelope,
    UsageEventRecordPublic,
)
from chalicelib.domain import usage
from chalicelib.domain.auth import METERING_WRITE
from chalicelib.errors import MeteringError, validation_error
from chalicelib.services.ingest import IngestOutcome, ingest

bp = Blueprint(__name__)

SINGLE_BODY_LIMIT = 16 * 1024
BATCH_BODY_LIMIT = 1024 * 1024
KEY_HEADER = IDEMPOTENCY_HEADER
# A batch's header leaves room for ":<index>" (at most ":99") within the key limit.
MAX_BATCH_KEY_HEADER = usage.MAX_IDEMPOTENCY_KEY - len(f":{usage.MAX_BATCH_EVENTS - 1}")
_SINGLE_KEY_HEADER = {
    KEY_HEADER: "The event's idempotency key (1-128 printable ASCII); when the body also has "
    "idempotency_key the two must be equal (400 otherwise)."
}
_BATCH_KEY_HEADER = {
    KEY_HEADER: f"A key for the whole request (1-{MAX_BATCH_KEY_HEADER} printable ASCII): each event without "
    "its own idempotency_key gets '<header>:<index>', its position in events."
}


def draft_from_body(
    data: Any, now: datetime, prefix: str = "", header: str | None = None, days_back: int = usage.PERIOD_DAYS_BACK
) -> usage.UsageDraft:
    """A validated draft from a native event body; a 400 naming the field otherwise.

    `header` is the key the request's header gives this event: the body's key, if any, must equal it.
    """
    body = parse_model(UsageEventCreate, data, prefix)

    def name(field: str) -> str:
        return f"{prefix}.{field}" if prefix else field

    key = (
        usage.check_idempotency_key(body.idempotency_key, name("idempotency_key"))
        if body.idempotency_key is not None
        else None
    )
    if header is not None and key is not None and key != header:
        raise validation_error(name("idempotency_key"), f"must equal the {KEY_HEADER} header when both are given")
    return usage.UsageDraft(
        service_line_id=body.service_line_id,
        meter=body.meter,
        quantity=usage.check_quantity(body.quantity, name("quantity")),
        period_date=(
            usage.check_period_date(body.period_date, now.date(), name("period_date"), days_back)
            if body.period_date is not None
            else now.date()
        ),
        event_time=None,
        source=usage.check_source(body.source, name("source")) if body.source is not None else "api",
        metadata=usage.check_metadata(body.metadata, name("metadata")),
        idempotency_key=key if key is not None else header,
        period_date_given=body.period_date is not None,
    )


def batch_key(header: str | None, index: int, data: Any) -> str | None:
    """The key a batch's header gives its event at `index`: `<header>:<index>`, unless the event has its own."""
    if header is None or (isinstance(data, dict) and data.get("idempotency_key") is not None):
        return None
    return f"{header}:{index}"


def _run(call: Call, items: list[usage.UsageDraft | MeteringError], now: datetime) -> list[IngestOutcome]:
    c = call.container
    return ingest(items, call.organization_id, c.catalog, c.events, c.queue, now)


@endpoint(
    bp,
    "/v1/metering/events",
    methods=("POST",),
    scope=METERING_WRITE,
    max_body_bytes=SINGLE_BODY_LIMIT,
    body=UsageEventCreate,
    responses={201: UsageEventEnvelope, 200: UsageEventEnvelope},
    headers=_SINGLE_KEY_HEADER,
)
def ingest_event(call: Call) -> Reply:
    """Ingest one usage event; a replay of its idempotency key returns the original record."""
    now = call.container.clock()
    header = call.idempotency_header()
    draft = draft_from_body(call.json(), now, header=header, days_back=call.container.settings.period_days_back)
    (outcome,) = _run(call, [draft], now)
    observability.count_outcomes([outcome.status])
    if outcome.error is not None:
        raise outcome.error
    assert outcome.event is not None
    record = {"data": UsageEventRecordPublic.of(outcome.event).model_dump(mode="python")}
    if outcome.status == "duplicate":
        return Reply(record, 200, {"Idempotent-Replayed": "true"})
    return Reply(record, 201)


@endpoint(
    bp,
    "/v1/metering/events/batch",
    methods=("POST",),
    scope=METERING_WRITE,
    max_body_bytes=BATCH_BODY_LIMIT,
    body=UsageEventBatchCreate,
    responses={200: BatchResultPublic},
    headers=_BATCH_KEY_HEADER,
)
def ingest_batch(call: Call) -> Reply:
    """Ingest up to 100 events; one result per item, in order (a bad item does not sink the others)."""
    now = call.container.clock()
    header = call.idempotency_header(MAX_BATCH_KEY_HEADER)
    body = call.body_as(UsageEventBatchCreate)
    items: list[usage.UsageDraft | MeteringError] = []
    for index, data in enumerate(body.events):
        try:
            items.append(
                draft_from_body(
                    data,
                    now,
                    f"events[{index}]",
                    batch_key(header, index, data),
                    days_back=call.container.settings.period_days_back,
                )
            )
        except MeteringError as error:
            items.append(error)
    results = []
    outcomes = _run(call, items, now)
    observability.count_outcomes([o.status for o in outcomes])
    for index, outcome in enumerate(outcomes):
        result: dict[str, Any] = {"index": index, "status": outcome.status}
        if outcome.event is not None and outcome.status in ("accepted", "duplicate"):
            result["data"] = UsageEventRecordPublic.of(outcome.event).model_dump(mode="python")
        if outcome.error is not None:
            result["error"] = outcome.error.to_dict()
        results.append(result)
    return Reply({"data": results})
