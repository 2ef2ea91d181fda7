"""The event store's contract: the DynamoDB adapter (on the emulator) and the in-memory one answer alike."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from chalicelib.domain.ids import batch_id, ulid_floor, usage_event_id
from chalicelib.domain.models import UsageEvent
from chalicelib.domain.pipeline import PendingBatch, archive_slot, slot_for
from chalicelib.domain.store import StoreError, StoreUnavailable
from chalicelib.services.ports import EventStore
from chalicelib.storage.events_repo import DynamoEventStore
from tests.contract.conftest import as_json

ORG = "ORG-26-090500"
OTHER_ORG = "ORG-26-100200"
LINE = "LIN-26-084729"
OTHER_LINE = "LIN-26-091100"
NOW = datetime(2026, 4, 15, 10, 0, 0, 123000, tzinfo=UTC)
DAY = date(2026, 4, 15)


def event(
    key: str | None = None,
    *,
    org: str = ORG,
    line: str = LINE,
    day: date = DAY,
    meter: str = "talent.hours",
    quantity: str = "1.5",
    at: datetime = NOW,
    batch: str | None = None,
) -> UsageEvent:
    return UsageEvent(
        id=usage_event_id(at),
        organization_id=org,
        workspace_id="WS-26-000001",
        service_line_id=line,
        meter=meter,
        quantity=Decimal(quantity),
        unit="hour",
        period_date=day,
        event_time=at,
        recorded_at=at,
        source="test",
        metadata={"talent_id": "SCR-1", "hours": Decimal("0.000000001"), "approved": True},
        idempotency_key=key,
        payload_hash="h" * 64,
        batch_id=batch or batch_id(at),
    )


def put(store: EventStore, e: UsageEvent) -> str:
    slot = slot_for(e.idempotency_key, e.id)
    assert store.put_new(e, slot).stored
    return slot


# -- events --------------------------------------------------------------------------------------------


def test_a_new_event_is_stored_and_read_back_equal(event_store: EventStore) -> None:
    e = event("k-1")
    outcome = event_store.put_new(e, slot_for("k-1", e.id))
    assert outcome.stored and outcome.existing is None
    assert event_store.get(ORG, "K#k-1") == e
    assert event_store.get(OTHER_ORG, "K#k-1") is None
    assert event_store.get(ORG, "K#k-2") is None


def test_a_taken_slot_answers_with_the_event_stored_there(event_store: EventStore) -> None:
    first = event("k-1")
    put(event_store, first)
    second = event("k-1", quantity="9")
    outcome = event_store.put_new(second, "K#k-1")
    assert not outcome.stored
    assert outcome.existing == first
    assert event_store.get(ORG, "K#k-1") == first
    other = event("k-1", org=OTHER_ORG)  # the same key in another organization is another slot
    assert event_store.put_new(other, "K#k-1").stored


def test_an_event_without_key_lives_under_its_id(event_store: EventStore) -> None:
    e = event()
    slot = put(event_store, e)
    assert slot == f"I#{e.id}"
    assert event_store.get(ORG, slot) == e


def test_replace_expired_moves_the_old_event_aside_atomically(event_store: EventStore) -> None:
    old = event("k-1")
    put(event_store, old)
    new = event("k-1", quantity="2", at=NOW + timedelta(days=3))
    assert event_store.replace_expired(old, new, "K#k-1")
    assert event_store.get(ORG, "K#k-1") == new
    assert event_store.get(ORG, archive_slot(old.id)) == old
    # the slot no longer holds `old`: a second replacement from the same stale read fails, nothing changes
    newer = event("k-1", quantity="3", at=NOW + timedelta(days=4))
    assert not event_store.replace_expired(old, newer, "K#k-1")
    assert event_store.get(ORG, "K#k-1") == new


def test_replace_expired_of_a_missing_event_fails(event_store: EventStore) -> None:
    old, new = event("k-1"), event("k-1", quantity="2")
    assert not event_store.replace_expired(old, new, "K#k-1")
    assert event_store.get(ORG, "K#k-1") is None
    assert event_store.get(ORG, archive_slot(old.id)) is None


def test_get_many_answers_the_found_slots_only(event_store: EventStore) -> None:
    stored = [event(f"k-{i}") for i in range(130)]  # more than one BatchGetItem
    for e in stored:
        put(event_store, e)
    slots = [f"K#k-{i}" for i in range(130)] + ["K#missing", "K#k-3"]
    found = event_store.get_many(ORG, slots)
    assert set(found) == {f"K#k-{i}" for i in range(130)}
    assert all(found[f"K#k-{i}"] == stored[i] for i in range(130))
    assert event_store.get_many(OTHER_ORG, slots) == {}


# -- listing a line ------------------------------------------------------------------------------------


def line_events(store: EventStore) -> list[UsageEvent]:
    """Events over four days on LINE (two meters), and some that must never be listed with them."""
    made: list[UsageEvent] = []
    for offset in range(4):
        for n in range(3):
            meter = "agent.runs" if n == 2 else "talent.hours"
            e = event(f"d{offset}-{n}", day=DAY + timedelta(days=offset), meter=meter)
            put(store, e)
            made.append(e)
    put(store, event("other-line", line=OTHER_LINE))
    put(store, event("other-org", org=OTHER_ORG))
    return sorted(made, key=lambda e: (e.period_date, e.id))


def test_query_line_lists_a_period_in_period_date_then_id_order(event_store: EventStore) -> None:
    made = line_events(event_store)
    rows, last = event_store.query_line(ORG, LINE, DAY + timedelta(days=1), DAY + timedelta(days=2), limit=100)
    assert [e for e, _ in rows] == [e for e in made if DAY + timedelta(days=1) <= e.period_date <= DAY + timedelta(2)]
    assert last is None
    assert list(event_store.iter_line(ORG, LINE, DAY, DAY + timedelta(days=3))) == made
    assert list(event_store.iter_line(ORG, OTHER_LINE, DAY, DAY)) != []
    assert list(event_store.iter_line(ORG, LINE, DAY - timedelta(days=9), DAY - timedelta(days=1))) == []


def test_query_line_pages_resume_after_their_position(event_store: EventStore) -> None:
    made = line_events(event_store)
    seen: list[UsageEvent] = []
    position: dict[str, Any] | None = None
    pages = 0
    while True:
        rows, position = event_store.query_line(ORG, LINE, DAY, DAY + timedelta(days=3), position, limit=5)
        pages += 1
        assert len(rows) <= 5
        for _, own in rows:
            assert set(own) == {"pk", "sk", "gsi1pk", "gsi1sk"}
            assert all(set(v) == {"S"} for v in own.values())
        seen.extend(e for e, _ in rows)
        if position is None:
            break
        assert position == rows[-1][1]  # a page ends where its last event is
        position = as_json(position)
    assert seen == made
    assert pages == 3


def test_query_line_filters_a_meter_within_the_examined_page(event_store: EventStore) -> None:
    made = line_events(event_store)
    runs = [e for e in made if e.meter == "agent.runs"]
    seen: list[UsageEvent] = []
    position: dict[str, Any] | None = None
    while True:
        rows, position = event_store.query_line(ORG, LINE, DAY, DAY + timedelta(days=3), position, 4, "agent.runs")
        assert all(e.meter == "agent.runs" for e, _ in rows)
        seen.extend(e for e, _ in rows)
        if position is None:
            break
    assert seen == runs


def test_a_position_of_another_line_or_organization_is_refused(event_store: EventStore) -> None:
    line_events(event_store)
    rows, _ = event_store.query_line(ORG, LINE, DAY, DAY, limit=1)
    [(_, own)] = rows
    with pytest.raises(ValueError):
        event_store.query_line(ORG, OTHER_LINE, DAY, DAY, own)
    with pytest.raises(ValueError):
        event_store.query_line(OTHER_ORG, LINE, DAY, DAY, own)
    with pytest.raises(ValueError):
        event_store.query_line(ORG, LINE, DAY, DAY, {"pk": "EV"})
    with pytest.raises(ValueError):
        event_store.query_line(ORG, LINE, DAY, DAY, {**own, "sk": {"N": "1"}})


# -- pending batches -----------------------------------------------------------------------------------


def pending(at: datetime, events: int = 2) -> PendingBatch:
    return PendingBatch(batch_id(at), ORG, at, tuple((f"K#p-{n}", usage_event_id(at)) for n in range(events)))


def test_pending_batches_are_listed_before_a_cutoff(event_store: EventStore) -> None:
    early = [pending(NOW + timedelta(seconds=n)) for n in range(12)]  # every shard more or less
    late = pending(NOW + timedelta(minutes=10))
    for b in [*early, late]:
        event_store.put_pending(b)
    cutoff = "B" + ulid_floor(NOW + timedelta(minutes=5))  # as the sweeper cuts
    listed = list(event_store.pending_before(cutoff))
    assert sorted(b.batch_id for b in listed) == sorted(b.batch_id for b in early)
    assert {b.batch_id: b for b in listed} == {b.batch_id: b for b in early}
    assert all(b.last_enqueued_at is None and b.dead_lettered_at is None for b in listed)
    assert event_store.is_pending(late.batch_id)
    event_store.delete_pending(late.batch_id)
    event_store.delete_pending(late.batch_id)  # twice is harmless
    assert not event_store.is_pending(late.batch_id)
    event_store.delete_pending_many([b.batch_id for b in early[:30]] * 2)
    assert list(event_store.pending_before("~")) == []


def test_pending_before_lists_every_batch_of_a_big_backlog(event_store: EventStore) -> None:
    batches = [pending(NOW + timedelta(milliseconds=n), events=1) for n in range(120)]
    for b in batches:
        event_store.put_pending(b)
    listed = list(event_store.pending_before("~", limit=7))  # pages of 7 per shard
    assert sorted(b.batch_id for b in listed) == sorted(b.batch_id for b in batches)


def test_a_pending_batch_is_claimed_once_per_grace_period(event_store: EventStore) -> None:
    b = pending(NOW)
    event_store.put_pending(b)
    grace = timedelta(minutes=5)
    at = NOW + timedelta(minutes=6)
    assert event_store.claim_for_requeue(b.batch_id, at, at - grace)
    assert not event_store.claim_for_requeue(b.batch_id, at, at - grace)  # another sweeper, same run
    [listed] = event_store.pending_before("~")
    assert listed.last_enqueued_at == at
    later = at + grace + timedelta(seconds=1)
    assert event_store.claim_for_requeue(b.batch_id, later, later - grace)
    assert not event_store.claim_for_requeue("B" + "0" * 26, later, later - grace)  # not pending: never claimed


def test_dead_lettering_is_noted_on_pending_batches_only(event_store: EventStore) -> None:
    b = pending(NOW)
    event_store.put_pending(b)
    event_store.mark_dead_lettered(b.batch_id, NOW + timedelta(minutes=1), "poison")
    [listed] = event_store.pending_before("~")
    assert listed.dead_lettered_at == NOW + timedelta(minutes=1)
    gone = batch_id(NOW)
    event_store.mark_dead_lettered(gone, NOW, "poison")  # not pending: nothing is created
    assert not event_store.is_pending(gone)
    assert [x.batch_id for x in event_store.pending_before("~")] == [b.batch_id]


# -- errors (the DynamoDB adapter's own: the memory store cannot fail) ---------------------------------


class Refusing:
    """A DynamoDB client whose every call raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            raise self.error

        return call


