"""Usage events: what a valid report is, how it is fingerprinted, and how it rolls up."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import simplejson

from chalicelib.domain.aggregation import (
    EMPTY,
    NO_GROUP,
    OTHER_GROUP,
    Contribution,
    RollupState,
    aggregation_of,
    fold,
    group_text,
    group_value_of,
)
from chalicelib.domain.models import Meter, UsageEvent, instant
from chalicelib.domain.timestamps import TimestampError, parse_iso8601
from chalicelib.errors import validation_error

# Limits a caller meets (documented in the README).
MAX_QUANTITY = Decimal(10) ** 12
MAX_DECIMAL_PLACES = 9
PERIOD_DAYS_BACK = 62
PERIOD_DAYS_FORWARD = 1
MAX_CLOCK_SKEW = timedelta(minutes=5)
IDEMPOTENCY_WINDOW = timedelta(hours=48)
MAX_IDEMPOTENCY_KEY = 128
MAX_METADATA_KEYS = 16
MAX_METADATA_BYTES = 512
MAX_METADATA_STRING = 256
MAX_BATCH_EVENTS = 100
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_SOURCE = re.compile(r"^[a-z0-9_.\-]{1,64}$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")

MetadataValue = str | int | Decimal | bool
# Meters that count whole things: a fractional quantity is refused at ingest (Scalr's runs-count is an integer).
WHOLE_METERS = frozenset({"agent.runs"})


def check_quantity(value: Any, field: str = "quantity") -> Decimal:
    """A quantity: a JSON number, finite, 0 <= q <= 10^12, at most 9 decimal places."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise validation_error(field, "must be a JSON number")
    try:
        quantity = Decimal(value)
    except InvalidOperation:
        raise validation_error(field, "must be a number") from None
    if not quantity.is_finite():
        raise validation_error(field, "must be finite")
    if quantity < 0:
        raise validation_error(field, "must not be negative")
    if quantity > MAX_QUANTITY:
        raise validation_error(field, f"must be at most {MAX_QUANTITY:f}")
    if decimal_places(quantity) > MAX_DECIMAL_PLACES:
        raise validation_error(field, f"must have at most {MAX_DECIMAL_PLACES} decimal places")
    return storable(quantity)


def storable(number: Decimal) -> Decimal:
    """The same value spelled so DynamoDB can store it: 0e200 -> 0, 1.000...(40 zeros) -> 1, -0.0 -> 0."""
    if number.is_zero():
        return Decimal(0)
    return number.quantize(Decimal(1).scaleb(-decimal_places(number)))


def decimal_places(number: Decimal) -> int:
    """Decimal places that matter (trailing zeros do not), without rounding to the context."""
    _sign, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int) or not any(digits):
        return 0
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + min(trailing, max(0, -exponent))))


