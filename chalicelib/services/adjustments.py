"""Correcting usage: voiding an event and adjusting a line's meter on a day, through the same pipeline as ingest.

A correction is a new immutable record in the events table (a VOID-* or ADJ-* id), written as ingest
writes an event: the batch's pending record first, then the record by a conditional put on its slot
(its idempotency key, so a replay answers the first record and another payload under the key is a
409), then one queue message for the aggregator, which rolls it up exactly once with its marker. The
put is a transaction that also marks the corrected event (`voided_by`, or `adjusted_by`) only if it is
not voided: one event has at most one void, and a voided event takes no adjustment.

Voids of max, min, latest and unique_count meters cannot be subtracted from a join cell: once the void
is rolled up, the aggregator recomputes the join cells of the line-day's rollups of that meter from its
events minus the voided ones (`restate_voided`). docs/architecture.md, "Corrections", has the rules.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal, Protocol

from chalicelib.domain import adjustments as rules
from chalicelib.domain.aggregation import EMPTY
from chalicelib.domain.ids import batch_id as new_batch_id
from chalicelib.domain.models import Meter, UsageEvent, instant
from chalicelib.domain.pipeline import BatchMessage, PendingBatch, archive_slot, slot_for
from chalicelib.domain.usage import CORRECTIONS, ApplyUnit
from chalicelib.errors import ErrorCode, MeteringError, validation_error
from chalicelib.services.ports import CatalogReader, EventStore, MessageQueue, RollupStore

log = logging.getLogger("usage-metering.adjustments")

# A correction whose put keeps losing to concurrent writes is answered 503 after this many tries.
MAX_ATTEMPTS = 5
# Aggregations whose rollups a void corrects by subtraction alone (minus the quantity, minus one event).
SUBTRACTED = frozenset({"sum", "count"})
# An event recorded this long ago that is in no pending batch has been rolled up (its marker may have expired).
SETTLED_AFTER = timedelta(days=1)


class CorrectionStore(EventStore, Protocol):
    """The event store with what corrections need beyond ingest (storage/events_repo.py, storage/memory.py)."""

    def locate(
        self, organization_id: str, line_id: str, start: date, end: date, event_id: str
    ) -> tuple[UsageEvent, str] | None: ...

    def put_correction(self, record: UsageEvent, slot: str, target_slot: str | None) -> bool: ...


@dataclass(frozen=True)
class CorrectionOutcome:
    """A correction stored now (`accepted`, 201) or before (`duplicate`, 200: a replay, or a second void)."""

    status: Literal["accepted", "duplicate"]
    record: UsageEvent


def _conflict(key: str, existing: UsageEvent) -> MeteringError:
    return MeteringError(
        ErrorCode.IDEMPOTENCY_CONFLICT,
        f"Idempotency key '{key}' was used for a different payload ({existing.id}); nothing was written.",
        field="idempotency_key",
    )


def _replay(events: CorrectionStore, organization_id: str, key: str | None, digest: str) -> UsageEvent | None:
    """The record a key already names, if the payload is the same; a 409 if it is another's (of any age:
    a correction's key is never reused)."""
    if key is None:
        return None
    existing = events.get(organization_id, slot_for(key, ""))
    if existing is None:
        return None
    if existing.payload_hash != digest:
        raise _conflict(key, existing)
    return existing


def find_event(
    events: CorrectionStore,
    catalog: CatalogReader,
    organization_id: str,
    event_id: str,
    line_id: str | None = None,
    day: date | None = None,
    field: str = "event_id",
) -> tuple[UsageEvent, str]:
    """An organization's record by id, as stored now (strongly consistent), and its slot; 404 otherwise.

    The by_line index finds it: on the given line and day in one read; otherwise on each of the
    organization's lines, first on the days around when it was recorded (its id says when), then over
    the retention. Give the line and period_date (as GET /v1/usage lists them) to spare the search.
    """
    missing = MeteringError(ErrorCode.NOT_FOUND, f"No record '{event_id}' belongs to this organization.", field=field)
    recorded = rules.recorded_at_of(event_id)
    if recorded is None or len(event_id) > 64:
        raise missing
    if line_id is not None:
        if catalog.get_service_line(organization_id, line_id) is None:
            raise missing
        lines = [line_id]
    else:
        lines = [line.id for line in catalog.list_service_lines(organization_id)]
    around = recorded.date()
    if day is not None:
        probes = [(day, day)]
    else:
        near = [around + timedelta(days=offset) for offset in (0, -1, 1)]
        probes = [(d, d) for d in near] + [(around - timedelta(days=rules.RETENTION_DAYS), around + timedelta(days=1))]
    for start, end in probes:
        for line in lines:
            found = events.locate(organization_id, line, start, end, event_id)
            if found is not None:
                return _current(events, organization_id, *found, missing)
    raise missing


