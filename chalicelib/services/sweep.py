"""The sweeper: re-enqueue batches still pending after a grace period (a failed enqueue, a dead worker).

A batch whose message was dead-lettered stays pending (its events are accepted but not all rolled
up) and is left alone: it waits in the dead-letter queue for an operator's redrive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chalicelib.domain.ids import ulid_floor
from chalicelib.domain.models import instant
from chalicelib.domain.pipeline import BatchMessage
from chalicelib.services.ports import EventStore, MessageQueue

log = logging.getLogger("usage-metering.sweep")

PENDING_GRACE = timedelta(minutes=5)


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
