"""The sweeper: re-enqueue batches still pending after a grace period (a failed enqueue, a dead worker).

A batch whose message was dead-lettered stays pending (its events are accepted but not all rolled
up) and is left alone: it waits in the dead-letter queue for an operator's redrive.

A single event has no pending record while its send succeeds; the reconciliation work items roll up
one whose process died before the send (`roll_up_unsent`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import cast

from chalicelib.domain.ids import ulid_floor
from chalicelib.domain.models import Meter, UsageEvent, instant
from chalicelib.domain.pipeline import BatchMessage, ReconcileMessage, slot_for
from chalicelib.services.ports import EventStore, MessageQueue, RollupStore

log = logging.getLogger("usage-metering.sweep")

PENDING_GRACE = timedelta(minutes=5)
MeterLookup = Callable[[str], Meter | None]


@dataclass
class SweepReport:
    pending_seen: int = 0
    dead_lettered: int = 0
    requeued: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "pending_seen": self.pending_seen,
            "dead_lettered": self.dead_lettered,
            "requeued": len(self.requeued),
            "batches": self.requeued[:50],
        }


def sweep(events: EventStore, queue: MessageQueue, now: datetime, grace: timedelta = PENDING_GRACE) -> SweepReport:
    """Re-enqueue every batch pending for longer than `grace` (at most once per grace period)."""
    report = SweepReport()
    for batch in events.pending_before("B" + ulid_floor(now - grace)):
        report.pending_seen += 1
        if batch.dead_lettered_at is not None:
            report.dead_lettered += 1
            continue
        if batch.last_enqueued_at is not None and now - batch.last_enqueued_at < grace:
            continue
        if not events.claim_for_requeue(batch.batch_id, now, now - grace):
            continue  # another sweeper took it
        message = BatchMessage(
            batch=batch.batch_id,
            org=batch.organization_id,
            created=instant(batch.created_at),
            origin="sweep",
            events=list(batch.events),
        )
        queue.send(message.model_dump_json())
        report.requeued.append(batch.batch_id)
    if report.requeued:
        log.warning("re-enqueued %d pending batches", len(report.requeued))
    return report


# -- the single-event path's repair (docs/architecture.md, "The single-event path at its floor") ----------

# An event no marker counts is left to its message for this long before a work item rolls it up itself.
UNSENT_AGE = timedelta(minutes=2)


def roll_up_unsent(
    item: ReconcileMessage,
    events: EventStore,
    rollups: RollupStore,
    now: datetime,
    meters: MeterLookup | None = None,
    min_age: timedelta = UNSENT_AGE,
) -> int:
    """Roll up the events of a work item's lines and days that no message and no pending record carry.

    A single-event request writes no pending record unless its send fails; if its process dies between
    the put and the send, the event is stored and named nowhere. Each such event (older than `min_age`,
    counted by no marker, in a batch of one that is not pending) is applied here under the marker its
    message would have used (its batch, chunk 0), so a message that turns up later adds nothing.
    Returns how many events were rolled up.
    """
    from chalicelib.services.aggregate import plan_units, platform_meter  # aggregate runs the work items

    lookup = meters or platform_meter
    cutoff = now - min_age
    units = []
    for line_id in item.lines:
        for day in item.days:
            at = date.fromisoformat(day)
            by_batch: dict[str, list[UsageEvent]] = defaultdict(list)
            for event in events.iter_line(item.org, line_id, at, at):
                by_batch[event.batch_id].append(event)
            for batch_id, stored in by_batch.items():
                applied = rollups.applied_event_ids(batch_id)
                unsent = [e for e in stored if e.id not in applied]
                if not unsent or any(e.recorded_at > cutoff for e in unsent):
                    continue  # counted, or its message may still be on the way
                if len(stored) != 1 or events.is_pending(batch_id):
                    continue  # a batch with a pending record is the sweeper's
                [event] = stored
                message = BatchMessage(
                    batch=batch_id,
                    org=item.org,
                    created=instant(event.recorded_at),
                    origin="sweep",
                    events=[(slot_for(event.idempotency_key, event.id), event.id)],
                )
                units.extend(plan_units(message, events, rollups, lookup))
    if not units:
        return 0
    report = rollups.apply(units, now)
    rolled = sum(len(u.event_ids) for u in report.applied)
    if rolled:
        log.warning("rolled up %d events that no message or pending record carried", rolled)
    return rolled


class _CountedByMarkers:
    """An event store whose every batch reads as pending, so the reconciler counts each batch's events
    as far as its markers say (markers live 30 days, longer than reconciliation looks back). Needed once
    a batch can exist with neither a pending record nor (yet) a marker: a single event on its way."""

    def __init__(self, events: EventStore) -> None:
        self._events = events

    def iter_line(self, organization_id: str, line_id: str, start: date, end: date) -> Iterator[UsageEvent]:
        return self._events.iter_line(organization_id, line_id, start, end)

    def is_pending(self, batch_id: str) -> bool:
        return True


def counted_by_markers(events: EventStore) -> EventStore:
    """`events` for the reconciler, counting every batch by its markers (see _CountedByMarkers)."""
    return cast(EventStore, _CountedByMarkers(events))