def _current(
    events: CorrectionStore, organization_id: str, listed: UsageEvent, slot: str, missing: MeteringError
) -> tuple[UsageEvent, str]:
    """A record found through the index, read again from its slot (its marks as they are now)."""
    current = events.get(organization_id, slot)
    if current is not None and current.id == listed.id:
        return current, slot
    moved = events.get(organization_id, archive_slot(listed.id))  # its key was reused after 48 hours
    if moved is not None and moved.id == listed.id:
        return moved, archive_slot(listed.id)
    raise missing


def _hand_over(events: CorrectionStore, queue: MessageQueue, record: UsageEvent, slot: str, now: datetime) -> None:
    """One message for the aggregator; if it cannot be sent, the pending record brings it (the sweeper).

    Its origin is "sweep" (the record it lists is known to be written either way): the aggregator then
    settles the batch's pending record, which it skips for an "ingest" message of one event (a single
    event's path writes none, services/ingest.py)."""
    message = BatchMessage(
        batch=record.batch_id,
        org=record.organization_id,
        created=instant(now),
        origin="sweep",
        events=[(slot, record.id)],
    )
    try:
        queue.send(message.model_dump_json())
    except Exception:
        log.warning("enqueue of correction %s failed; left pending for the sweeper", record.id, exc_info=True)


def _store(
    events: CorrectionStore,
    queue: MessageQueue,
    record: UsageEvent,
    target_slot: str | None,
    now: datetime,
) -> bool:
    """Write a correction as ingest writes an event (pending record, transaction, message); False when a
    condition failed and nothing was written."""
    slot = slot_for(record.idempotency_key, record.id)
    events.put_pending(PendingBatch(record.batch_id, record.organization_id, now, ((slot, record.id),)))
    try:
        written = events.put_correction(record, slot, target_slot)
    except Exception:
        log.exception("storing correction %s failed", record.id)
        found = events.get(record.organization_id, slot)  # the write may have landed, its answer lost
        if found is None or found.id != record.id:
            events.delete_pending(record.batch_id)
            raise MeteringError(ErrorCode.SERVICE_UNAVAILABLE, "Storing the correction failed; retry.") from None
        written = True
    if not written:
        events.delete_pending(record.batch_id)
        return False
    _hand_over(events, queue, record, slot, now)
    return True


