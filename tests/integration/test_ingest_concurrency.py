"""Ingest under concurrency and failure: exactly one event per key, and an accepted event is never lost.

The concurrent cases call the service (`chalicelib.services.ingest.ingest`) from many threads.
They do not go through chalice.test.Client: Chalice keeps the request being handled in a plain
attribute of the app (`app.current_request`), shared by every thread, so concurrent requests through
one test client would read each other's requests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.container import Container
from chalicelib.domain.usage import UsageDraft
from chalicelib.errors import MeteringError
from chalicelib.services.ingest import IngestOutcome, ingest
from chalicelib.storage.events_repo import slot_for
from tests.conftest import auth
from tests.support import pending_records, stored_events, take_queued_messages

ORG = "ORG-26-090500"
TALENT = "LIN-26-084729"
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
CALLERS = 50


def draft(quantity: str = "8", key: str | None = "concurrent-1", **changes: Any) -> UsageDraft:
    values: dict[str, Any] = {
        "service_line_id": TALENT,
        "meter": "talent.hours",
        "quantity": Decimal(quantity),
        "period_date": date(2026, 5, 10),
        "event_time": None,
        "source": "api",
        "metadata": {},
        "idempotency_key": key,
    }
    values.update(changes)
    return UsageDraft(**values)


def all_at_once(calls: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..calls-1) on as many threads, released together."""
    barrier = threading.Barrier(calls)

    def run(index: int) -> Any:
        barrier.wait()
        return fn(index)

    with ThreadPoolExecutor(max_workers=calls) as pool:
        return list(pool.map(run, range(calls)))


def ingest_one(container: Container, item: UsageDraft | MeteringError, queue: Any = None) -> IngestOutcome:
    (outcome,) = ingest(
        [item], ORG, container.catalog, container.events, queue or container.queue, NOW, source_default="api"
    )
    return outcome


class FailingQueue:
    """A queue whose every send fails, as SQS does when it is unreachable."""

    def __init__(self) -> None:
        self.attempts = 0

    def send(self, body: str, attributes: dict[str, str] | None = None) -> None:
        self.attempts += 1
        raise ConnectionError("SQS is unreachable")


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
    # only the winner's batch is left to roll up, and it is queued once
    (pending,) = pending_records(container)
    assert [tuple(pair) for pair in pending["events"]] == [("K#concurrent-1", event_id)]
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
    assert len(pending_records(container)) == 1
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


def test_a_refused_draft_whose_key_cannot_be_looked_up_is_503_not_the_refusal(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It may be a replay: answering the paused line's 409 would tell a retrying client to give up.
    assert ingest_one(container, draft(key="lookup-1")).status == "accepted"
    line = container.catalog.get_service_line(ORG, TALENT)
    assert line is not None
    container.catalog.put_service_line(line.model_copy(update={"status": "paused"}))

    def unreachable(organization_id: str, slot: str) -> None:
        raise ConnectionError("DynamoDB is unreachable")

    monkeypatch.setattr(container.events, "get", unreachable)
    outcome = ingest_one(container, draft(key="lookup-1"))
    assert outcome.status == "rejected"
    assert outcome.error is not None and outcome.error.code == "service_unavailable"
    assert len(stored_events(container)) == 1


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


# -- the SQS hand-off ----------------------------------------------------------------


def test_failed_enqueue_still_accepts_and_leaves_the_pending_record(container: Container) -> None:
    queue = FailingQueue()
    items: list[UsageDraft | MeteringError] = [draft(quantity="1", key="lost-0"), draft(quantity="2", key=None)]
    outcomes = ingest(items, ORG, container.catalog, container.events, queue, NOW)

    assert queue.attempts == 1
    assert [o.status for o in outcomes] == ["accepted", "accepted"]
    events = [o.event for o in outcomes if o.event is not None]
    stored = {e["id"]: e for e in stored_events(container)}
    assert set(stored) == {e.id for e in events}
    assert stored[events[0].id]["quantity"] == 1 and stored[events[1].id]["quantity"] == 2

    (pending,) = pending_records(container)
    assert pending["sk"] == events[0].batch_id
    assert pending["organization_id"] == ORG
    expected = sorted((slot_for(e.idempotency_key, e.id), e.id) for e in events)
    assert sorted(tuple(pair) for pair in pending["events"]) == expected
    assert take_queued_messages(container) == []


def test_failed_enqueue_through_the_api_is_still_201(
    client: Any, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(container, "queue", FailingQueue())
    payload = {"service_line_id": TALENT, "meter": "talent.hours", "quantity": 3, "idempotency_key": "api-lost"}
    response = client.http.post("/v1/metering/events", headers=auth(), body=json.dumps(payload))
    assert response.status_code == 201
    event_id = json.loads(response.body)["data"]["id"]
    (stored,) = stored_events(container)
    assert stored["id"] == event_id
    (pending,) = pending_records(container)
    assert [tuple(pair) for pair in pending["events"]] == [("K#api-lost", event_id)]
    # a retry finds the event; it is not stored twice
    again = client.http.post("/v1/metering/events", headers=auth(), body=json.dumps(payload))
    assert again.status_code == 200 and json.loads(again.body)["data"]["id"] == event_id
    assert len(stored_events(container)) == 1


def test_successful_enqueue_sends_one_message_listing_the_written_events(container: Container) -> None:
    earlier = ingest_one(container, draft(quantity="5", key="earlier"))
    assert earlier.event is not None
    take_queued_messages(container)

    items: list[UsageDraft | MeteringError] = [
        draft(quantity="1", key="w-0"),  # written
        draft(quantity="5", key="earlier"),  # duplicate of an earlier request: not written again
        draft(quantity="1", key="w-0"),  # duplicate within the batch
        draft(quantity="2", key="w-0"),  # conflict within the batch
        draft(quantity="1", key="w-1", service_line_id="LIN-26-999999"),  # rejected
        draft(quantity="4", key=None),  # written
        draft(quantity="6", key="earlier"),  # conflict with the earlier request
    ]
    outcomes = ingest(items, ORG, container.catalog, container.events, container.queue, NOW)
    assert [o.status for o in outcomes] == [
        "accepted",
        "duplicate",
        "duplicate",
        "conflict",
        "rejected",
        "accepted",
        "conflict",
    ]
    written = [o.event for o in outcomes if o.status == "accepted" and o.event is not None]
    assert outcomes[1].event is not None and outcomes[1].event.id == earlier.event.id
    assert outcomes[2].event is not None and outcomes[2].event.id == written[0].id

    (message,) = take_queued_messages(container)
    assert message["origin"] == "ingest"
    assert message["org"] == ORG
    assert message["batch"] == written[0].batch_id
    assert sorted(tuple(pair) for pair in message["events"]) == sorted(
        (slot_for(e.idempotency_key, e.id), e.id) for e in written
    )
    assert len(stored_events(container)) == 3  # earlier + the two written


def test_batch_with_nothing_written_leaves_no_pending_record_and_sends_nothing(container: Container) -> None:
    first = ingest_one(container, draft(key="only"))
    assert first.status == "accepted"
    take_queued_messages(container)
    pending_before = pending_records(container)

    items: list[UsageDraft | MeteringError] = [draft(key="only"), draft(quantity="9", key="only")]
    outcomes = ingest(items, ORG, container.catalog, container.events, container.queue, NOW)
    assert [o.status for o in outcomes] == ["duplicate", "conflict"]
    assert pending_records(container) == pending_before
    assert take_queued_messages(container) == []
    assert len(stored_events(container)) == 1
