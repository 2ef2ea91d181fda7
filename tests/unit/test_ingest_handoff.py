"""Ingest's hand-off to the rollups, use case by use case: the pending record, the one message listing
what was written, and what a failed enqueue or an unreadable key leaves (over the in-memory stores;
the concurrent cases are in tests/integration/test_ingest_concurrency.py, on the emulator)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.container import Container
from chalicelib.domain.pipeline import slot_for
from chalicelib.domain.usage import UsageDraft
from chalicelib.errors import MeteringError
from chalicelib.services.ingest import IngestOutcome, ingest
from tests.conftest import auth
from tests.support import pending_records, stored_events, take_queued_messages

ORG = "ORG-26-090500"
TALENT = "LIN-26-084729"
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


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


# -- a replay that cannot be looked up -------------------------------------------------


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