def void(
    request: rules.VoidRequest,
    organization_id: str,
    key_id: str,
    catalog: CatalogReader,
    events: CorrectionStore,
    queue: MessageQueue,
    now: datetime,
) -> CorrectionOutcome:
    """Void a usage event: a new VOID-* record cancelling it, and the event marked `voided_by`.

    A replay of the key, or voiding an event already voided (under any key), answers the existing void.
    """
    digest = request.payload_hash()
    for _ in range(MAX_ATTEMPTS):
        replayed = _replay(events, organization_id, request.idempotency_key, digest)
        if replayed is not None:
            return CorrectionOutcome("duplicate", replayed)
        event, slot = find_event(
            events, catalog, organization_id, request.event_id, request.service_line_id, request.period_date
        )
        rules.check_voidable(event)
        if event.voided_by is not None and event.void_slot is not None:
            for where in (event.void_slot, archive_slot(event.voided_by)):  # moved aside if its key was reused
                existing = events.get(organization_id, where)
                if existing is not None and existing.id == event.voided_by:
                    return CorrectionOutcome("duplicate", existing)
        moment = now.replace(microsecond=now.microsecond // 1000 * 1000)
        record = rules.void_of(event, request, rules.void_id(moment), moment, new_batch_id(moment), key_id)
        if _store(events, queue, record, slot, moment):
            return CorrectionOutcome("accepted", record)
    raise MeteringError(ErrorCode.SERVICE_UNAVAILABLE, "The event is being corrected concurrently; retry.")


def adjust(
    request: rules.AdjustmentRequest,
    organization_id: str,
    key_id: str,
    catalog: CatalogReader,
    events: CorrectionStore,
    queue: MessageQueue,
    now: datetime,
) -> CorrectionOutcome:
    """Adjust a sum meter's usage on a line and period_date by a signed quantity: a new ADJ-* record, and
    the event it names (if any) marked `adjusted_by`."""
    digest = request.payload_hash()
    for _ in range(MAX_ATTEMPTS):
        replayed = _replay(events, organization_id, request.idempotency_key, digest)
        if replayed is not None:
            return CorrectionOutcome("duplicate", replayed)
        line = catalog.get_service_line(organization_id, request.service_line_id)
        if line is None:
            raise MeteringError(
                ErrorCode.SERVICE_LINE_NOT_FOUND,
                f"No service line '{request.service_line_id}' belongs to this organization.",
                field="service_line_id",
            )
        meter = catalog.get_meter(request.meter)
        if meter is None:
            raise MeteringError(ErrorCode.METER_NOT_FOUND, f"No meter is named '{request.meter}'.", field="meter")
        if not line.permits(meter.id):
            raise MeteringError(
                ErrorCode.METER_NOT_PERMITTED,
                f"Service line '{line.id}' bills {', '.join(line.meters)}; '{meter.id}' is not one of them.",
                field="meter",
            )
        rules.check_adjustable(meter)
        request.check_whole()
        corrected: UsageEvent | None = None
        target_slot: str | None = None
        if request.corrects is not None:
            corrected, target_slot = find_event(
                events, catalog, organization_id, request.corrects, line.id, request.period_date, "corrects"
            )
            if corrected.kind != "usage" or corrected.meter != meter.id:
                raise validation_error(
                    "corrects", f"must name a usage event of {meter.id} on {line.id} and {request.period_date}"
                )
            if corrected.voided_by is not None:
                raise MeteringError(
                    ErrorCode.EVENT_VOIDED,
                    f"Event '{corrected.id}' is voided by {corrected.voided_by}; it takes no adjustment.",
                    field="corrects",
                )
        moment = now.replace(microsecond=now.microsecond // 1000 * 1000)
        record = rules.adjustment_of(
            request,
            organization_id,
            corrected,
            line.workspace_id,
            meter.unit,
            rules.adjustment_id(moment),
            moment,
            new_batch_id(moment),
            key_id,
        )
        if _store(events, queue, record, target_slot, moment):
            return CorrectionOutcome("accepted", record)
    raise MeteringError(ErrorCode.SERVICE_UNAVAILABLE, "The event is being corrected concurrently; retry.")


# -- the aggregator's part: voids of non-additive meters ---------------------------------------------


MeterLookup = Callable[[str], Meter | None]
Target = tuple[str, str, str, str]  # organization, line, meter, period_date


def restate_voided(
    units: Iterable[ApplyUnit],
    events: EventStore,
    rollups: RollupStore,
    meters: MeterLookup,
    now: datetime,
) -> set[str]:
    """Recompute the join cells of the line-days whose max, min, latest or unique_count rollups a void in
    these (applied) units corrects; the batch ids whose restatement must wait (deliver them again)."""
    targets: dict[Target, set[str]] = defaultdict(set)
    voids: dict[Target, set[str]] = defaultdict(set)
    for unit in units:
        for rk, state in unit.deltas.items():
            if rk.group_key != CORRECTIONS or rk.grain != "D" or state.event_count >= 0:
                continue
            meter = meters(rk.meter)
            if meter is None or meter.aggregation in SUBTRACTED:
                continue
            target = (unit.organization_id, rk.service_line_id, rk.meter, rk.period_date)
            targets[target].add(unit.batch_id)
            voids[target].update(unit.event_ids)
    waiting: set[str] = set()
    for target, batches in sorted(targets.items()):
        meter = meters(target[2])
        assert meter is not None
        if not restate_line_day(target, meter, voids[target], events, rollups, now):
            waiting |= batches
    return waiting


def restate_line_day(
    target: Target, meter: Meter, void_ids: set[str], events: EventStore, rollups: RollupStore, now: datetime
) -> bool:
    """Set a line-day's rollups of a meter to their join cells without the voided events, each only if it
    has not changed since read. False when it must wait: the voids are not yet listed (the index lags),
    a voided event's own batch is still being rolled up, or the rollups keep changing."""
    from chalicelib.services.aggregate import routed  # aggregate calls this module

    organization_id, line_id, meter_id, day_text = target
    day = date.fromisoformat(day_text)
    for _ in range(3):
        observed = [
            r
            for r in rollups.rollups_of_period(organization_id, line_id, day, with_groups=True)
            if r.key.meter == meter_id and r.key.group_key != CORRECTIONS
        ]
        records = [e for e in events.iter_line(organization_id, line_id, day, day) if e.meter == meter_id]
        if not void_ids <= {e.id for e in records}:
            return False
        voided = rules.voided_ids(records)
        if not all(_rolled_up(e, events, rollups, now) for e in records if e.id in voided):
            return False
        joins = routed(rules.restated_joins(records, meter), rollups)
        settled = True
        for row in observed:
            wanted = rules.with_joins(row.state, joins.get(row.key, EMPTY))
            if wanted != row.state and not rollups.repair_state(row.key, wanted, row, now):
                settled = False
        if settled:
            return True
    return False


def _rolled_up(event: UsageEvent, events: EventStore, rollups: RollupStore, now: datetime) -> bool:
    """Whether an event's own batch has applied its join cells: its marker says so (or, for an old event in
    no pending batch, it was long ago). Until then the event's batch may still join its value in."""
    if event.id in rollups.applied_event_ids(event.batch_id):
        return True
    return now - event.recorded_at > SETTLED_AFTER and not events.is_pending(event.batch_id)
