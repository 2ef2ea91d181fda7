"""Routes that ingest usage events (document 000): one event, or a batch of up to 100."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalice.app import Blueprint

from chalicelib import observability
from chalicelib.api.http import Call, Reply, endpoint, parse_model
from chalicelib.api.schemas import (
    BatchResultPublic,
    UsageEventBatchCreate,
    UsageEventCreate,
    UsageEventEnvelope,
    UsageEventRecordPublic,
)
from chalicelib.domain import usage
from chalicelib.domain.auth import METERING_WRITE
from chalicelib.errors import MeteringError
from chalicelib.services.ingest import IngestOutcome, ingest

bp = Blueprint(__name__)

SINGLE_BODY_LIMIT = 16 * 1024
BATCH_BODY_LIMIT = 1024 * 1024


def draft_from_body(data: Any, now: datetime, prefix: str = "") -> usage.UsageDraft:
    """A validated draft from a native event body; a 400 naming the field otherwise."""
    body = parse_model(UsageEventCreate, data, prefix)

    def name(field: str) -> str:
        return f"{prefix}.{field}" if prefix else field

    return usage.UsageDraft(
        service_line_id=body.service_line_id,
        meter=body.meter,
        quantity=usage.check_quantity(body.quantity, name("quantity")),
        period_date=(
            usage.check_period_date(body.period_date, now.date(), name("period_date"))
            if body.period_date is not None
            else now.date()
        ),
        event_time=None,
        source=usage.check_source(body.source, name("source")) if body.source is not None else "api",
        metadata=usage.check_metadata(body.metadata, name("metadata")),
        idempotency_key=(
            usage.check_idempotency_key(body.idempotency_key, name("idempotency_key"))
            if body.idempotency_key is not None
            else None
        ),
        period_date_given=body.period_date is not None,
    )


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
)
def ingest_event(call: Call) -> Reply:
    """Ingest one usage event; a replay of its idempotency key returns the original record."""
    now = call.container.clock()
    draft = draft_from_body(call.json(), now)
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
)
def ingest_batch(call: Call) -> Reply:
    """Ingest up to 100 events; one result per item, in order (a bad item does not sink the others)."""
    now = call.container.clock()
    body = call.body_as(UsageEventBatchCreate)
    items: list[usage.UsageDraft | MeteringError] = []
    for index, data in enumerate(body.events):
        try:
            items.append(draft_from_body(data, now, prefix=f"events[{index}]"))
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
