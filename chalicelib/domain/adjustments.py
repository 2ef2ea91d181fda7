"""Corrections of usage: voids and quantity adjustments, as new immutable records (docs/architecture.md, "Corrections").

A void cancels one usage event: its record is the event's negative (minus its quantity, minus one
event) on the event's line, meter, period_date, hour and metadata, so every rollup the event counts in
nets to what it would be without it. An adjustment adds a signed quantity to a sum meter's line and
period_date, optionally naming the event it corrects. Neither changes the event: the event only gains
a mark naming its correction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from chalicelib.domain.aggregation import RollupState
from chalicelib.domain.ids import ulid
from chalicelib.domain.models import Meter, UsageEvent
from chalicelib.domain.usage import (
    MAX_DECIMAL_PLACES,
    MAX_QUANTITY,
    PERIOD_DAYS_FORWARD,
    WHOLE_METERS,
    RollupKey,
    coalesce,
    countable,
    decimal_places,
    fingerprint,
    storable,
)
from chalicelib.errors import ErrorCode, MeteringError, validation_error

MAX_REASON = 500
# How far back a correction may reach: the events' retention. Events are never expired (no TTL), so the
# bound is the longest any stage accepts usage for (METERING_PERIOD_DAYS_BACK's maximum, 10 years).
RETENTION_DAYS = 3660
# Meters whose value a quantity delta can change: the sum of quantities. Every other aggregation (a count
# of events, max, min, latest, unique values) takes voids only.
ADJUSTABLE_AGGREGATIONS = frozenset({"sum"})
CORRECTION_SOURCE = "correction"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def void_id(at: datetime) -> str:
    return f"VOID-{at:%y}-{ulid(at)}"


def adjustment_id(at: datetime) -> str:
    return f"ADJ-{at:%y}-{ulid(at)}"


def recorded_at_of(record_id: str) -> datetime | None:
    """When a USAGE-/VOID-/ADJ- record was made, from the time in its ULID (None if it is not one)."""
    text = record_id.rsplit("-", 1)[-1].upper()
    if len(text) != 26 or any(c not in _CROCKFORD for c in text):
        return None
    millis = 0
    for char in text[:10]:
        millis = millis * 32 + _CROCKFORD.index(char)
    try:
        return datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def check_reason(value: Any, field: str = "reason") -> str:
    """Why a correction is made: required, 1-500 characters, not only spaces."""
    if not isinstance(value, str) or not value.strip():
        raise validation_error(field, "is required: say why the correction is made")
    if len(value) > MAX_REASON:
        raise validation_error(field, f"must be at most {MAX_REASON} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise validation_error(field, "must be valid Unicode") from None
    return value


def check_delta(value: Any, field: str = "quantity") -> Decimal:
    """A signed quantity delta: a JSON number, not zero, |delta| <= 10^12, at most 9 decimal places."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise validation_error(field, "must be a JSON number (negative to reduce usage)")
    try:
        delta = Decimal(value)
    except InvalidOperation:
        raise validation_error(field, "must be a number") from None
    if not delta.is_finite():
        raise validation_error(field, "must be finite")
    if delta.is_zero():
        raise validation_error(field, "must not be zero: an adjustment changes usage")
    if abs(delta) > MAX_QUANTITY:
        raise validation_error(field, f"must be between -{MAX_QUANTITY:f} and {MAX_QUANTITY:f}")
    if decimal_places(delta) > MAX_DECIMAL_PLACES:
        raise validation_error(field, f"must have at most {MAX_DECIMAL_PLACES} decimal places")
    return storable(delta)


def check_correction_date(value: Any, today: date, field: str = "period_date") -> date:
    """A period_date a correction may name: a real date at most RETENTION_DAYS back (not the ingest bound)
    and 1 day ahead."""
    if not isinstance(value, str) or len(value) != 10:
        raise validation_error(field, "must be a date in YYYY-MM-DD form")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise validation_error(field, "is not a real calendar date in YYYY-MM-DD form") from None
    earliest, latest = today - timedelta(days=RETENTION_DAYS), today + timedelta(days=PERIOD_DAYS_FORWARD)
    if day < earliest:
        raise validation_error(
            field,
            f"{day.isoformat()} is past the retention of {RETENTION_DAYS} days: the earliest date a correction "
            f"may name today is {earliest.isoformat()}",
        )
    if day > latest:
        raise validation_error(field, f"{day.isoformat()} is in the future: the latest date is {latest.isoformat()}")
    return day


def check_voidable(event: UsageEvent) -> None:
    """Only usage events are voided: a void or an adjustment is a correction (409 naming it)."""
    if event.kind != "usage":
        raise MeteringError(
            ErrorCode.CORRECTION_NOT_VOIDABLE,
            f"'{event.id}' is {'a void' if event.kind == 'void' else 'an adjustment'}: corrections cannot be "
            "voided; post an adjustment that offsets it instead.",
            field="event_id",
        )


