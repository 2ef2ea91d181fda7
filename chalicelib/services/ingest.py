"""Ingesting usage: validate against the catalog, store exactly once, hand to the rollups.

Replays come first: the catalog (line status, meter status, plan, which subscription takes
a meter) only decides whether a NEW event may be stored. A draft the catalog admits is
written by a conditional put whose failure returns the stored event (ALL_OLD), so the first
acceptance costs no read; a draft the catalog refuses is looked up by its idempotency key
(one read), and a stored event within the 48-hour window answers it as a replay
(or a conflict) whatever changed in the catalog since.

Order of writes, so that an accepted event can never miss the rollups:
1. the batch's pending record (which events it means to write), when it means to write several;
2. each event, by a conditional put on its (organization, idempotency key) slot;
3. one SQS message for the events written.
A crash after 1 or 2, or a failed 3, leaves the pending record, and the sweeper
re-enqueues it. The caller's answer does not depend on step 3.

A request that writes one event dated yesterday or later (the single-event path) skips step 1:
its pending record is written only when the send fails or is not confirmed (then the sweeper
re-enqueues it as above).
A crash between its put and its send leaves an event that no message and no pending record name;
the reconciliation work items find it through the listing index and roll it up under the marker
its message would have used (services/sweep.py, `roll_up_unsent`), within 10 x ceil(lines / 2,000)
minutes (docs/architecture.md, "The single-event path at its floor").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from chalicelib.domain import aggregation
from chalicelib.domain.ids import batch_id as new_batch_id
from chalicelib.domain.ids import usage_event_id
from chalicelib.domain.models import ServiceLine, UsageEvent, instant
from chalicelib.domain.pipeline import BatchMessage, PendingBatch, slot_for
from chalicelib.domain.store import StoreError
from chalicelib.domain.usage import WHOLE_METERS, UsageDraft, within_idempotency_window
from chalicelib.errors import ErrorCode, MeteringError, validation_error
from chalicelib.services.ports import CatalogReader, EventStore
from chalicelib.services.ports import MessageQueue as MessageQueue  # where aggregate and reconcile import it from

log = logging.getLogger("usage-metering.ingest")

# A single event goes without a pending record only if reconciliation, which looks at the last 3 period
# dates (services/reconcile.RECENT_DAYS), will see its period_date for a day at least: dated at most this
# many days back (or ahead). An older one is written behind a pending record, as a batch is.
UNPENDED_DAYS_BACK = 1

Status = Literal["accepted", "duplicate", "conflict", "rejected"]


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
    catalog: CatalogReader,
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
    if meter.id in WHOLE_METERS and draft.quantity != draft.quantity.to_integral_value():
        raise validation_error("quantity", f"{meter.id} counts whole {meter.unit}; send a whole number")
    aggregation.check_event_for_meter(meter.aggregation, meter.value_property, draft.metadata)
    return line.workspace_id, meter.unit


def reporting_lines(catalog: CatalogReader, organization_id: str, meter_id: str) -> list[ServiceLine]:
    """The organization's active lines that rate the meter, oldest first (created_at, then id).

    The first is the meter's default subscription: it takes a report that names no line.
    """
    lines = [
        line
        for line in catalog.list_service_lines(organization_id)
        if line.status == "active" and line.permits(meter_id)
    ]
    return sorted(lines, key=lambda line: (line.created_at, line.id))


def default_line(catalog: CatalogReader, organization_id: str, meter_id: str) -> str:
    """The line that takes a report to the meter naming none: the oldest active line rating it."""
    lines = reporting_lines(catalog, organization_id, meter_id)
    if lines:
        return lines[0].id
    paused = sorted(
        (line for line in catalog.list_service_lines(organization_id) if line.permits(meter_id)),
        key=lambda line: (line.created_at, line.id),
    )
    if paused:
        raise MeteringError(
            ErrorCode.SERVICE_LINE_INACTIVE,
            f"Every subscription of this customer that reports to '{meter_id}' is paused "
            f"({', '.join(line.id for line in paused)}).",
        )
    raise MeteringError(
        ErrorCode.SERVICE_LINE_NOT_FOUND, f"No active subscription of this customer reports to '{meter_id}'."
    )


Matcher = Callable[[UsageEvent], bool]


def matcher(draft: UsageDraft, line_by_rule: bool = False) -> Matcher:
    """Whether a stored event is this draft's replay: the same fingerprint of what the caller chose.

    When the service chose the line (`line_by_rule`), the line is not the caller's choice: the
    stored event's line stands in for it, so a replay matches whichever line the rule picks now.
    """
    if not line_by_rule:
        digest = draft.payload_hash()
        return lambda existing: existing.payload_hash == digest

    def matches(existing: UsageEvent) -> bool:
        return replace(draft, service_line_id=existing.service_line_id).payload_hash() == existing.payload_hash

    return matches


def _judge(existing: UsageEvent, key: str | None, matches: Matcher) -> IngestOutcome:
    if matches(existing):
        return IngestOutcome("duplicate", existing)
    return IngestOutcome(
        "conflict",
        existing,
        MeteringError(
            ErrorCode.IDEMPOTENCY_CONFLICT,
            f"Idempotency key '{key}' was used for a different payload (event {existing.id}); nothing was written.",
            field="idempotency_key",
        ),
    )


def _store(events: EventStore, candidate: UsageEvent, now: datetime, matches: Matcher) -> IngestOutcome:
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
            return _judge(existing, candidate.idempotency_key, matches)
        if events.replace_expired(existing, candidate, slot):
            return IngestOutcome("accepted", candidate)
    raise MeteringError(ErrorCode.SERVICE_UNAVAILABLE, "The idempotency key is contended; retry.")


def _admit(
    catalog: CatalogReader,
    organization_id: str,
    draft: UsageDraft,
    lines: dict[str, ServiceLine | None],
    guard: Callable[[], None] | None,
    line_by_rule: bool,
) -> tuple[UsageDraft, str, str]:
    """What the catalog says of a new event: its draft (line chosen), workspace and unit; or a refusal."""
    if guard is not None:
        guard()
    if line_by_rule:
        meter = catalog.get_meter(draft.meter)
        if meter is not None and not meter.active:
            raise MeteringError(ErrorCode.METER_ARCHIVED, f"Meter '{meter.id}' is archived.", field="meter")
        draft = replace(draft, service_line_id=default_line(catalog, organization_id, draft.meter))
    workspace_id, unit = resolve(catalog, organization_id, draft, lines)
    return draft, workspace_id, unit


def _replays_of_refused(
    events: EventStore,
    organization_id: str,
    refused: dict[int, tuple[str, MeteringError]],
    matchers: dict[int, Matcher],
    now: datetime,
) -> dict[int, IngestOutcome]:
    """Answers for drafts the catalog refused: a stored event under their key within the window is
    their replay (or conflict); otherwise the catalog's refusal stands.

    One strongly consistent GetItem per distinct key (the API's role may GetItem events, not BatchGetItem),
    in parallel; a key whose read fails is answered 503, since it may be a replay.
    """
    keys = list(dict.fromkeys(key for key, _ in refused.values()))
    reads = {key: _executor().submit(events.get, organization_id, slot_for(key, "")) for key in keys}
    found: dict[str, UsageEvent | Exception | None] = {}
    for key, future in reads.items():
        try:
            found[key] = future.result()
        except Exception as exc:
            log.exception("looking up a refused draft's idempotency key failed")
            found[key] = exc
    answers: dict[int, IngestOutcome] = {}
    for index, (key, error) in refused.items():
        existing = found[key]
        if isinstance(existing, Exception):
            unavailable = MeteringError(ErrorCode.SERVICE_UNAVAILABLE, "Looking up the idempotency key failed; retry.")
            answers[index] = IngestOutcome("rejected", error=unavailable)
        elif existing is not None and within_idempotency_window(existing.recorded_at, now):
            answers[index] = _judge(existing, key, matchers[index])
        else:
            answers[index] = IngestOutcome("rejected", error=error)
    return answers


def ingest(
    items: Sequence[UsageDraft | MeteringError],
    organization_id: str,
    catalog: CatalogReader,
    events: EventStore,
    queue: MessageQueue,
    now: datetime,
    source_default: str = "api",
    *,
    guard: Callable[[], None] | None = None,
    line_by_rule: bool = False,
) -> list[IngestOutcome]:
    """Ingest reported events (a bad item is rejected alone); one outcome per item, in order.

    `guard` is a catalog check every new event must pass and a replay need not (002: the plan's
    license). With `line_by_rule` the drafts name no line: each goes to its meter's default
    subscription (`default_line`), and a replay matches whatever line its event went to.
    """
    now = truncate_to_millis(now)
    batch = new_batch_id(now)
    outcomes: list[IngestOutcome | None] = [None] * len(items)
    candidates: dict[int, UsageEvent] = {}
    matchers: dict[int, Matcher] = {}
    leaders: dict[str, int] = {}
    lines: dict[str, ServiceLine | None] = {}
    followers: dict[int, int] = {}
    refused: dict[int, tuple[str, MeteringError]] = {}
    for index, item in enumerate(items):
        if isinstance(item, MeteringError):
            outcomes[index] = IngestOutcome("rejected", error=item)
            continue
        key = item.idempotency_key
        matchers[index] = matcher(item, line_by_rule)
        try:
            admitted, workspace_id, unit = _admit(catalog, organization_id, item, lines, guard, line_by_rule)
        except MeteringError as error:
            if key is None:
                outcomes[index] = IngestOutcome("rejected", error=error)
            elif key in leaders:  # an earlier item of this request stores the key: judged against it
                followers[index] = leaders[key]
            else:
                refused[index] = (key, error)
            continue
        event = UsageEvent(
            id=usage_event_id(now),
            organization_id=organization_id,
            workspace_id=workspace_id,
            service_line_id=admitted.service_line_id,
            meter=admitted.meter,
            quantity=admitted.quantity,
            unit=unit,
            period_date=admitted.period_date,
            event_time=truncate_to_millis(admitted.event_time or now),
            recorded_at=now,
            source=admitted.source or source_default,
            metadata=dict(admitted.metadata),
            idempotency_key=key,
            payload_hash=admitted.payload_hash(),
            batch_id=batch,
        )
        if key is not None and key in leaders:
            followers[index] = leaders[key]
            continue
        if key is not None:
            leaders[key] = index
        candidates[index] = event
    for index, answer in _replays_of_refused(events, organization_id, refused, matchers, now).items():
        outcomes[index] = answer
    to_write = candidates
    if to_write:
        pairs = tuple((slot_for(e.idempotency_key, e.id), e.id) for e in to_write.values())
        oldest = min(e.period_date for e in to_write.values())
        # no pending record unless its send fails (see the module's docstring)
        single = len(to_write) == 1 and oldest >= now.date() - timedelta(days=UNPENDED_DAYS_BACK)
        if not single:
            events.put_pending(PendingBatch(batch, organization_id, now, pairs))
        uncertain = False
        for index, result in _store_all(events, to_write, now, matchers):
            if isinstance(result, IngestOutcome):
                outcomes[index] = result
            elif isinstance(result, MeteringError):
                outcomes[index] = IngestOutcome("rejected", error=result)
            else:  # one event that cannot be stored must not sink the batch
                log.error("storing an event failed", exc_info=result)
                outcome, known = _after_failed_write(events, to_write[index], result)
                outcomes[index] = outcome
                uncertain = uncertain or not known
        accepted = [o for o in outcomes if o and o.status == "accepted"]
        if uncertain:  # a write may have landed unseen: let the aggregator look at every slot
            _enqueue_all(queue, batch, organization_id, now, pairs, events if single else None)
        else:
            _enqueue(events, queue, batch, organization_id, now, accepted, single)
    for index, leader in followers.items():
        lead = outcomes[leader]
        if lead is None or lead.event is None:
            outcomes[index] = lead
        else:
            outcomes[index] = _judge(lead.event, lead.event.idempotency_key, matchers[index])
    return [
        o if o is not None else IngestOutcome("rejected", error=MeteringError(ErrorCode.INTERNAL_ERROR))
        for o in outcomes
    ]


def _after_failed_write(events: EventStore, event: UsageEvent, error: Exception) -> tuple[IngestOutcome, bool]:
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
    code = ErrorCode.SERVICE_UNAVAILABLE if isinstance(error, StoreError) else ErrorCode.INTERNAL_ERROR
    return IngestOutcome("rejected", error=MeteringError(code, "Storing the event failed; retry.")), known


def _store_all(
    events: EventStore, to_write: dict[int, UsageEvent], now: datetime, matchers: dict[int, Matcher]
) -> list[tuple[int, IngestOutcome | Exception]]:
    """Store each event (in parallel when there are several); each index with its outcome or its error."""
    if len(to_write) == 1:  # the single-event path: no hop to a thread
        [(index, event)] = to_write.items()
        try:
            return [(index, _store(events, event, now, matchers[index]))]
        except Exception as exc:
            return [(index, exc)]
    futures = {i: _executor().submit(_store, events, e, now, matchers[i]) for i, e in to_write.items()}
    results: list[tuple[int, IngestOutcome | Exception]] = []
    for index, future in futures.items():
        try:
            results.append((index, future.result()))
        except Exception as exc:
            results.append((index, exc))
    return results


def _send_or_leave_pending(
    queue: MessageQueue, message: BatchMessage, pending_on_failure: EventStore | None, now: datetime
) -> None:
    """Send a batch's message. A failed send leaves the batch for the sweeper: its pending record exists
    already, or (single-event path, `pending_on_failure`) is written now, listing what the message lists."""
    try:
        queue.send(message.model_dump_json())
        return
    except Exception:
        log.warning("enqueue of batch %s failed; left pending for the sweeper", message.batch, exc_info=True)
    if pending_on_failure is None:
        return
    record = PendingBatch(message.batch, message.org, now, tuple((s, i) for s, i in message.events))
    try:
        pending_on_failure.put_pending(record)
    except Exception:  # neither sent nor pending: the reconciliation work items roll it up (sweep.roll_up_unsent)
        log.error("batch %s is neither enqueued nor pending; left to reconciliation", message.batch, exc_info=True)


def _enqueue_all(
    queue: MessageQueue,
    batch: str,
    organization_id: str,
    now: datetime,
    pairs: tuple[tuple[str, str], ...],
    pending_on_failure: EventStore | None = None,
) -> None:
    """Send every event the batch meant to store; the aggregator skips those never stored."""
    message = BatchMessage(batch=batch, org=organization_id, created=instant(now), origin="sweep", events=list(pairs))
    _send_or_leave_pending(queue, message, pending_on_failure, now)


def _enqueue(
    events: EventStore,
    queue: MessageQueue,
    batch: str,
    organization_id: str,
    now: datetime,
    accepted: list[IngestOutcome],
    single: bool = False,
) -> None:
    written = [(slot_for(o.event.idempotency_key, o.event.id), o.event.id) for o in accepted if o.event]
    if not written:
        if not single:
            events.delete_pending(batch)  # nothing of this batch was stored: nothing to roll up
        return
    # The aggregator takes a one-event "ingest" message for a single event's, with no pending record to
    # delete (services/aggregate.py); a one-event message of a batch behind a pending record goes as "sweep"
    # (its events may be listed as missing-skippable, and its pending record is deleted once applied).
    origin: Literal["ingest", "sweep"] = "sweep" if not single and len(written) == 1 else "ingest"
    message = BatchMessage(batch=batch, org=organization_id, created=instant(now), origin=origin, events=written)
    _send_or_leave_pending(queue, message, events if single else None, now)