def check_period_date(value: Any, today: date, field: str = "period_date", days_back: int = PERIOD_DAYS_BACK) -> date:
    """A real YYYY-MM-DD date, at most `days_back` days back (the stage's bound) and 1 day ahead of today (UTC)."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise validation_error(field, "must be a date in YYYY-MM-DD form")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise validation_error(field, "is not a real calendar date") from None
    check_period_window(day, today, field, days_back)
    return day


def check_period_window(day: date, today: date, field: str, days_back: int = PERIOD_DAYS_BACK) -> None:
    """A 400 naming the field, the bound and the first (or last) date accepted, for a day outside the window."""
    earliest, latest = today - timedelta(days=days_back), today + timedelta(days=PERIOD_DAYS_FORWARD)
    if day < earliest:
        raise validation_error(
            field,
            f"{day.isoformat()} is too late to report: usage may be at most {days_back} days back "
            f"(this service's late-event bound), so the earliest date accepted today is {earliest.isoformat()}",
        )
    if day > latest:
        raise validation_error(
            field,
            f"{day.isoformat()} is in the future: usage may be at most {PERIOD_DAYS_FORWARD} day ahead "
            f"(UTC), so the latest date accepted today is {latest.isoformat()}",
        )


def check_timestamp(value: Any, now: datetime, field: str = "timestamp", days_back: int = PERIOD_DAYS_BACK) -> datetime:
    """An ISO-8601 timestamp with a zone (a bare date is that day's start in UTC), not in the future
    (5 min skew) nor past the late window."""
    if not isinstance(value, str) or len(value) > 40:
        raise validation_error(field, "must be an ISO-8601 timestamp")
    try:
        parsed = parse_iso8601(value)
    except TimestampError as bad:
        raise validation_error(field, bad.reason) from None
    if parsed > now + MAX_CLOCK_SKEW:
        raise validation_error(field, "must not be in the future")
    check_period_window(parsed.date(), now.date(), field, days_back)
    return parsed


def check_idempotency_key(value: Any, field: str = "idempotency_key") -> str:
    if not isinstance(value, str) or not value:
        raise validation_error(field, "must be a non-empty string")
    if len(value) > MAX_IDEMPOTENCY_KEY:
        raise validation_error(field, f"must be at most {MAX_IDEMPOTENCY_KEY} characters")
    if not _PRINTABLE.fullmatch(value):
        raise validation_error(field, "must be printable ASCII without spaces")
    return value


def check_source(value: Any, field: str = "source") -> str:
    if not isinstance(value, str) or not _SOURCE.fullmatch(value):
        raise validation_error(field, "must be 1-64 characters of a-z, 0-9, '_', '.', '-'")
    return value


def check_metadata(value: Any, field: str = "metadata") -> dict[str, MetadataValue]:
    """An object of at most 16 string, number or boolean values, at most 512 bytes as JSON."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise validation_error(field, "must be an object")
    if len(value) > MAX_METADATA_KEYS:
        raise validation_error(field, f"must have at most {MAX_METADATA_KEYS} keys")
    clean: dict[str, MetadataValue] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
            raise validation_error(f"{field}.{key}"[:80], "keys must be 1-64 characters of A-Z, a-z, 0-9, _ . : -")
        if isinstance(item, bool):
            clean[key] = item
        elif isinstance(item, (int, Decimal)):
            number = Decimal(item)
            if not number.is_finite() or abs(number) >= Decimal(10) ** 18 or decimal_places(number) > 9:
                raise validation_error(f"{field}.{key}", "numbers must be below 10^18 with at most 9 decimal places")
            clean[key] = item if isinstance(item, int) else storable(number)
        elif isinstance(item, str):
            if not _encodable(item):
                raise validation_error(f"{field}.{key}", "strings must be valid Unicode (no lone surrogates)")
            if len(item) > MAX_METADATA_STRING:
                raise validation_error(f"{field}.{key}", f"strings must be at most {MAX_METADATA_STRING} characters")
            clean[key] = item
        else:
            raise validation_error(f"{field}.{key}", "values must be strings, numbers or booleans")
    if len(simplejson.dumps(clean, use_decimal=True, separators=(",", ":"), ensure_ascii=False).encode()) > (
        MAX_METADATA_BYTES
    ):
        raise validation_error(field, f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return clean


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def canonical_number(value: Decimal | int) -> str:
    """One spelling per value: 8, 8.0 and 8.00 are the same number, and so are 0 and -0.0."""
    number = Decimal(value)
    if number.is_zero():
        return "0"
    return format(number.normalize(), "f")


def _canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, Decimal)):
        return {"#n": canonical_number(value)}
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(value: Any) -> str:
    """The SHA-256 of a request's canonical JSON: what a replay of an idempotency key must match."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class UsageDraft:
    """A validated report of usage, before it is stored."""

    service_line_id: str
    meter: str
    quantity: Decimal
    period_date: date
    event_time: datetime | None
    source: str
    metadata: Mapping[str, MetadataValue]
    idempotency_key: str | None
    period_date_given: bool = True

    def payload_hash(self) -> str:
        """The fingerprint a replay must match: everything the caller chose, nothing the server did.

        A period_date the server filled in (today) is left out, so a retry across UTC midnight is a replay.
        """
        payload = {
            "service_line_id": self.service_line_id,
            "meter": self.meter,
            "quantity": self.quantity,
            "period_date": self.period_date.isoformat() if self.period_date_given else None,
            "event_time": self.event_time.isoformat() if self.event_time else None,
            "source": self.source,
            "metadata": dict(self.metadata),
        }
        return fingerprint(payload)


def within_idempotency_window(first_accepted: datetime, now: datetime) -> bool:
    return now - first_accepted < IDEMPOTENCY_WINDOW


def hour_of(moment: datetime) -> str:
    """The UTC hour an event time falls in, as YYYY-MM-DDTHH."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


