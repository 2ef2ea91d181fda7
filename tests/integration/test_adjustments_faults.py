"""Corrections under the pipeline's faults, on the emulated AWS: the same harness as ingest's fault tests
(tests/integration/test_pipeline_faults.py: the real SQS queue and `aggregate_usage` handler, faults at
the AWS client boundary). A voided 80-hour timesheet and an adjustment of -72 hours each leave the
summary at the exact total (the wrong timesheet's 8 hours beside another of 8), counted once, through
redeliveries, a worker crash between its writes and a lost queue message, and every rollup equals its raw
records (events, voids and adjustments).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, timedelta
from decimal import Decimal

import pytest

from chalicelib.container import Container
from chalicelib.domain import adjustments as rules
from chalicelib.domain.models import UsageEvent
from chalicelib.services import adjustments, queries
from chalicelib.services.adjustments import CorrectionOutcome, CorrectionStore
from tests.integration.test_pipeline_faults import (
    FAR_FUTURE,
    FAR_PAST,
    NOW,
    ORG,
    TALENT,
    TODAY,
    InjectedCrash,
    Pipeline,
    crash_rollups_after,
    draft,
    fail_enqueues,
    markers,
)

KEY_ID = "key_0123456789abcdef"


@pytest.fixture
def pipe(container: Container) -> Pipeline:
    return Pipeline(container)


def store(container: Container) -> CorrectionStore:
    events: CorrectionStore = container.events
    return events


def void(container: Container, event: UsageEvent, key: str) -> CorrectionOutcome:
    request = rules.VoidRequest(event.id, "80 hours entered for 8", key)
    return adjustments.void(request, ORG, KEY_ID, container.catalog, store(container), container.queue, NOW)


def adjust(container: Container, event: UsageEvent, key: str) -> CorrectionOutcome:
    request = rules.AdjustmentRequest(TALENT, "talent.hours", TODAY, Decimal(-72), "80 for 8", event.id, key)
    return adjustments.adjust(request, ORG, KEY_ID, container.catalog, store(container), container.queue, NOW)


def ingest_timesheets(pipe: Pipeline, tag: str) -> UsageEvent:
    """An 80-hour timesheet (wrong) and an 8-hour one, rolled up; the wrong one."""
    at = NOW - timedelta(hours=2)
    pipe.ingest_accepted([draft(TALENT, "talent.hours", "80", event_time=at, key=f"{tag}-80")])
    pipe.ingest_accepted([draft(TALENT, "talent.hours", "8", event_time=at, key=f"{tag}-8")])
    pipe.drain()
    (wrong,) = [e for e in pipe.ledger.events.values() if e.quantity == 80]
    return wrong


def talent_hours(container: Container) -> Decimal:
    """The summary's talent.hours of today (what a bill would say)."""
    lines = queries.lines_in_scope(container.catalog, ORG, service_line_id=TALENT)
    summary = queries.summarize(container.catalog, container.rollups, ORG, lines, TODAY, TODAY)
    (meter,) = [m for m in summary["by_service_line"][0]["meters"] if m["meter"] == "talent.hours"]
    return Decimal(meter["quantity"])


def assert_exact(container: Container) -> None:
    """Every day and hour rollup of the line equals its raw records (a void counts -1 event, an adjustment 0),
    and every record is in exactly one applied marker."""
    records = list(container.events.iter_line(ORG, TALENT, FAR_PAST, FAR_FUTURE))
    want: dict[tuple[str, str, str, str], tuple[Decimal, int]] = defaultdict(lambda: (Decimal(0), 0))
    for r in records:
        hour = r.event_time.astimezone(UTC).strftime("%Y-%m-%dT%H")
        for k in ((r.meter, "D", r.period_date.isoformat(), ""), (r.meter, "H", r.period_date.isoformat(), hour)):
            q, n = want[k]
            want[k] = (q + r.quantity, n + r.tally)
    day = container.rollups.day_rollups(ORG, TALENT, FAR_PAST, FAR_FUTURE, consistent=True)
    hours = container.rollups.hour_rollups(ORG, TALENT, "2000-01-01T00", "2100-01-01T00")
    have = {(r.key.meter, r.key.grain, r.key.period_date, r.key.hour): (r.quantity, r.event_count) for r in day + hours}
    assert have == dict(want)
    counted = Counter(event_id for chunk in markers(container).values() for event_id in chunk)
    assert [i for i, n in counted.items() if n > 1] == [], "a record is in two applied markers"
    assert {r.id for r in records} <= set(counted)


def test_void_under_redelivery_and_a_crash_counts_once(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = ingest_timesheets(pipe, "v")
    assert talent_hours(container) == Decimal(88)
    first = void(container, wrong, "void-1")
    assert first.status == "accepted" and first.record.quantity == Decimal(-80)
    assert void(container, wrong, "void-1") == adjustments.CorrectionOutcome("duplicate", first.record)
    assert void(container, wrong, "void-2").record == first.record  # voiding twice: the same void

    [message] = pipe.receive()  # one message: the replays wrote nothing
    with monkeypatch.context() as patch:  # the worker dies in its transaction
        crash_rollups_after(patch, container, transactions=0)
        with pytest.raises(InjectedCrash):
            pipe.deliver([message])
    assert talent_hours(container) == Decimal(88)
    [again] = pipe.receive()
    assert pipe.invoke([again]) == set()  # applied; the delete is lost
    [third] = pipe.redeliver([again])
    assert pipe.deliver([third]) == set()
    assert pipe.queue_depth() == 0
    assert talent_hours(container) == Decimal(8)
    assert_exact(container)
    stored = store(container).get(ORG, f"K#{wrong.idempotency_key}")
    assert stored is not None and stored.voided_by == first.record.id and stored.quantity == Decimal(80)


def test_adjustment_whose_message_is_lost_is_rolled_up_once_by_the_sweeper(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = ingest_timesheets(pipe, "a")
    with monkeypatch.context() as patch:
        fail_enqueues(patch, container)
        outcome = adjust(container, wrong, "adj-1")
    assert outcome.status == "accepted"
    assert pipe.queue_depth() == 0
    assert talent_hours(container) == Decimal(88)
    assert pipe.sweep(NOW + timedelta(minutes=6)) == [outcome.record.batch_id]
    [message] = pipe.receive()
    assert pipe.invoke([message]) == set()
    pipe.release([message])  # delivered again, and a copy of it as well
    pipe.send_raw(message["Body"])
    pipe.drain()
    assert adjust(container, wrong, "adj-1").status == "duplicate"
    assert pipe.queue_depth() == 0
    assert talent_hours(container) == Decimal(16)  # the corrected timesheet's 8 hours and the other's 8
    assert pipe.pending() == []
    assert_exact(container)
    marked = store(container).get(ORG, f"K#{wrong.idempotency_key}")
    assert marked is not None and marked.adjusted_by == (outcome.record.id,) and marked.quantity == Decimal(80)
