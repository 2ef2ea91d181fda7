"""The single-event path (services/ingest.py, services/sweep.py): no pending record while the send
succeeds, one when it fails, and an event whose process died between its put and its send rolled up
exactly once by a reconciliation work item, even if its message turns up later. Over the in-memory
stores, through the real aggregator (`aggregate`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from chalicelib.container import Container
from chalicelib.domain.pipeline import BatchMessage, ReconcileMessage
from chalicelib.domain.usage import UsageDraft
from chalicelib.services import ingest as ingest_module
from chalicelib.services import reconcile, sweep
from chalicelib.services.aggregate import Delivery, aggregate
from chalicelib.services.ingest import IngestOutcome, ingest
from chalicelib.storage.memory import MemoryQueue
from tests.support import pending_records
from tests.unit.test_ingest_handoff import FailingQueue

ORG = "ORG-26-090500"
TALENT = "LIN-26-084729"
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
DAY = date(2026, 5, 10)


def draft(key: str | None, quantity: str = "2") -> UsageDraft:
    return UsageDraft(
        service_line_id=TALENT,
        meter="talent.hours",
        quantity=Decimal(quantity),
        period_date=DAY,
        event_time=None,
        source="api",
        metadata={},
        idempotency_key=key,
    )


class DeadBeforeSend:
    """A queue whose process dies before the message leaves: nothing is sent, nothing is said."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def send(self, body: str, attributes: dict[str, str] | None = None) -> None:
        self.bodies.append(body)  # what would have been sent, kept for the "late message" case
        raise SystemExit("the process died")


def one(container: Container, item: UsageDraft, queue: Any = None, at: datetime = NOW) -> IngestOutcome:
    (outcome,) = ingest([item], ORG, container.catalog, container.events, queue or container.queue, at)
    return outcome


def deliver(container: Container, bodies: Iterable[str], at: datetime) -> None:
    deliveries = [Delivery(f"m{i}", b, 1) for i, b in enumerate(bodies)]
    result = aggregate(deliveries, container.events, container.rollups, container.queue, at)
    assert result.failed == [] and result.dead_lettered == []


def day_total(container: Container) -> tuple[Decimal, int]:
    [rollup] = container.rollups.day_rollups(ORG, TALENT, DAY, DAY, consistent=True)
    return rollup.quantity, rollup.event_count


def work_item() -> str:
    return ReconcileMessage(org=ORG, lines=[TALENT], days=[DAY.isoformat()]).model_dump_json()


def test_a_single_event_sent_leaves_no_pending_record_and_is_rolled_up_once(container: Container) -> None:
    assert one(container, draft("s-1")).status == "accepted"
    assert pending_records(container) == []
    [body] = cast(MemoryQueue, container.queue).bodies
    assert BatchMessage.model_validate_json(body).origin == "ingest"
    cast(MemoryQueue, container.queue).take()
    deliver(container, [body, body], NOW)  # delivered twice in one invocation
    deliver(container, [body], NOW + timedelta(minutes=1))  # and again later
    assert day_total(container) == (Decimal(2), 1)


def test_a_single_event_whose_send_fails_is_left_pending_for_the_sweeper(container: Container) -> None:
    outcome = one(container, draft("s-2"), queue=FailingQueue())
    assert outcome.status == "accepted" and outcome.event is not None
    [pending] = pending_records(container)
    assert pending["sk"] == outcome.event.batch_id
    assert [tuple(p) for p in pending["events"]] == [("K#s-2", outcome.event.id)]
    report = sweep.sweep(container.events, container.queue, NOW + sweep.PENDING_GRACE + timedelta(seconds=1))
    assert report.requeued == [outcome.event.batch_id]
    deliver(container, cast(MemoryQueue, container.queue).bodies, NOW + timedelta(minutes=6))
    assert pending_records(container) == []
    assert day_total(container) == (Decimal(2), 1)


def test_a_single_event_whose_process_died_before_the_send_is_rolled_up_by_a_work_item_once(
    container: Container,
) -> None:
    assert one(container, draft("base", "5")).status == "accepted"
    deliver(container, cast(MemoryQueue, container.queue).bodies, NOW)
    cast(MemoryQueue, container.queue).take()
    dead = DeadBeforeSend()
    with contextlib.suppress(SystemExit):
        one(container, draft("s-3", "7"), queue=dead, at=NOW + timedelta(seconds=1))
    assert pending_records(container) == []  # named by no message and no pending record

    # while it may still be on its way, a work item neither counts it nor rolls it up
    deliver(container, [work_item()], NOW + timedelta(seconds=30))
    assert day_total(container) == (Decimal(5), 1)
    report = reconcile.run_item(
        ReconcileMessage.model_validate_json(work_item()),
        sweep.counted_by_markers(container.events),
        container.rollups,
        NOW + timedelta(minutes=10),
        quiet=timedelta(0),
    )
    assert report.repaired == []

    # past UNSENT_AGE the next work item rolls it up, once
    deliver(container, [work_item()], NOW + sweep.UNSENT_AGE + timedelta(seconds=2))
    assert day_total(container) == (Decimal(12), 2)
    deliver(container, [work_item()], NOW + timedelta(minutes=20))
    assert day_total(container) == (Decimal(12), 2)
    # its message, had it left after all, adds nothing
    deliver(container, dead.bodies, NOW + timedelta(minutes=21))
    assert day_total(container) == (Decimal(12), 2)


def test_a_single_event_dated_before_yesterday_is_written_behind_a_pending_record(container: Container) -> None:
    # reconciliation looks at the last RECENT_DAYS period dates: an unsent event must stay in view for a day
    assert reconcile.RECENT_DAYS >= ingest_module.UNPENDED_DAYS_BACK + 2
    old = replace(draft("s-old"), period_date=DAY - timedelta(days=2))
    with contextlib.suppress(SystemExit):
        one(container, old, queue=DeadBeforeSend())
    [pending] = pending_records(container)  # the sweeper's, as for a batch
    report = sweep.sweep(container.events, container.queue, NOW + sweep.PENDING_GRACE + timedelta(seconds=1))
    assert report.requeued == [pending["sk"]]
    deliver(container, cast(MemoryQueue, container.queue).bodies, NOW + timedelta(minutes=6))
    assert pending_records(container) == []
    [rollup] = container.rollups.day_rollups(ORG, TALENT, old.period_date, old.period_date, consistent=True)
    assert (rollup.quantity, rollup.event_count) == (Decimal(2), 1)

    yesterday = replace(draft("s-yesterday"), period_date=DAY - timedelta(days=1))
    with contextlib.suppress(SystemExit):
        one(container, yesterday, queue=DeadBeforeSend())
    assert pending_records(container) == []  # within the work items' view: they roll it up
