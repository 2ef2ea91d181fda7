"""Meter aggregations: what a rollup stores for each, how contributions fold, and how its value is read.

A rollup's state is made of *cells* of two kinds (docs/architecture.md, "Aggregations"):

- additive cells, `quantity` and `event_count`: every rollup keeps them. They are added
  exactly once, in the transaction that puts the chunk's applied marker;
- join cells, `maximum`, `minimum`, `latest` and `values`: a meter keeps the ones its
  aggregation names. Joining is idempotent, commutative and associative (max, min, the
  latest by (event time, event id), set union), so they are applied at least once, before
  the marker transaction and never inside it.

An aggregation is a name, the join cells it keeps and a function from a (folded) state to its
value. Folding is cell-wise, so the value over many rollups (many hours, days or service lines)
is the value of the fold of their states, for every aggregation. Adding an aggregation made of
existing cells is one entry in AGGREGATIONS (avg is quantity / event_count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from chalicelib.errors import validation_error

# -- bounds (documented in docs/architecture.md) ------------------------------------------------
# A meter groups by at most this many metadata keys.
MAX_GROUP_KEYS = 2
# Distinct values of one group key kept per (organization, service line, meter, period_date); the
# values past it (in the order the aggregator first admits them) are kept together under OTHER_GROUP.
MAX_GROUP_VALUES = 1000
# Distinct values a unique_count rollup item is sized for (one day or hour of one line, meter and
# group); exact up to it, and beyond it until the item's 400 KB limit (see docs/architecture.md).
MAX_UNIQUE_VALUES = 1000
# A unique_count value (the metadata property as text) is at most this long.
MAX_UNIQUE_VALUE_LENGTH = 128

# Group values of a rollup key that are not a metadata value: an event that lacks the key, and the
# values past MAX_GROUP_VALUES. Metadata values starting with NUL are never admitted (they go to OTHER).
NO_GROUP = "\x00none"
OTHER_GROUP = "\x00other"
RESERVED_PREFIX = "\x00"


@dataclass(frozen=True, order=True)
class Latest:
    """The value of the latest event: `at` orders events (event time, then event id)."""

    at: str
    value: Decimal


@dataclass(frozen=True)
class RollupState:
    """The cells of one rollup (or of a fold of rollups, or of one event's contribution)."""

    quantity: Decimal = Decimal(0)
    event_count: int = 0
    maximum: Decimal | None = None
    minimum: Decimal | None = None
    latest: Latest | None = None
    values: frozenset[str] = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        return self == EMPTY

    def additive(self) -> RollupState:
        """The cells added exactly once (in the marker transaction)."""
        return RollupState(self.quantity, self.event_count)

    def joins(self) -> RollupState:
        """The cells joined at least once (before the marker transaction)."""
        return replace(self, quantity=Decimal(0), event_count=0)

    @property
    def has_joins(self) -> bool:
        return self.maximum is not None or self.minimum is not None or self.latest is not None or bool(self.values)


EMPTY = RollupState()


def _pick(a: Any, b: Any, choose: Callable[[Any, Any], Any]) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return choose(a, b)


def fold(a: RollupState, b: RollupState) -> RollupState:
    """Two states as one: additive cells added, join cells joined."""
    return RollupState(
        quantity=a.quantity + b.quantity,
        event_count=a.event_count + b.event_count,
        maximum=_pick(a.maximum, b.maximum, max),
        minimum=_pick(a.minimum, b.minimum, min),
        latest=_pick(a.latest, b.latest, max),
        values=a.values | b.values if b.values else a.values,
    )


def fold_all(states: Iterable[RollupState]) -> RollupState:
    total = EMPTY
    for state in states:
        total = fold(total, state)
    return total


@dataclass(frozen=True)
class Contribution:
    """What one event brings to a rollup, before its aggregation picks the cells."""

    quantity: Decimal
    order: str  # sorts events by (event time, event id)
    unique: str | None  # the unique_count value, as text


@dataclass(frozen=True)
class Aggregation:
    """How a meter aggregates: the join cells it keeps and how its value is read from a state."""

    name: str
    description: str
    value_of: Callable[[RollupState], Decimal]
    keeps_maximum: bool = False
    keeps_minimum: bool = False
    keeps_latest: bool = False
    keeps_values: bool = False

    @property
    def needs_value_property(self) -> bool:
        return self.keeps_values

    def contribution(self, event: Contribution) -> RollupState:
        """One event's contribution: every rollup counts it and adds its quantity; the joins it keeps."""
        return RollupState(
            quantity=event.quantity,
            event_count=1,
            maximum=event.quantity if self.keeps_maximum else None,
            minimum=event.quantity if self.keeps_minimum else None,
            latest=Latest(event.order, event.quantity) if self.keeps_latest else None,
            values=frozenset((event.unique,)) if self.keeps_values and event.unique is not None else frozenset(),
        )


def _mean(total: Decimal, count: int) -> Decimal:
    if count == 0:
        return Decimal(0)
    mean = format((total / count).quantize(Decimal("1e-9"), rounding=ROUND_HALF_EVEN), "f")
    return Decimal(mean.rstrip("0").rstrip(".") if "." in mean else mean)  # plain notation, no trailing zeros


def _or_zero(value: Decimal | None) -> Decimal:
    return Decimal(0) if value is None else value


AGGREGATIONS: dict[str, Aggregation] = {
    a.name: a
    for a in (
        Aggregation("sum", "the sum of the events' quantities", lambda s: s.quantity),
        Aggregation("count", "the number of events", lambda s: Decimal(s.event_count)),
        Aggregation("max", "the largest quantity", lambda s: _or_zero(s.maximum), keeps_maximum=True),
        Aggregation("min", "the smallest quantity", lambda s: _or_zero(s.minimum), keeps_minimum=True),
        Aggregation(
            "latest",
            "the quantity of the latest event (by event time, ties by event id)",
            lambda s: s.latest.value if s.latest is not None else Decimal(0),
            keeps_latest=True,
        ),
        Aggregation(
            "avg",
            "the mean quantity (sum / count, rounded half-even to 9 decimal places)",
            lambda s: _mean(s.quantity, s.event_count),
        ),
        Aggregation(
            "unique_count",
            "the number of distinct values of the metadata property `value_property`",
            lambda s: Decimal(len(s.values)),
            keeps_values=True,
        ),
    )
}
AGGREGATION_NAMES: tuple[str, ...] = tuple(AGGREGATIONS)


def aggregation_of(name: str) -> Aggregation:
    return AGGREGATIONS[name]


def value(name: str, state: RollupState) -> Decimal:
    """The value of a (folded) state under an aggregation."""
    return AGGREGATIONS[name].value_of(state)


def group_text(raw: Any) -> str:
    """A metadata value as the text it is grouped and counted by: plain decimals, true/false."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, Decimal):
        return format(raw, "f")
    return str(raw)


def group_value_of(metadata: Mapping[str, Any], key: str) -> str:
    """The group an event falls in for a key: its value's text, or NO_GROUP without the key."""
    if key not in metadata:
        return NO_GROUP
    return group_text(metadata[key])


def check_event_for_meter(
    aggregation: str, value_property: str | None, metadata: Mapping[str, Any], field_name: str = "metadata"
) -> None:
    """What an event of a meter must carry beyond any event: a unique_count meter's value property
    (a string or number, at most MAX_UNIQUE_VALUE_LENGTH characters as text). A 400 naming the field."""
    if not AGGREGATIONS[aggregation].needs_value_property or value_property is None:
        return
    where = f"{field_name}.{value_property}"
    if value_property not in metadata:
        raise validation_error(where, "is required: the meter counts the distinct values of this property")
    raw = metadata[value_property]
    if isinstance(raw, bool) or not isinstance(raw, (str, int, Decimal)):
        raise validation_error(where, "must be a string or a number")
    text = group_text(raw)
    if not text or len(text) > MAX_UNIQUE_VALUE_LENGTH:
        raise validation_error(where, f"must be 1 to {MAX_UNIQUE_VALUE_LENGTH} characters")