@dataclass(frozen=True, order=True)
class RollupKey:
    """One rollup: a day (by period_date) or an hour (by event time) of an organization's line's meter,
    either of all its usage or (with group_key) of the usage whose metadata has one group value."""

    organization_id: str
    service_line_id: str
    meter: str
    grain: str  # "D" or "H"
    period_date: str
    hour: str = ""
    group_key: str = ""
    group_value: str = ""

    @property
    def grouped(self) -> bool:
        return bool(self.group_key)

    def ungrouped(self) -> RollupKey:
        return RollupKey(
            self.organization_id, self.service_line_id, self.meter, self.grain, self.period_date, self.hour
        )

    def slot(self) -> GroupSlot:
        """The group values register this grouped rollup's value is admitted in."""
        return GroupSlot(self.organization_id, self.service_line_id, self.meter, self.group_key, self.period_date)


@dataclass(frozen=True, order=True)
class GroupSlot:
    """Where the distinct values of one group key are bounded: a line's meter's key on one period_date."""

    organization_id: str
    service_line_id: str
    meter: str
    group_key: str
    period_date: str


# The cells of a rollup (the name RollupDelta is kept: a chunk's contribution is a state too).
RollupDelta = RollupState


@dataclass(frozen=True)
class CountableEvent:
    """What rolling up needs of an event: where it counts, its quantity and, for its meter's aggregation,
    its order (event time, id), its unique_count value and its group values (key, value text)."""

    id: str
    organization_id: str
    service_line_id: str
    meter: str
    quantity: Decimal
    period_date: str
    hour: str
    aggregation: str = "sum"
    order: str = ""
    unique: str | None = None
    groups: tuple[tuple[str, str], ...] = ()
    count: int = 1  # events it counts as: a correction 0 (an adjustment) or -1 (a void), with no join cells
    joins: bool = True  # False for a voided usage event: its max, min, latest or value is not joined in

    def contribution(self) -> RollupState:
        if self.count != 1 or not self.joins:  # docs/architecture.md, "Corrections"
            return RollupState(self.quantity, self.count)
        return aggregation_of(self.aggregation).contribution(Contribution(self.quantity, self.order, self.unique))


# The group key of the rollups that hold only corrections (voids and adjustments) of a line's meter, by day
# and hour: what the summary reports as adjusted and when (restated_at). Never a metadata key (NUL-prefixed).
CORRECTIONS = "\x00corrections"


def countable(event: UsageEvent, meter: Meter | None = None) -> CountableEvent:
    """What rolling up needs of a stored event under its meter's definition (without one: a plain sum)."""
    aggregation = meter.aggregation if meter is not None else "sum"
    unique = None
    if meter is not None and meter.value_property is not None and meter.value_property in event.metadata:
        unique = group_text(event.metadata[meter.value_property])
    groups = tuple((key, group_value_of(event.metadata, key)) for key in (meter.group_by if meter else ()))
    if event.kind != "usage" and meter is not None:  # a correction also counts in its line's corrections rollups
        groups += ((CORRECTIONS, NO_GROUP),)
    return CountableEvent(
        id=event.id,
        organization_id=event.organization_id,
        service_line_id=event.service_line_id,
        meter=event.meter,
        quantity=event.quantity,
        period_date=event.period_date.isoformat(),
        hour=hour_of(event.event_time),
        aggregation=aggregation,
        order=f"{instant(event.event_time)}#{event.id}",
        unique=unique,
        groups=groups,
        count=event.tally,
        joins=event.voided_by is None,
    )


