"""Ingest under concurrency: exactly one event per key, whatever the callers race for (on the emulator;
the hand-off to the rollups and its failures are tests/unit/test_ingest_handoff.py).

The concurrent cases call the service (`chalicelib.services.ingest.ingest`) from many threads.
They do not go through chalice.test.Client: Chalice keeps the request being handled in a plain
attribute of the app (`app.current_request`), shared by every thread, so concurrent requests through
one test client would read each other's requests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from chalicelib.container import Container
from chalicelib.domain.usage import UsageDraft
from chalicelib.errors import MeteringError
from chalicelib.services.ingest import IngestOutcome, ingest
from tests.support import pending_records, stored_events, take_queued_messages
from tests.unit.test_ingest_handoff import ORG, TALENT, draft, ingest_one

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
CALLERS = 50


def all_at_once(calls: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..calls-1) on as many threads, released together."""
    barrier = threading.Barrier(calls)

    def run(index: int) -> Any:
        barrier.wait()
        return fn(index)

    with ThreadPoolExecutor(max_workers=calls) as pool:
        return list(pool.map(run, range(calls)))


# -- one key, many concurrent callers ------------------------------------------------


def test_fifty_concurrent_callers_with_one_key_store_one_event(container: Container) -> None:
    outcomes: list[IngestOutcome] = all_at_once(CALLERS, lambda _: ingest_one(container, draft()))

    statuses = sorted(o.status for o in outcomes)
    assert statuses == ["accepted"] + ["duplicate"] * (CALLERS - 1)
    ids = {o.event.id for o in outcomes if o.event is not None}
    assert len(ids) == 1 and all(o.event is not None for o in outcomes)
    (event_id,) = ids
    assert all(o.error is None for o in outcomes)

    (stored,) = stored_events(container)
    assert stored["id"] == event_id
    assert stored["pk"] == f"EV#{ORG}#K#concurrent-1"
    assert stored["quantity"] == 8
    # only the winner's event is left to roll up, and it is queued once; a single event whose send
    # succeeded leaves no pending record, and the losers' batches leave none either
    assert pending_records(container) == []
    (message,) = take_queued_messages(container)
    assert [tuple(pair) for pair in message["events"]] == [("K#concurrent-1", event_id)]


def test_concurrent_callers_with_one_key_and_two_payloads_agree_on_the_winner(container: Container) -> None:
    # Half the callers report 8 hours, half 9 under the same key: one is stored; the callers with
    # its payload get it (accepted or duplicate), the others a conflict naming it; nothing else is written.
    def call(index: int) -> IngestOutcome:
        return ingest_one(container, draft(quantity="8" if index % 2 else "9", key="contended"))

    outcomes: list[IngestOutcome] = all_at_once(CALLERS, call)
    (stored,) = stored_events(container)
    winner = Decimal(stored["quantity"])
    assert sum(o.status == "accepted" for o in outcomes) == 1
    for index, outcome in enumerate(outcomes):
        mine = Decimal("8" if index % 2 else "9")
        assert outcome.event is not None and outcome.event.id == stored["id"]
        if mine == winner:
            assert outcome.status in ("accepted", "duplicate")
        else:
            assert outcome.status == "conflict"
            assert outcome.error is not None and outcome.error.code == "idempotency_conflict"
    assert pending_records(container) == []  # single events, sent: no pending record (services/ingest.py)
    assert len(take_queued_messages(container)) == 1


def test_concurrent_callers_with_distinct_keys_each_store_their_event(container: Container) -> None:
    outcomes: list[IngestOutcome] = all_at_once(20, lambda i: ingest_one(container, draft(key=f"distinct-{i}")))
    assert [o.status for o in outcomes] == ["accepted"] * 20
    assert len({o.event.id for o in outcomes if o.event}) == 20
    assert len(stored_events(container)) == 20


def test_concurrent_replays_of_a_batch_return_the_same_ids(container: Container) -> None:
    items: list[UsageDraft | MeteringError] = [draft(quantity=str(i), key=f"batch-{i}") for i in range(1, 11)]

    def call(_: int) -> list[IngestOutcome]:
        return ingest(items, ORG, container.catalog, container.events, container.queue, NOW)

    runs: list[list[IngestOutcome]] = all_at_once(10, call)
    ids_per_run = [[o.event.id if o.event else "" for o in run] for run in runs]
    assert all(ids == ids_per_run[0] for ids in ids_per_run)
    assert "" not in ids_per_run[0] and len(set(ids_per_run[0])) == 10
    # each item accepted by exactly one run
    for position in range(10):
        assert sorted(run[position].status for run in runs) == ["accepted"] + ["duplicate"] * 9
    assert len(stored_events(container)) == 10
    queued = [pair[1] for message in take_queued_messages(container) for pair in message["events"]]
    assert sorted(queued) == sorted(ids_per_run[0])  # every event queued exactly once


def test_fifty_concurrent_replays_after_a_pause_answer_the_original_and_write_nothing(container: Container) -> None:
    first = ingest_one(container, draft(quantity="8", key="paused-1"))
    assert first.status == "accepted" and first.event is not None
    take_queued_messages(container)
    line = container.catalog.get_service_line(ORG, TALENT)
    assert line is not None
    container.catalog.put_service_line(line.model_copy(update={"status": "paused"}))
    before = stored_events(container), pending_records(container)

    outcomes: list[IngestOutcome] = all_at_once(CALLERS, lambda _: ingest_one(container, draft(key="paused-1")))
    assert [o.status for o in outcomes] == ["duplicate"] * CALLERS
    assert {o.event.id for o in outcomes if o.event} == {first.event.id}
    assert (stored_events(container), pending_records(container)) == before
    assert take_queued_messages(container) == []
    # a new key is refused by the paused line
    assert ingest_one(container, draft(key="paused-2")).status == "rejected"


def test_fifty_concurrent_first_reports_by_the_default_line_rule_store_one_event(container: Container) -> None:
    # Two active lines rate talent.hours; reports that name none go to the oldest, once.
    line = container.catalog.get_service_line(ORG, TALENT)
    assert line is not None
    container.catalog.put_service_line(
        line.model_copy(update={"id": "LIN-26-300001", "created_at": datetime(2026, 4, 20, tzinfo=UTC)})
    )

    def call(_: int) -> IngestOutcome:
        (outcome,) = ingest(
            [draft(key="by-rule", service_line_id="")],
            ORG,
            container.catalog,
            container.events,
            container.queue,
            NOW,
            line_by_rule=True,
        )
        return outcome

    outcomes: list[IngestOutcome] = all_at_once(CALLERS, call)
    assert sorted(o.status for o in outcomes) == ["accepted"] + ["duplicate"] * (CALLERS - 1)
    (stored,) = stored_events(container)
    assert stored["service_line_id"] == TALENT
    assert {o.event.id for o in outcomes if o.event} == {stored["id"]}
    assert len(take_queued_messages(container)) == 1
