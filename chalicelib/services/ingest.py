"""Ingesting usage: validate against the catalog, store exactly once, hand to the rollups.

Order of writes, so that an accepted event can never miss the rollups:
1. the batch's pending record (which events it means to write);
2. each event, by a conditional put on its (organization, idempotency key) slot;
3. one SQS message for the events written.
A crash after 1 or 2, or a failed 3, leaves the pending record, and the sweeper
re-enqueues it. The caller's answer does not depend on step 3.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.domain.ids import batch_id as new_batch_id
from chalicelib.domain.ids import usage_event_id
from chalicelib.domain.models import ServiceLine, UsageEvent, instant
from chalicelib.domain.pipeline import BatchMessage
from chalicelib.domain.usage import UsageDraft, within_idempotency_window
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services.ports import CatalogRepository
from chalicelib.storage.events_repo import DynamoEventStore, PendingBatch, slot_for

log = logging.getLogger("usage-metering.ingest")

Status = Literal["accepted", "duplicate", "conflict", "rejected"]


class MessageQueue(Protocol):
    def send(self, body: str, attributes: dict[str, str] | None = None) -> None: ...


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one reported event."""

    status: Status
    event: UsageEvent | None = None
    error: MeteringError | None = None


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ingest")
        return _pool


def truncate_to_millis(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def resolve(
    catalog: CatalogRepository,
    organization_id: str,
    draft: UsageDraft,
    lines: dict[str, ServiceLine | None] | None = None,
) -> tuple[str, str]:
    """The workspace and unit of a draft, or the reason it is refused.

    `lines` caches service lines across the drafts of one request: one read per distinct line.
    """
    if lines is None:
        lines = {}
    if draft.service_line_id not in lines:
        lines[draft.service_line_id] = catalog.get_service_line(organization_id, draft.service_line_id)
    line = lines[draft.service_line_id]
    if line is None:
        raise MeteringError(
            ErrorCode.SERVICE_LINE_NOT_FOUND,
            f"No service line '{draft.service_line_id}' belongs to this organization.",
            field="service_line_id",
        )
    if line.status != "active":
        raise MeteringError(
            ErrorCode.SERVICE_LINE_INACTIVE,
            f"Service line '{line.id}' is {line.status} and accepts no usage.",
            field="service_line_id",
        )
    meter = catalog.get_meter(draft.meter)
    if meter is None:
        raise MeteringError(ErrorCode.METER_NOT_FOUND, f"No meter is named '{draft.meter}'.", field="meter")
    if not meter.active:
        raise MeteringError(ErrorCode.METER_ARCHIVED, f"Meter '{meter.id}' is archived.", field="meter")
    if not line.permits(meter.id):
        raise MeteringError(
            ErrorCode.METER_NOT_PERMITTED,
            f"Service line '{line.id}' bills {', '.join(line.meters)}; '{meter.id}' is not permitted.",
            field="meter",
        )
    return line.workspace_id, meter.unit


def _judge(existing: UsageEvent, candidate: UsageEvent) -> IngestOutcome:
    if existing.payload_hash == candidate.payload_hash:
        return IngestOutcome("duplicate", existing)
    return IngestOutcome(
        "conflict",
        existing,
        MeteringError(
            ErrorCode.IDEMPOTENCY_CONFLICT,
            f"Idempotency key '{candidate.idempotency_key}' was used for a different payload "
            f"(event {existing.id}); nothing was written.",
            field="idempotency_key",
        ),
    )


def _store(events: DynamoEventStore, candidate: UsageEvent, now: datetime) -> IngestOutcome:
    slot = slot_for(candidate.idempotency_key, candidate.id)
    for _ in range(5):
        outcome = events.put_new(candidate, slot)
        if outcome.stored:
            return IngestOutcome("accepted", candidate)
        existing = outcome.existing
        if existing is None:  # moved aside between our put and our read: try again
            continue
        if existing.id == candidate.id:  # our own write, whose first answer was lost (an SDK retry)
            return IngestOutcome("accepted", candidate)
        if within_idempotency_window(existing.recorded_at, now):
            return _judge(existing, candidate)
        if events.replace_expired(existing, candidate, slot):
            return IngestOutcome("accepted", candidate)
    raise MeteringError(ErrorCode.SERVICE_UNAVAILABLE, "The idempotency key is contended; retry.")


def ingest(
    items: Sequence[UsageDraft | MeteringError],
    organization_id: str,
    catalog: CatalogRepository,
    events: DynamoEventStore,
    queue: MessageQueue,
    now: datetime,
    source_default: str = "api",
) -> list[IngestOutcome]:
    """Ingest reported events (a bad item is rejected alone); one outcome per item, in order."""
    now = truncate_to_millis(now)
    batch = new_batch_id(now)
    outcomes: list[IngestOutcome | None] = [None] * len(items)
    candidates: dict[int, UsageEvent] = {}
    leaders: dict[str, int] = {}
    lines: dict[str, ServiceLine | None] = {}
    followers: dict[int, int] = {}
    for index, item in enumerate(items):
        if isinstance(item, MeteringError):
            outcomes[index] = IngestOutcome("rejected", error=item)
            continue
        try:
            workspace_id, unit = resolve(catalog, organization_id, item, lines)
        except MeteringError as error:
            outcomes[index] = IngestOutcome("rejected", error=error)
            continue
        event = UsageEvent(
            id=usage_event_id(now),
            organization_id=organization_id,
            workspace_id=workspace_id,
            service_line_id=item.service_line_id,
            meter=item.meter,
            quantity=item.quantity,
            unit=unit,
            period_date=item.period_date,
            event_time=truncate_to_millis(item.event_time or now),
            recorded_at=now,
            source=item.source or source_default,
            metadata=dict(item.metadata),
            idempotency_key=item.idempotency_key,
            payload_hash=item.payload_hash(),
            batch_id=batch,
        )
        if item.idempotency_key is not None and item.idempotency_key in leaders:
            followers[index] = leaders[item.idempotency_key]
            candidates[index] = event
            continue
        if item.idempotency_key is not None:
            leaders[item.idempotency_key] = index
        candidates[index] = event
    to_write = {i: e for i, e in candidates.items() if i not in followers}
    if to_write:
        pairs = tuple((slot_for(e.idempotency_key, e.id), e.id) for e in to_write.values())
        events.put_pending(PendingBatch(batch, organization_id, now, pairs))
        futures = {i: _executor().submit(_store, events, e, now) for i, e in to_write.items()}
        uncertain = False
        for index, future in futures.items():
            try:
                outcomes[index] = future.result()
            except MeteringError as error:
                outcomes[index] = IngestOutcome("rejected", error=error)
            except Exception as exc:  # one event that cannot be stored must not sink the batch
                log.exception("storing an event failed")
                outcome, known = _after_failed_write(events, to_write[index], exc)
                outcomes[index] = outcome
                uncertain = uncertain or not known
        accepted = [o for o in outcomes if o and o.status == "accepted"]
        if uncertain:  # a write may have landed unseen: let the aggregator look at every slot
            _enqueue_all(queue, batch, organization_id, now, pairs)
        else:
            _enqueue(events, queue, batch, organization_id, now, accepted)
    for index, leader in followers.items():
        lead = outcomes[leader]
        if lead is None or lead.event is None:
            outcomes[index] = lead
        else:
            outcomes[index] = _judge(lead.event, candidates[index])
    return [
        o if o is not None else IngestOutcome("rejected", error=MeteringError(ErrorCode.INTERNAL_ERROR))
        for o in outcomes
    ]


def _after_failed_write(events: DynamoEventStore, event: UsageEvent, error: Exception) -> tuple[IngestOutcome, bool]:
    """What a write that raised did: the slot is read again, since a write can land and its answer be lost.

    Returns the outcome and whether it is known; an unknown one is reported as retryable.
    """
    try:
        found = events.get(event.organization_id, slot_for(event.idempotency_key, event.id))
    except Exception:
        found = None
        known = False
    else:
        known = True
    if found is not None and found.id == event.id:
        return IngestOutcome("accepted", event), True
    code = (
        ErrorCode.SERVICE_UNAVAILABLE if isinstance(error, (ClientError, BotoCoreError)) else ErrorCode.INTERNAL_ERROR
    )
    return IngestOutcome("rejected", error=MeteringError(code, "Storing the event failed; retry.")), known


def _enqueue_all(
    queue: MessageQueue, batch: str, organization_id: str, now: datetime, pairs: tuple[tuple[str, str], ...]
) -> None:
    """Send every event the batch meant to store; the aggregator skips those never stored."""
    message = BatchMessage(batch=batch, org=organization_id, created=instant(now), origin="sweep", events=list(pairs))
    try:
        queue.send(message.model_dump_json())
    except Exception:
        log.warning("enqueue of batch %s failed; left pending for the sweeper", batch, exc_info=True)


def _enqueue(
    events: DynamoEventStore,
    queue: MessageQueue,
    batch: str,
    organization_id: str,
    now: datetime,
    accepted: list[IngestOutcome],
) -> None:
    written = [(slot_for(o.event.idempotency_key, o.event.id), o.event.id) for o in accepted if o.event]
    if not written:
        events.delete_pending(batch)  # nothing of this batch was stored: nothing to roll up
        return
    message = BatchMessage(batch=batch, org=organization_id, created=instant(now), origin="ingest", events=written)
    try:
        queue.send(message.model_dump_json())
    except Exception:  # the pending record stays; the sweeper re-enqueues it
        log.warning("enqueue of batch %s failed; left pending for the sweeper", batch, exc_info=True)
