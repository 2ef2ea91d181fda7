"""Rolling batches of events up, exactly once, from (possibly repeated) queue messages."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from chalicelib import catalog as catalog_data
from chalicelib.domain.aggregation import RollupState
from chalicelib.domain.models import Meter, UsageEvent
from chalicelib.domain.pipeline import BatchMessage, ReconcileMessage, archive_slot
from chalicelib.domain.usage import (
    ApplyUnit,
    CountableEvent,
    RollupKey,
    chunk_events,
    coalesce,
    countable,
    group_values,
    route,
)
from chalicelib.services.ports import EventStore, MessageQueue, RollupStore

log = logging.getLogger("usage-metering.aggregate")

# A chunk touches at most this many rollups, so its marker and rollups fit one transaction.
MAX_ROLLUPS_PER_CHUNK = 100 - 2  # DynamoDB's TransactWriteItems takes 100 actions
# The definition of a meter by id (its aggregation, value property and group keys).
MeterLookup = Callable[[str], Meter | None]


@functools.cache
def _platform_meters() -> dict[str, Meter]:
    return {m.id: m for m in (Meter.model_validate(raw) for raw in catalog_data.read("meters"))}


def platform_meter(meter_id: str) -> Meter | None:
    """A platform meter's definition from the catalog data (what load_platform_catalog writes)."""
    return _platform_meters().get(meter_id)


def countable_events(events: Iterable[UsageEvent], meters: MeterLookup) -> list[CountableEvent]:
    """Stored events as rolling up sees them, each under its meter's aggregation and group keys."""
    return [countable(event, meters(event.meter)) for event in events]


def routed(states: dict[RollupKey, RollupState], rollups: RollupStore) -> dict[RollupKey, RollupState]:
    """States with their group values admitted in the store's registers, the rest under OTHER_GROUP."""
    asked = group_values(states)
    if not asked:
        return states
    return route(states, rollups.admit_groups(asked))


def recompute(
    counted: Iterable[UsageEvent], stored: Iterable[UsageEvent], meters: MeterLookup, rollups: RollupStore
) -> dict[RollupKey, RollupState]:
    """What the rollups of some events should hold: additive cells from the counted events (those the
    markers say were added), join cells from every stored event (joins are applied before the marker,
    at least once, so a stored event's join may already be in). For reconciliation."""
    additive = coalesce(countable_events(counted, meters))
    joins = coalesce(countable_events(stored, meters))
    states: dict[RollupKey, RollupState] = {}
    for rk in set(additive) | set(joins):
        a = additive.get(rk)
        j = joins.get(rk)
        merged = a.additive() if a is not None else RollupState()
        if j is not None and j.has_joins:
            merged = RollupState(merged.quantity, merged.event_count, j.maximum, j.minimum, j.latest, j.values)
        states[rk] = merged
    return routed(states, rollups)


# A message that keeps failing goes to the dead-letter queue on this delivery.
MAX_DELIVERIES = 5


@dataclass(frozen=True)
class Delivery:
    """One received SQS message."""

    message_id: str
    body: str
    receive_count: int


@dataclass
class AggregateResult:
    failed: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    units_poisoned: int = 0
    work_items: int = 0
    rollups_repaired: int = 0
    events_applied: int = 0
    units_applied: int = 0
    units_already_applied: int = 0
    transactions: int = 0


class PoisonMessage(Exception):
    """A message that can never be applied: it goes to the dead-letter queue after a few tries."""


def plan_units(
    message: BatchMessage, events: EventStore, rollups: RollupStore, meters: MeterLookup = platform_meter
) -> list[ApplyUnit]:
    """The chunks of a batch to apply, from the events as stored (deterministic for a batch); group values
    past their slot's bound are routed to OTHER_GROUP (admission, once decided, never changes)."""
    found = events.get_many(message.org, (slot for slot, _ in message.events))
    moved = [event_id for slot, event_id in message.events if slot in found and found[slot].id != event_id]
    if moved:  # a key reused after 48 hours: the original was moved aside
        archived = events.get_many(message.org, (archive_slot(i) for i in moved))
        found.update({f"A#{e.id}": e for e in archived.values()})
    counted: list[CountableEvent] = []
    missing: list[str] = []
    for slot, event_id in message.events:
        event = found.get(slot)
        if event is None or event.id != event_id:
            event = found.get(archive_slot(event_id))
        if event is None or event.id != event_id or event.batch_id != message.batch:
            missing.append(event_id)
            continue
        counted.append(countable(event, meters(event.meter)))
    if missing and message.origin == "ingest":
        raise PoisonMessage(f"events {', '.join(missing[:5])} of batch {message.batch} do not exist")
    if missing:
        log.info("batch %s: %d listed events were never stored (skipped)", message.batch, len(missing))
    chunks = chunk_events(counted, MAX_ROLLUPS_PER_CHUNK)
    return [
        ApplyUnit(
            batch_id=message.batch,
            chunk_index=index,
            organization_id=message.org,
            event_ids=tuple(e.id for e in chunk),
            deltas=routed(coalesce(chunk), rollups),
        )
        for index, chunk in enumerate(chunks)
    ]