def rollup_keys(event: CountableEvent) -> tuple[RollupKey, ...]:
    """The rollups an event counts in: its day and hour, and its day and hour of each group value."""
    org, line, meter, day, hour = (
        event.organization_id,
        event.service_line_id,
        event.meter,
        event.period_date,
        event.hour,
    )
    keys = [RollupKey(org, line, meter, "D", day), RollupKey(org, line, meter, "H", day, hour)]
    for group_key, group_value in event.groups:
        keys.append(RollupKey(org, line, meter, "D", day, "", group_key, group_value))
        keys.append(RollupKey(org, line, meter, "H", day, hour, group_key, group_value))
    return tuple(keys)


def coalesce(events: Iterable[CountableEvent]) -> dict[RollupKey, RollupState]:
    """One state per distinct rollup key: exact decimal sums and counts, and the meter's join cells."""
    states: dict[RollupKey, RollupState] = {}
    for event in events:
        contribution = event.contribution()
        for rk in rollup_keys(event):
            states[rk] = fold(states.get(rk, EMPTY), contribution)
    return states


def group_values(states: Iterable[RollupKey]) -> dict[GroupSlot, set[str]]:
    """The metadata values (not NO_GROUP nor OTHER_GROUP) each group slot of these rollups asks to keep."""
    asked: dict[GroupSlot, set[str]] = {}
    for rk in states:
        if rk.grouped and rk.group_value not in (NO_GROUP, OTHER_GROUP):
            asked.setdefault(rk.slot(), set()).add(rk.group_value)
    return asked


def route(
    states: Mapping[RollupKey, RollupState], admitted: Mapping[GroupSlot, Set[str]]
) -> dict[RollupKey, RollupState]:
    """The states with every group value that is not admitted in its slot folded into OTHER_GROUP."""
    routed: dict[RollupKey, RollupState] = {}
    for rk, state in states.items():
        target = rk
        if rk.grouped and rk.group_value != NO_GROUP and rk.group_value not in admitted.get(rk.slot(), ()):
            target = replace(rk, group_value=OTHER_GROUP)
        routed[target] = fold(routed.get(target, EMPTY), state)
    return routed


def chunk_events(events: Iterable[CountableEvent], max_keys: int) -> list[list[CountableEvent]]:
    """Split events into chunks touching at most `max_keys` rollups each; deterministic for a set of events."""
    ordered = sorted(events, key=lambda e: (rollup_keys(e), e.id))
    chunks: list[list[CountableEvent]] = []
    current: list[CountableEvent] = []
    keys: set[RollupKey] = set()
    for event in ordered:
        new = set(rollup_keys(event)) - keys
        if current and len(keys) + len(new) > max_keys:
            chunks.append(current)
            current, keys = [], set()
            new = set(rollup_keys(event))
        current.append(event)
        keys |= new
    if current:
        chunks.append(current)
    return chunks


@dataclass(frozen=True)
class Rollup:
    """A stored rollup: its cells, and the version every change bumps."""

    key: RollupKey
    state: RollupState
    version: int
    updated_at: str

    @property
    def quantity(self) -> Decimal:
        return self.state.quantity

    @property
    def event_count(self) -> int:
        return self.state.event_count


@dataclass
class ApplyUnit:
    """One chunk of one batch: its marker, its rollup states (group values routed), whether it closes the batch."""

    batch_id: str
    chunk_index: int
    organization_id: str
    event_ids: tuple[str, ...]
    deltas: dict[RollupKey, RollupState]


@dataclass
class ApplyReport:
    """What became of each unit: applied, applied before, failed for now (retry), or poisoned (never applies)."""

    applied: list[ApplyUnit] = field(default_factory=list)
    already_applied: list[ApplyUnit] = field(default_factory=list)
    failed: list[ApplyUnit] = field(default_factory=list)
    poisoned: list[tuple[ApplyUnit, str]] = field(default_factory=list)
    transactions: int = 0