def check_adjustable(meter: Meter) -> None:
    """A quantity adjustment changes a sum meter only (422 naming the meter's aggregation otherwise)."""
    if meter.aggregation not in ADJUSTABLE_AGGREGATIONS:
        raise MeteringError(
            ErrorCode.METER_NOT_ADJUSTABLE,
            f"Meter '{meter.id}' aggregates by {meter.aggregation}: a quantity delta has no meaning for it. "
            "Void the wrong event (POST /v1/metering/events/{event_id}/void) and report the right one.",
            field="meter",
        )


@dataclass(frozen=True)
class VoidRequest:
    """A validated request to void one usage event."""

    event_id: str
    reason: str
    idempotency_key: str | None
    service_line_id: str | None = None
    period_date: date | None = None

    def payload_hash(self) -> str:
        """What a replay of the key must match: the event voided and the reason."""
        return fingerprint({"kind": "void", "event_id": self.event_id, "reason": self.reason})


@dataclass(frozen=True)
class AdjustmentRequest:
    """A validated quantity adjustment of a line's meter on a period_date."""

    service_line_id: str
    meter: str
    period_date: date
    quantity: Decimal
    reason: str
    corrects: str | None
    idempotency_key: str | None

    def payload_hash(self) -> str:
        return fingerprint(
            {
                "kind": "adjustment",
                "service_line_id": self.service_line_id,
                "meter": self.meter,
                "period_date": self.period_date.isoformat(),
                "quantity": self.quantity,
                "reason": self.reason,
                "corrects": self.corrects,
            }
        )

    def check_whole(self) -> None:
        if self.meter in WHOLE_METERS and self.quantity != self.quantity.to_integral_value():
            raise validation_error("quantity", f"{self.meter} counts whole units; send a whole number")


def void_of(
    event: UsageEvent, request: VoidRequest, record_id: str, now: datetime, batch: str, key_id: str
) -> UsageEvent:
    """The void of an event: its negative on the same line, meter, day, hour and metadata."""
    return UsageEvent(
        id=record_id,
        organization_id=event.organization_id,
        workspace_id=event.workspace_id,
        service_line_id=event.service_line_id,
        meter=event.meter,
        quantity=-event.quantity,
        unit=event.unit,
        period_date=event.period_date,
        event_time=event.event_time,
        recorded_at=now,
        source=CORRECTION_SOURCE,
        metadata=dict(event.metadata),
        idempotency_key=request.idempotency_key,
        payload_hash=request.payload_hash(),
        batch_id=batch,
        kind="void",
        corrects=event.id,
        reason=request.reason,
        created_by=key_id,
    )


def adjustment_of(
    request: AdjustmentRequest,
    organization_id: str,
    corrected: UsageEvent | None,
    workspace_id: str,
    unit: str,
    record_id: str,
    now: datetime,
    batch: str,
    key_id: str,
) -> UsageEvent:
    """An adjustment record: in the corrected event's hour and groups when it names one, else in the hour it
    was made (as a late event counts in hour windows) with no group value."""
    return UsageEvent(
        id=record_id,
        organization_id=organization_id,
        workspace_id=workspace_id,
        service_line_id=request.service_line_id,
        meter=request.meter,
        quantity=request.quantity,
        unit=unit,
        period_date=request.period_date,
        event_time=corrected.event_time if corrected else now,
        recorded_at=now,
        source=CORRECTION_SOURCE,
        metadata=dict(corrected.metadata) if corrected else {},
        idempotency_key=request.idempotency_key,
        payload_hash=request.payload_hash(),
        batch_id=batch,
        kind="adjustment",
        corrects=request.corrects,
        reason=request.reason,
        created_by=key_id,
    )


def voided_ids(records: Iterable[UsageEvent]) -> set[str]:
    """The usage events among a line-day's records that are voided: marked, or named by a void record."""
    voided: set[str] = set()
    for record in records:
        if record.voided_by is not None:
            voided.add(record.id)
        if record.kind == "void" and record.corrects is not None:
            voided.add(record.corrects)
    return voided


def restated_joins(records: Iterable[UsageEvent], meter: Meter) -> dict[RollupKey, RollupState]:
    """The join cells (max, min, latest, unique values) a line-day's rollups of a meter hold without its
    voided events: recomputed from the usage events that stand. Group values are not yet routed."""
    listed = [r for r in records if r.meter == meter.id]
    voided = voided_ids(listed)
    standing = [r for r in listed if r.kind == "usage" and r.id not in voided]
    return {rk: state.joins() for rk, state in coalesce(countable(r, meter) for r in standing).items()}


def with_joins(observed: RollupState, joins: RollupState) -> RollupState:
    """A rollup's additive cells as observed, with recomputed join cells."""
    return RollupState(
        observed.quantity, observed.event_count, joins.maximum, joins.minimum, joins.latest, joins.values
    )
