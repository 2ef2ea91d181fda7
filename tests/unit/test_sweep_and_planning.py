"""The sweeper and the reconciliation planner as use cases, over the in-memory stores.

The same jobs under SQS redelivery, crashes and concurrent runs are tests/integration/test_pipeline_faults.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import cast

import pytest

from chalicelib.container import Container
from chalicelib.domain.models import ServiceLine
from chalicelib.domain.pipeline import BatchMessage, ReconcileMessage, slot_for
from chalicelib.domain.usage import UsageDraft
from chalicelib.services import reconcile, sweep
from chalicelib.services.ingest import ingest
from chalicelib.storage.memory import MemoryQueue
from tests.unit.test_ingest_handoff import FailingQueue

ORG = "ORG-26-090500"
TALENT = "LIN-26-084729"
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
GRACE = sweep.PENDING_GRACE


def queue_of(container: Container) -> MemoryQueue:
    return cast(MemoryQueue, container.queue)


def stuck_batch(container: Container, key: str, at: datetime = NOW) -> tuple[str, list[tuple[str, str]]]:
    """A batch accepted while the queue was unreachable: its id and (slot, event id) pairs."""
    drafts = [
        UsageDraft(
            service_line_id=TALENT,
            meter="talent.hours",
            quantity=Decimal(n + 1),
            period_date=date(2026, 5, 10),
            event_time=None,
            source="api",
            metadata={},
            idempotency_key=f"{key}-{n}",
        )
        for n in range(3)
    ]
    outcomes = ingest(drafts, ORG, container.catalog, container.events, FailingQueue(), at)
    events = [o.event for o in outcomes if o.event is not None]
    assert [o.status for o in outcomes] == ["accepted"] * 3
    return events[0].batch_id, [(slot_for(e.idempotency_key, e.id), e.id) for e in events]


def test_a_stuck_batch_is_requeued_after_the_grace_period_once_per_period(container: Container) -> None:
    batch, pairs = stuck_batch(container, "s")
    queue = queue_of(container)
    assert sweep.sweep(container.events, queue, NOW + GRACE - timedelta(minutes=1)).requeued == []
    report = sweep.sweep(container.events, queue, NOW + GRACE + timedelta(minutes=1))
    assert report.requeued == [batch] and report.pending_seen == 1
    [body] = [m.body for m in queue.take()]
    message = BatchMessage.model_validate_json(body)
    assert (message.batch, message.org, message.origin) == (batch, ORG, "sweep")
    assert sorted(message.events) == sorted(pairs)
    # claimed: within the grace period no sweeper sends it again, after it one does (it is still pending)
    assert sweep.sweep(container.events, queue, NOW + GRACE + timedelta(minutes=3)).requeued == []
    assert sweep.sweep(container.events, queue, NOW + 2 * GRACE + timedelta(minutes=2)).requeued == [batch]
    assert len(queue.take()) == 1
    container.events.delete_pending(batch)  # rolled up
    later = NOW + 4 * GRACE
    assert sweep.sweep(container.events, queue, later).as_dict() == {
        "pending_seen": 0,
        "dead_lettered": 0,
        "requeued": 0,
        "batches": [],
    }


def test_a_dead_lettered_batch_waits_for_the_operator(container: Container) -> None:
    batch, _ = stuck_batch(container, "d")
    other, _ = stuck_batch(container, "o", NOW + timedelta(seconds=1))
    container.events.mark_dead_lettered(batch, NOW + timedelta(minutes=1), "poison")
    report = sweep.sweep(container.events, queue_of(container), NOW + GRACE + timedelta(minutes=1))
    assert report.requeued == [other]
    assert (report.pending_seen, report.dead_lettered) == (2, 1)
    assert container.events.is_pending(batch)


def add_lines(container: Container, organization_id: str, workspace: str, count: int) -> None:
    for n in range(count):
        container.catalog.put_service_line(
            ServiceLine(
                id=f"LIN-26-4{n:05d}",
                organization_id=organization_id,
                workspace_id=workspace,
                name=f"Line {n}",
                product_line="talent",
                status="active",
                currency="USD",
                rates={"talent.hours": Decimal(1)},
                created_at=NOW,
            )
        )


@pytest.mark.parametrize("per_run", [1, 4, 100])
def test_the_planner_walks_every_line_once_per_cycle_in_bounded_runs(container: Container, per_run: int) -> None:
    add_lines(container, ORG, "WS-26-000101", 23)  # one organization with more lines than a work item takes
    every = sorted((line.organization_id, line.id) for line in container.catalog.all_service_lines())
    queue = queue_of(container)
    planned: list[tuple[str, str]] = []
    for _ in range(100):
        report = reconcile.plan(container.catalog, queue, NOW, max_lines=per_run)
        assert report.lines <= per_run
        for message in queue.take():
            item = ReconcileMessage.model_validate_json(message.body)
            assert len(item.lines) <= reconcile.LINES_PER_ITEM
            assert item.days == [(NOW.date() - timedelta(days=d)).isoformat() for d in range(reconcile.RECENT_DAYS)]
            planned.extend((item.org, line) for line in item.lines)
        assert report.items_sent >= report.lines / reconcile.LINES_PER_ITEM
        if report.cycle_complete:
            break
    else:
        raise AssertionError("the planner never completed a cycle")
    assert sorted(planned) == every  # each line once, under its own organization
    assert container.catalog.get_job_cursor(reconcile.PLANNER_JOB) is None  # the next cycle starts over
    reconcile.plan(container.catalog, queue, NOW, max_lines=per_run)
    again = [(m.org, line) for m in map(ReconcileMessage.model_validate_json, queue.bodies) for line in m.lines]
    assert again == planned[: len(again)] and again