def aggregate(
    deliveries: Sequence[Delivery],
    events: EventStore,
    rollups: RollupStore,
    dead_letters: MessageQueue,
    now: datetime,
    meters: MeterLookup = platform_meter,
) -> AggregateResult:
    """Apply a batch of messages; returns the ids of messages to deliver again."""
    from chalicelib.services import reconcile, sweep  # both use this module's functions

    result = AggregateResult()
    units_of: dict[str, list[ApplyUnit]] = {}
    batch_of: dict[str, str] = {}
    pended: set[str] = set()  # batches with a pending record: all but a single event's (services/ingest.py)
    by_id = {delivery.message_id: delivery for delivery in deliveries}

    def give_up_or_retry(delivery: Delivery, reason: str, batch_id: str | None) -> None:
        """A message that failed for good: redelivered until its last delivery, then dead-lettered."""
        if delivery.receive_count >= MAX_DELIVERIES:
            log.error("dead-lettering message %s: %s", delivery.message_id, reason)
            dead_letters.send(delivery.body, {"reason": reason[:256], "message_id": delivery.message_id})
            if batch_id is not None:  # the sweeper must not send it round again; a redrive does
                events.mark_dead_lettered(batch_id, now, reason[:256])
            result.dead_lettered.append(delivery.message_id)
        else:
            log.warning("message %s failed (delivery %d): %s", delivery.message_id, delivery.receive_count, reason)
            result.failed.append(delivery.message_id)

    work: list[tuple[Delivery, ReconcileMessage]] = []
    for delivery in deliveries:
        item = _work_item(delivery.body)
        if item is not None:
            work.append((delivery, item))
            continue
        try:
            try:
                message = BatchMessage.model_validate_json(delivery.body)
            except ValidationError as exc:
                raise PoisonMessage(f"unreadable body: {exc.errors(include_url=False)[0]['msg']}") from None
            units_of[delivery.message_id] = plan_units(message, events, rollups, meters)
            batch_of[delivery.message_id] = message.batch
            if message.origin != "ingest" or len(message.events) != 1:
                pended.add(message.batch)
        except PoisonMessage as poison:
            give_up_or_retry(delivery, str(poison), batch_of.get(delivery.message_id) or _batch_in(delivery.body))
    # Two messages of one batch in one invocation (a resent copy, the sweeper's next to the ingest's)
    # plan the same chunks: apply each (batch, chunk) once, never twice in one transaction.
    unique: dict[tuple[str, int], ApplyUnit] = {}
    for units in units_of.values():
        for unit in units:
            unique.setdefault((unit.batch_id, unit.chunk_index), unit)
    report = rollups.apply(list(unique.values()), now)
    result.transactions = report.transactions
    result.units_applied = len(report.applied)
    result.units_already_applied = len(report.already_applied)
    result.events_applied = sum(len(u.event_ids) for u in report.applied)
    result.units_poisoned = len(report.poisoned)
    failed_batches = {u.batch_id for u in report.failed}
    failed = {mid for mid in units_of if batch_of[mid] in failed_batches}
    result.failed.extend(sorted(failed))
    # A unit that fails alone, every time, holds back only its own batch's messages.
    poison_of = {unit.batch_id: reason for unit, reason in report.poisoned}
    poisoned = {mid for mid in units_of if mid not in failed and batch_of[mid] in poison_of}
    for mid in sorted(poisoned):
        give_up_or_retry(by_id[mid], f"rollup cannot be applied: {poison_of[batch_of[mid]]}", batch_of[mid])
    # Voids of max, min, latest and unique_count meters restate their line-days' join cells (docs/architecture.md,
    # "Corrections"); a batch whose restatement must wait is delivered again (its markers make that a no-op).
    from chalicelib.services.adjustments import restate_voided

    settled = [u for u in unique.values() if u.batch_id not in failed_batches and u.batch_id not in poison_of]
    waiting = restate_voided(settled, events, rollups, meters, now)
    held = {mid for mid in units_of if mid not in failed and mid not in poisoned and batch_of[mid] in waiting}
    result.failed.extend(sorted(held))
    # Every chunk of these batches is in the rollups now: their pending records can go.
    done = {batch_of[mid] for mid in units_of if mid not in failed and mid not in poisoned and mid not in held}
    events.delete_pending_many(done & pended)
    for delivery, item in work:
        try:
            # a single event whose process died before its send is rolled up first; the reconciler then
            # counts every batch by its markers (services/sweep.py)
            sweep.roll_up_unsent(item, events, rollups, now, meters)
            checked = reconcile.run_item(item, sweep.counted_by_markers(events), rollups, now)
        except Exception as exc:  # one work item's failure (a throttle, a bug) retries it alone
            give_up_or_retry(delivery, f"reconciliation failed: {type(exc).__name__}: {exc}", None)
            continue
        result.work_items += 1
        result.rollups_repaired += len(checked.repaired)
    return result


def _work_item(body: str) -> ReconcileMessage | None:
    """A reconciliation work item, if that is what the message is (they share the usage queue)."""
    if '"kind":"reconcile"' not in body:
        return None
    try:
        return ReconcileMessage.model_validate_json(body)
    except ValidationError:
        return None


def _batch_in(body: str) -> str | None:
    """The batch id of a message body that may not be a valid message."""
    try:
        return BatchMessage.model_validate_json(body).batch
    except ValidationError:
        return None
