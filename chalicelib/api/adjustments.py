"""Routes that correct usage (scope `metering:adjust`): void an event, adjust a line's meter on a day.

Both are idempotent by key as ingest is: the `Idempotency-Key` header or the body's `idempotency_key`
(equal when both are given). A replay answers the first record (200); another payload under the key
is a 409. Voiding an event already voided answers its void (200), whatever the key.
"""

from __future__ import annotations

from datetime import date

from chalice.app import Blueprint

from chalicelib.api.http import IDEMPOTENCY_HEADER, IDEMPOTENCY_HEADER_DOC, Call, Reply, endpoint
from chalicelib.api.schemas import AdjustmentCreate, CorrectionEnvelope, CorrectionPublic, VoidCreate
from chalicelib.domain import adjustments as rules
from chalicelib.domain import usage
from chalicelib.domain.auth import METERING_ADJUST
from chalicelib.errors import validation_error
from chalicelib.services import adjustments
from chalicelib.services.adjustments import CorrectionOutcome, CorrectionStore

bp = Blueprint(__name__)

BODY_LIMIT = 16 * 1024


def _key(call: Call, body_key: str | None) -> str | None:
    """The request's idempotency key: the header's or the body's, which must be equal when both are sent."""
    header = call.idempotency_header()
    key = usage.check_idempotency_key(body_key) if body_key is not None else None
    if header is not None and key is not None and key != header:
        raise validation_error("idempotency_key", f"must equal the {IDEMPOTENCY_HEADER} header when both are given")
    return key if key is not None else header


def _answer(outcome: CorrectionOutcome) -> Reply:
    record = {"data": CorrectionPublic.of(outcome.record).model_dump(mode="python")}
    if outcome.status == "duplicate":
        return Reply(record, 200, {"Idempotent-Replayed": "true"})
    return Reply(record, 201)


def _store(call: Call) -> CorrectionStore:
    store: CorrectionStore = call.container.events  # both adapters implement the corrections' methods
    return store


@endpoint(
    bp,
    "/v1/metering/events/{event_id}/void",
    methods=("POST",),
    scope=METERING_ADJUST,
    max_body_bytes=BODY_LIMIT,
    body=VoidCreate,
    responses={201: CorrectionEnvelope, 200: CorrectionEnvelope},
    headers=IDEMPOTENCY_HEADER_DOC,
)
def void_event(call: Call) -> Reply:
    """Void a usage event with a reason: a new void record cancels it in every total; the event is kept, marked."""
    body = call.body_as(VoidCreate)
    now = call.container.clock()
    day: date | None = None
    if body.period_date is not None:
        day = rules.check_correction_date(body.period_date, now.date())
    request = rules.VoidRequest(
        event_id=call.path["event_id"],
        reason=rules.check_reason(body.reason),
        idempotency_key=_key(call, body.idempotency_key),
        service_line_id=body.service_line_id,
        period_date=day,
    )
    c = call.container
    outcome = adjustments.void(
        request, call.organization_id, call.principal.key_id, c.catalog, _store(call), c.queue, now
    )
    return _answer(outcome)


@endpoint(
    bp,
    "/v1/metering/adjustments",
    methods=("POST",),
    scope=METERING_ADJUST,
    max_body_bytes=BODY_LIMIT,
    body=AdjustmentCreate,
    responses={201: CorrectionEnvelope, 200: CorrectionEnvelope},
    headers=IDEMPOTENCY_HEADER_DOC,
)
def create_adjustment(call: Call) -> Reply:
    """Adjust a sum meter's usage on a service line and period_date by a signed quantity, with a reason."""
    body = call.body_as(AdjustmentCreate)
    now = call.container.clock()
    request = rules.AdjustmentRequest(
        service_line_id=body.service_line_id,
        meter=body.meter,
        period_date=rules.check_correction_date(body.period_date, now.date()),
        quantity=rules.check_delta(body.quantity),
        reason=rules.check_reason(body.reason),
        corrects=body.corrects,
        idempotency_key=_key(call, body.idempotency_key),
    )
    c = call.container
    outcome = adjustments.adjust(
        request, call.organization_id, call.principal.key_id, c.catalog, _store(call), c.queue, now
    )
    return _answer(outcome)