@pytest.mark.parametrize(
    "error",
    [
        ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, "PutItem"),
        ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "x"}}, "PutItem"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ],
)
def test_the_dynamodb_store_raises_its_own_exceptions(error: Exception) -> None:
    store = DynamoEventStore("events", client=Refusing(error))  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable) as raised:
        store.put_new(event("k"), "K#k")
    assert raised.value.__cause__ is error
    with pytest.raises(StoreUnavailable):
        list(store.pending_before("~"))
    with pytest.raises(StoreUnavailable):
        store.get(ORG, "K#k")


@pytest.mark.parametrize(
    "quantity", ["0", "1000000000000", "999999999999.999999999", "0.000000001", "2.5", "1E+12", "25E-1"]
)
def test_quantities_come_back_exactly(event_store: EventStore, quantity: str) -> None:
    e = event("k-q", quantity=quantity)
    put(event_store, e)
    stored = event_store.get(ORG, "K#k-q")
    assert stored is not None and stored.quantity == Decimal(quantity)


@pytest.mark.parametrize(
    ("spelling", "refusal"),
    [("0E+200", ArithmeticError), ("1." + "0" * 40, ArithmeticError), ("1E-131", StoreError)],
)
def test_a_number_dynamodb_cannot_store_is_refused_and_nothing_is_written(
    event_store: EventStore, spelling: str, refusal: type[Exception]
) -> None:
    """What usage.storable exists for: a value spelled beyond DynamoDB's numbers is refused by either store
    (boto3's serializer will not round it; DynamoDB refuses one outside its range)."""
    e = event("k-bad", quantity=spelling)
    with pytest.raises(refusal):
        event_store.put_new(e, "K#k-bad")
    assert event_store.get(ORG, "K#k-bad") is None


@pytest.mark.parametrize("metadata", [{"note": "\ud800"}, {"\udc00": 1}])
def test_text_that_is_not_utf8_is_refused_and_nothing_is_written(
    event_store: EventStore, metadata: dict[str, Any]
) -> None:
    """A lone surrogate cannot be sent to DynamoDB: the API must refuse it before (either store raises)."""
    e = event("k-s").model_copy(update={"metadata": metadata})
    with pytest.raises(UnicodeEncodeError):
        event_store.put_new(e, "K#k-s")
    assert event_store.get(ORG, "K#k-s") is None
