"""The aggregation rules: how states fold, what each aggregation reads, what a meter may declare."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from chalicelib.domain.aggregation import (
    AGGREGATIONS,
    NO_GROUP,
    OTHER_GROUP,
    Contribution,
    Latest,
    RollupState,
    check_event_for_meter,
    fold,
    fold_all,
    value,
)
from chalicelib.domain.models import Meter
from chalicelib.domain.usage import GroupSlot, RollupKey, route
from chalicelib.errors import MeteringError


def contributions(name: str) -> list[RollupState]:
    events = [("3", "2026-04-15T10:00:00.000Z#B", "u1"), ("7", "2026-04-15T09:00:00.000Z#Z", "u2"),
              ("5", "2026-04-15T10:00:00.000Z#C", "u1")]  # fmt: skip
    return [AGGREGATIONS[name].contribution(Contribution(Decimal(q), o, u)) for q, o, u in events]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("sum", 15), ("count", 3), ("max", 7), ("min", 3), ("latest", 5), ("unique_count", 2), ("avg", 5)],
)
def test_each_aggregation_reads_its_value_from_the_folded_cells(name: str, expected: int) -> None:
    parts = contributions(name)
    assert value(name, fold_all(parts)) == expected
    # any order and grouping folds to the same state: a value over many rollups is exact
    assert fold(fold(parts[2], parts[0]), parts[1]) == fold_all(parts)
    assert value(name, RollupState()) == 0  # no usage: 0


def test_latest_breaks_ties_in_event_time_by_event_id() -> None:
    same_time = [
        Latest("2026-04-15T10:00:00.000Z#USAGE-B", Decimal(1)),
        Latest("2026-04-15T10:00:00.000Z#USAGE-A", Decimal(2)),
    ]
    states = [RollupState(latest=latest) for latest in same_time]
    assert value("latest", fold_all(states)) == 1


def test_only_the_additive_cells_go_in_the_marker_transaction() -> None:
    state = fold_all(contributions("unique_count"))
    assert state.additive() == RollupState(Decimal(15), 3)
    assert state.joins().values == {"u1", "u2"} and state.joins().event_count == 0 and state.has_joins
    assert not state.additive().has_joins


def test_values_not_admitted_fold_into_other_and_missing_stays_apart() -> None:
    slot = GroupSlot("ORG", "LIN", "m", "k", "2026-04-15")

    def key(v: str) -> RollupKey:
        return RollupKey("ORG", "LIN", "m", "D", "2026-04-15", "", "k", v)

    states = {key("a"): RollupState(Decimal(1), 1), key("b"): RollupState(Decimal(2), 1),
              key("c"): RollupState(Decimal(4), 1), key(NO_GROUP): RollupState(Decimal(8), 1)}  # fmt: skip
    assert route(states, {slot: frozenset({"a"})}) == {
        key("a"): RollupState(Decimal(1), 1),
        key(OTHER_GROUP): RollupState(Decimal(6), 2),
        key(NO_GROUP): RollupState(Decimal(8), 1),
    }


def test_a_unique_count_event_must_carry_its_value_property() -> None:
    check_event_for_meter("unique_count", "user_id", {"user_id": "u1"})
    check_event_for_meter("unique_count", "user_id", {"user_id": 42})
    check_event_for_meter("sum", None, {})
    for metadata in ({}, {"user_id": True}, {"user_id": ""}, {"user_id": "x" * 129}):
        with pytest.raises(MeteringError) as refused:
            check_event_for_meter("unique_count", "user_id", metadata)
        assert refused.value.field == "metadata.user_id"


def meter(**fields: object) -> Meter:
    return Meter.model_validate({"id": "m", "uuid": "u", "name": "M", "unit": "u", "product_lines": [],
                                 "description": "", **fields})  # fmt: skip


def test_a_meter_declares_a_known_aggregation_its_value_property_and_at_most_two_group_keys() -> None:
    assert meter(group_keys=["a", "b"]).group_by == ("a", "b")  # the former name still reads
    assert meter(aggregation="unique_count", value_property="user_id").value_property == "user_id"
    for bad in (
        {"aggregation": "median"},
        {"aggregation": "unique_count"},
        {"aggregation": "max", "value_property": "x"},
        {"group_by": ["a", "b", "c"]},
        {"group_by": ["a", "a"]},
    ):
        with pytest.raises(ValidationError):
            meter(**bad)
