"""The event store's corrections contract (`locate`, `put_correction`), over DynamoDB and in memory alike:
a correction is stored with the mark on its event in one step or not at all, an event is voided at most
once, a voided event takes no adjustment, and the mark never changes anything else of the event."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from chalicelib.domain import adjustments as rules
from chalicelib.domain.models import UsageEvent
from chalicelib.domain.pipeline import slot_for
from chalicelib.services.adjustments import CorrectionStore
from chalicelib.services.ports import EventStore

ORG = "ORG-26-000001"
LINE = "LIN-26-000001"
NOW = datetime(2026, 5, 14, 15, 30, tzinfo=UTC)
DAY = NOW.date()


def event(event_id: str, quantity: str = "80", key: str | None = None) -> UsageEvent:
    return UsageEvent(
        id=event_id,
        organization_id=ORG,
        workspace_id="WS-26-000001",
        service_line_id=LINE,
        meter="talent.hours",
        quantity=Decimal(quantity),
        unit="hours",
        period_date=DAY,
        event_time=NOW,
        recorded_at=NOW,
        source="api",
        metadata={"talent_id": "SCR-1"},
        idempotency_key=key,
        payload_hash="h",
        batch_id="B" + "0" * 26,
    )


def correction(kind: str, record_id: str, corrects: str, quantity: str, key: str | None = None) -> UsageEvent:
    return event(record_id, quantity, key).model_copy(
        update={"kind": kind, "corrects": corrects, "reason": "80 for 8", "created_by": "key_x"}
    )


def as_corrections(store: EventStore) -> CorrectionStore:
    corrections: CorrectionStore = store  # type: ignore[assignment]
    return corrections


def test_a_void_is_stored_with_its_mark_once(event_store: EventStore) -> None:
    store = as_corrections(event_store)
    original = event(rules.void_id(NOW).replace("VOID", "USAGE"), key="ts-1")
    assert store.put_new(original, "K#ts-1").stored
    first = correction("void", rules.void_id(NOW), original.id, "-80", "v-1")
    assert store.put_correction(first, "K#v-1", "K#ts-1")
    marked = store.get(ORG, "K#ts-1")
    assert marked is not None
    assert (marked.voided_by, marked.void_slot, marked.quantity) == (first.id, "K#v-1", Decimal(80))
    assert marked.model_copy(update={"voided_by": None, "void_slot": None}) == original  # nothing else changed
    stored = store.get(ORG, "K#v-1")
    assert stored is not None and (stored.kind, stored.corrects, stored.quantity) == ("void", original.id, Decimal(-80))
    # a second void (another key) and an adjustment of the voided event are refused, nothing written
    second = correction("void", rules.void_id(NOW), original.id, "-80", "v-2")
    assert not store.put_correction(second, "K#v-2", "K#ts-1")
    late = correction("adjustment", rules.adjustment_id(NOW), original.id, "-72", "a-1")
    assert not store.put_correction(late, "K#a-1", "K#ts-1")
    assert store.get(ORG, "K#v-2") is None and store.get(ORG, "K#a-1") is None
    # a taken slot is refused too
    assert not store.put_correction(correction("void", rules.void_id(NOW), "x", "-1", "v-1"), "K#v-1", None)


def test_adjustments_add_their_ids_to_the_mark(event_store: EventStore) -> None:
    store = as_corrections(event_store)
    original = event("USAGE-26-01KRKHQS60BX0T9RMXH6V041DV")
    slot = slot_for(None, original.id)
    assert store.put_new(original, slot).stored
    ids = []
    for n in range(2):
        record = correction("adjustment", rules.adjustment_id(NOW + timedelta(seconds=n)), original.id, "-1")
        assert store.put_correction(record, slot_for(None, record.id), slot)
        ids.append(record.id)
    marked = store.get(ORG, slot)
    assert marked is not None and marked.adjusted_by == tuple(sorted(ids)) and marked.voided_by is None
    alone = correction("adjustment", rules.adjustment_id(NOW), "", "5").model_copy(update={"corrects": None})
    assert store.put_correction(alone, slot_for(None, alone.id), None)
    assert not store.put_correction(alone, slot_for(None, "other"), slot_for(None, "USAGE-26-none"))  # no event


def test_locate_finds_a_record_by_id_on_its_line_and_day(event_store: EventStore) -> None:
    store = as_corrections(event_store)
    original = event("USAGE-26-01KRKHQS60BX0T9RMXH6V041DZ", key="ts-9")
    assert store.put_new(original, "K#ts-9").stored
    found = store.locate(ORG, LINE, DAY, DAY, original.id)
    assert found is not None and found[0].id == original.id and found[1] == "K#ts-9"
    wide = store.locate(ORG, LINE, date(2000, 1, 1), date(2100, 1, 1), original.id)
    assert wide is not None and wide[1] == "K#ts-9"
    assert store.locate(ORG, LINE, DAY + timedelta(days=1), DAY + timedelta(days=1), original.id) is None
    assert store.locate(ORG, "LIN-26-000002", DAY, DAY, original.id) is None
    assert store.locate("ORG-26-000002", LINE, DAY, DAY, original.id) is None
