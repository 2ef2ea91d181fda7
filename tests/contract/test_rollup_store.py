"""The rollup store's contract: the DynamoDB adapter (on the emulator) and the in-memory one answer alike."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from chalicelib.config import Settings
from chalicelib.domain.aggregation import NO_GROUP, OTHER_GROUP, Latest, RollupState
from chalicelib.domain.usage import ApplyUnit, GroupSlot, RollupKey, route
from chalicelib.services.ports import RollupStore
from chalicelib.storage.memory_rollups import MemoryRollupStore
from chalicelib.storage.rollups_repo import DynamoRollupStore

ORG = "ORG-26-090500"
LINE = "LIN-26-091100"
NOW = datetime(2026, 4, 15, 10, 0, tzinfo=UTC)
DAY = "2026-04-15"


@pytest.fixture(params=["dynamodb", "memory"])
def store(request: pytest.FixtureRequest) -> RollupStore:
    if request.param == "memory":
        return MemoryRollupStore()
    settings: Settings = request.getfixturevalue("aws")
    return DynamoRollupStore(settings.rollups_table)


def day_key(meter: str = "agent.runs", group: tuple[str, str] | None = None) -> RollupKey:
    key, value = group or ("", "")
    return RollupKey(ORG, LINE, meter, "D", DAY, "", key, value)


def hour_key(hour: str, meter: str = "agent.runs", group: tuple[str, str] | None = None) -> RollupKey:
    key, value = group or ("", "")
    return RollupKey(ORG, LINE, meter, "H", DAY, f"{DAY}T{hour}", key, value)


def unit(batch: str, chunk: int, deltas: dict[RollupKey, RollupState]) -> ApplyUnit:
    return ApplyUnit(batch, chunk, ORG, (f"USAGE-{batch}-{chunk}",), deltas)


def only(store: RollupStore, rk: RollupKey) -> RollupState:
    rows = [r for r in store.rollups_of_period(ORG, LINE, date.fromisoformat(DAY), with_groups=True) if r.key == rk]
    assert len(rows) == 1, rows
    return rows[0].state


def test_additive_cells_are_added_once_per_marker(store: RollupStore) -> None:
    delta = {day_key(): RollupState(Decimal("1.5"), 2), hour_key("09"): RollupState(Decimal("1.5"), 2)}
    first = store.apply([unit("B1", 0, delta)], NOW)
    again = store.apply([unit("B1", 0, delta), unit("B2", 0, delta)], NOW)
    assert len(first.applied) == 1
    assert [u.batch_id for u in again.already_applied] == ["B1"] and [u.batch_id for u in again.applied] == ["B2"]
    assert only(store, day_key()) == RollupState(Decimal("3.0"), 4)
    assert store.applied_event_ids("B1") == {"USAGE-B1-0"}


def test_join_cells_move_only_up_their_join_whatever_the_order_and_repetition(store: RollupStore) -> None:
    rk = day_key("agent.peak_concurrency")
    contributions = [
        RollupState(
            Decimal(3), 1, maximum=Decimal(3), minimum=Decimal(3), latest=Latest("2026-04-15T10#b", Decimal(3))
        ),
        RollupState(
            Decimal(7), 1, maximum=Decimal(7), minimum=Decimal(7), latest=Latest("2026-04-15T09#z", Decimal(7))
        ),
        RollupState(
            Decimal(5), 1, maximum=Decimal(5), minimum=Decimal(5), latest=Latest("2026-04-15T10#c", Decimal(5))
        ),
    ]
    for index in (2, 0, 1, 0, 2):  # out of order, with redeliveries (same marker: added once)
        store.apply([unit(f"B{index}", 0, {rk: contributions[index]})], NOW)
    state = only(store, rk)
    assert state.maximum == 7 and state.minimum == 3
    assert state.latest == Latest("2026-04-15T10#c", Decimal(5))
    assert state.quantity == 15 and state.event_count == 3


def test_unique_values_are_unioned_exactly(store: RollupStore) -> None:
    rk = day_key("agent.unique_users")
    store.apply([unit("B1", 0, {rk: RollupState(Decimal(1), 1, values=frozenset({"u1", "u2"}))})], NOW)
    store.apply([unit("B2", 0, {rk: RollupState(Decimal(1), 1, values=frozenset({"u2", "u3"}))})], NOW)
    store.apply([unit("B1", 0, {rk: RollupState(Decimal(1), 1, values=frozenset({"u1", "u2"}))})], NOW)
    assert only(store, rk).values == {"u1", "u2", "u3"}


def test_group_rollups_are_read_per_key_and_range(store: RollupStore) -> None:
    deltas = {
        day_key(group=("agent_id", "a1")): RollupState(Decimal(2), 1),
        day_key(group=("agent_id", NO_GROUP)): RollupState(Decimal(1), 1),
        day_key(group=("model", "m#1")): RollupState(Decimal(3), 1),
        hour_key("09", group=("agent_id", "a1")): RollupState(Decimal(2), 1),
        hour_key("10", group=("agent_id", "a1")): RollupState(Decimal(4), 1),
        day_key(): RollupState(Decimal(3), 2),
    }
    store.apply([unit("B1", 0, deltas)], NOW)
    day = date.fromisoformat(DAY)
    by_agent = store.group_day_rollups(ORG, LINE, "agent.runs", "agent_id", day, day)
    assert {r.key.group_value: r.state.quantity for r in by_agent} == {"a1": 2, NO_GROUP: 1}
    by_model = store.group_day_rollups(ORG, LINE, "agent.runs", "model", day, day)
    assert [(r.key.group_value, r.state.quantity) for r in by_model] == [("m#1", Decimal(3))]
    hours = store.group_hour_rollups(ORG, LINE, "agent.runs", "agent_id", f"{DAY}T09", f"{DAY}T10")
    assert [(r.key.hour, r.state.quantity) for r in hours] == [(f"{DAY}T09", Decimal(2))]
    # the ungrouped reads never answer group rollups
    assert [r.key for r in store.day_rollups(ORG, LINE, day, day)] == [day_key()]
    assert store.hour_rollups(ORG, LINE, f"{DAY}T00", f"{DAY}T23") == []
    assert len(store.rollups_of_period(ORG, LINE, day)) == 1
    assert len(store.rollups_of_period(ORG, LINE, day, with_groups=True)) == 6


def test_group_values_past_the_bound_go_to_other_for_good(store: RollupStore) -> None:
    store.max_group_values = 3  # type: ignore[attr-defined]
    slot = GroupSlot(ORG, LINE, "agent.runs", "agent_id", DAY)
    assert store.admit_groups({slot: {"a", "b"}}) == {slot: frozenset({"a", "b"})}
    assert store.admit_groups({slot: {"b", "c", "d", "e"}}) == {slot: frozenset({"b", "c"})}
    # decided once: admitted values stay admitted, refused ones stay refused
    assert store.admit_groups({slot: {"a", "d", "e"}}) == {slot: frozenset({"a"})}
    assert store.admit_groups({slot: {"\x00sneaky"}}) == {slot: frozenset()}
    other = GroupSlot(ORG, LINE, "agent.runs", "model", DAY)
    assert store.admit_groups({other: {"x"}}) == {other: frozenset({"x"})}
    states = {day_key(group=("agent_id", v)): RollupState(Decimal(1), 1) for v in ("a", "d", "e")}
    routed = route(states, store.admit_groups({slot: {"a", "d", "e"}}))
    assert routed == {
        day_key(group=("agent_id", "a")): RollupState(Decimal(1), 1),
        day_key(group=("agent_id", OTHER_GROUP)): RollupState(Decimal(2), 2),
    }


def test_repair_is_conditional_on_the_version_read(store: RollupStore) -> None:
    rk = day_key("agent.peak_concurrency")
    store.apply([unit("B1", 0, {rk: RollupState(Decimal(2), 1, maximum=Decimal(2))})], NOW)
    (seen,) = [r for r in store.rollups_of_period(ORG, LINE, date.fromisoformat(DAY)) if r.key == rk]
    want = RollupState(Decimal(9), 3, maximum=Decimal(8))
    assert store.repair_state(rk, want, seen, NOW)
    assert only(store, rk) == want
    assert not store.repair_state(rk, RollupState(), seen, NOW)  # the version moved on
    missing = day_key("agent.tokens")
    assert store.repair_state(missing, RollupState(Decimal(1), 1), None, NOW)
    assert not store.repair_state(missing, RollupState(Decimal(5), 1), None, NOW)  # it exists now
    # the additive repair keeps the join cells
    (now_seen,) = [r for r in store.rollups_of_period(ORG, LINE, date.fromisoformat(DAY)) if r.key == rk]
    assert store.repair(rk, Decimal(4), 2, now_seen, NOW)
    assert only(store, rk) == RollupState(Decimal(4), 2, maximum=Decimal(8))
