"""One mapping from other products' usage events (Metronome, CloudEvents/OpenMeter, Stripe) onto ours.

An event of another product names a customer, an event type, some properties, a time and its own
identity; the mapping says what each means here:

| what | default (no setup) | per-organization override |
|---|---|---|
| customer | the organization: its ORG-* id or its UUID | `customer_aliases` |
| meter | the event type is the meter id (`agent.runs`) | `event_types[type].meter` |
| quantity | the property `value` (number or numeric text) (1) | `event_types[type].value_property` |
| counted value | a `unique_count` meter's `value_property` (2) | - |
| Stripe customer | the payload's `stripe_customer_id` | `event_types[type].customer_property` |
| service line | the organization's default active line for the meter | `event_types[type].service_line_id` |
| key | `<dialect> <its identity>`: see `event_key` | - |

(1) Without it: 1 for a meter that counts events (`count`) or distinct values (`unique_count`), else a 400.
(2) Such as `user_id`: required, and kept in the metadata, where the meter counts its distinct values.

Everything else in the properties is the event's metadata (at most 16 string, number or boolean values).

The catalog's `Meter.value_property` names the property a `unique_count` meter counts the distinct values
of (and only such a meter has one): that property is the event's value for that meter, so it stays in the
metadata, where the aggregation reads it. The quantity of every other meter is its `value` property.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from chalicelib.domain.models import Meter, organization_uuid
from chalicelib.domain.usage import (
    MAX_IDEMPOTENCY_KEY,
    PERIOD_DAYS_BACK,
    UsageDraft,
    check_metadata,
    check_quantity,
    check_timestamp,
)
from chalicelib.errors import ErrorCode, MeteringError, validation_error

Dialect = Literal["metronome", "cloudevents", "stripe"]
DEFAULT_VALUE_PROPERTY = "value"
DEFAULT_CUSTOMER_PROPERTY = "stripe_customer_id"
# Meters whose value does not read the quantity (the number of events, of distinct values): an event of one
# that carries no value property is one occurrence, quantity 1.
OCCURRENCE_AGGREGATIONS = frozenset({"count", "unique_count"})
_PLAIN = re.compile(r"^[\x21-\x7e]+$")
_NUMBER_TEXT = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


@dataclass(frozen=True)
class EventTypeRule:
    """How events of one type map: their meter, the property holding the value, the line that takes them."""

    meter: str
    value_property: str | None = None
    customer_property: str | None = None
    service_line_id: str | None = None


@dataclass(frozen=True)
class IngestMapping:
    """An organization's mapping: the default, plus its overrides (aliases of itself, event type rules)."""

    organization_id: str
    customer_aliases: frozenset[str] = frozenset()
    event_types: Mapping[str, EventTypeRule] = field(default_factory=dict)

    def is_customer(self, customer: str) -> bool:
        """Whether an event's customer is this organization (its id, its UUID or one of its aliases)."""
        return customer in (self.organization_id, organization_uuid(self.organization_id)) or (
            customer in self.customer_aliases
        )

    def rule(self, event_type: str) -> EventTypeRule:
        """The override for an event type, else the default: the event type is the meter id."""
        return self.event_types.get(event_type) or EventTypeRule(meter=event_type)


def parse_mapping(organization_id: str, data: Any) -> IngestMapping:
    """An organization's overrides from their JSON form; ValueError naming what is wrong."""
    if not isinstance(data, dict) or set(data) - {"customer_aliases", "event_types"}:
        raise ValueError(f"{organization_id}: an object with customer_aliases and event_types is expected")
    aliases = data.get("customer_aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ValueError(f"{organization_id}: customer_aliases must be a list of non-empty strings")
    rules: dict[str, EventTypeRule] = {}
    for event_type, rule in (data.get("event_types") or {}).items():
        allowed = {"meter", "value_property", "customer_property", "service_line_id"}
        if not isinstance(rule, dict) or not isinstance(rule.get("meter"), str) or set(rule) - allowed:
            raise ValueError(f"{organization_id}: event_types.{event_type} needs a meter and only {sorted(allowed)}")
        if not all(isinstance(v, str) and v for v in rule.values()):
            raise ValueError(f"{organization_id}: event_types.{event_type}: every value must be a non-empty string")
        rules[event_type] = EventTypeRule(**rule)
    return IngestMapping(organization_id, frozenset(aliases), rules)


def event_key(dialect: Dialect, *identity: str) -> str:
    """Our idempotency key for an event of a dialect, from its identity (a transaction id, a CloudEvent's
    source and id, a Stripe identifier).

    Readable when it can be: `<dialect> <part> [<part>]`, each part printable ASCII without spaces, at most
    128 characters in all. Otherwise `metronome sha256 <hex>` / `stripe sha256 <hex>` (three fields) or
    `cloudevents sha256:<hex>` (two fields): a hashed form never has the field count of the readable one,
    so the two cannot meet. No native key has a space, and each dialect has its own first field: the
    dialects' keys collide neither with each other nor with native or meter API keys.
    """
    readable = " ".join((dialect, *identity))
    if all(_PLAIN.fullmatch(part) for part in identity) and len(readable) <= MAX_IDEMPOTENCY_KEY:
        return readable
    digest = hashlib.sha256(json.dumps([dialect, *identity]).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{dialect} sha256:{digest}" if len(identity) > 1 else f"{dialect} sha256 {digest}"


@dataclass(frozen=True)
class ForeignEvent:
    """One event as another product's client sent it, in neutral words.

    `customer` is None when the customer is one of the properties (Stripe: `customer_property`).
    `fields` names the dialect's own fields, for errors: customer, event_type, properties, timestamp.
    """

    dialect: Dialect
    key: str | None
    customer: str | None
    event_type: str
    properties: Mapping[str, Any]
    timestamp: datetime | None
    fields: Mapping[str, str]
    property_field: str = "{properties}.{name}"

    def field_of(self, name: str) -> str:
        return self.fields.get(name, name)

    def property_name(self, name: str) -> str:
        return self.property_field.format(properties=self.field_of("properties"), name=name)


@dataclass(frozen=True)
class MappedEvent:
    """A foreign event as our draft; `line_by_rule`: the organization's default line for the meter takes it.

    `fields` names the dialect's field for each field of the draft (quantity, meter), so that a refusal
    of the draft names what the caller sent.
    """

    draft: UsageDraft
    line_by_rule: bool
    fields: Mapping[str, str] = field(default_factory=dict)

    def translate(self, error: MeteringError) -> MeteringError:
        """The error with the draft's field names (`quantity: ...`) replaced by the dialect's."""
        theirs = self.fields.get(error.field or "")
        if theirs is None:
            return error
        message = error.message
        if message.startswith(f"{error.field}: "):
            message = f"{theirs}: {message[len(error.field or '') + 2 :]}"
        return MeteringError(error.error_code, message, field=theirs, details=dict(error.details))


def value_of(raw: Any, field_name: str) -> Decimal:
    """A quantity from a JSON number or a decimal string ("25", "0.5": Stripe's form values are text)."""
    if isinstance(raw, str):
        text = raw.strip()
        if not _NUMBER_TEXT.fullmatch(text):
            raise validation_error(field_name, "must be a number (or a string holding one)")
        try:
            raw = Decimal(text)
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
            raise validation_error(field_name, "must be a number") from None
    return check_quantity(raw, field_name)


def unix_timestamp(raw: Any, now: datetime, field_name: str, days_back: int = PERIOD_DAYS_BACK) -> datetime:
    """A Unix time in seconds (an integer, or its decimal text) within the late window and not in the future."""
    if isinstance(raw, str) and re.fullmatch(r"-?\d{1,12}", raw.strip()):
        raw = int(raw.strip())
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise validation_error(field_name, "must be a Unix timestamp in seconds (an integer)")
    try:
        moment = datetime.fromtimestamp(raw, UTC)
    except (OverflowError, OSError, ValueError):
        raise validation_error(field_name, "is out of range") from None
    return check_timestamp(moment.isoformat(), now, field_name, days_back)


def map_event(
    mapping: IngestMapping, event: ForeignEvent, meter: Meter | None, now: datetime, rule: EventTypeRule | None = None
) -> MappedEvent:
    """The draft a foreign event means, or the 4xx that says why it means none.

    `meter` is the catalog's meter for `mapping.rule(event.event_type).meter` (None: no such meter).
    """
    rule = rule or mapping.rule(event.event_type)
    properties = dict(event.properties)
    customer = event.customer
    customer_field = event.field_of("customer")
    if customer is None:
        key = rule.customer_property or DEFAULT_CUSTOMER_PROPERTY
        customer_field = event.property_name(key)
        found = properties.pop(key, None)
        if not isinstance(found, str) or not found:
            raise validation_error(customer_field, "is required: the customer (the organization's id or UUID)")
        customer = found
    if not mapping.is_customer(customer):
        raise MeteringError(
            ErrorCode.CUSTOMER_NOT_FOUND,
            f"{customer_field}: no customer '{customer}' is visible to this API key "
            "(send the organization's ORG-* id or its UUID).",
            field=customer_field,
        )
    if meter is None:
        raise MeteringError(
            ErrorCode.METER_NOT_FOUND,
            f"{event.field_of('event_type')}: no meter is named '{rule.meter}' "
            f"(the event type names the meter, as in agent.runs, unless the organization maps it).",
            field=event.field_of("event_type"),
        )
    quantity_property = rule.value_property or DEFAULT_VALUE_PROPERTY
    quantity_field = event.property_name(quantity_property)
    if quantity_property in properties:
        quantity = value_of(properties.pop(quantity_property), quantity_field)
    elif getattr(meter, "aggregation", "sum") in OCCURRENCE_AGGREGATIONS:
        quantity = Decimal(1)
    else:
        raise validation_error(quantity_field, f"is required: it holds the quantity of meter {meter.id}")
    counted = getattr(meter, "value_property", None)
    if counted is not None and counted not in properties:
        raise validation_error(
            event.property_name(counted), f"is required: meter {meter.id} counts the distinct values of this property"
        )
    metadata = check_metadata(properties, event.field_of("properties"))
    draft = UsageDraft(
        service_line_id=rule.service_line_id or "",
        meter=meter.id,
        quantity=quantity,
        period_date=(event.timestamp or now).date(),
        event_time=event.timestamp,
        source=event.dialect,
        metadata=metadata,
        idempotency_key=event.key,
        period_date_given=event.timestamp is not None,
    )
    fields = {"quantity": quantity_field, "meter": event.field_of("event_type")}
    return MappedEvent(draft, line_by_rule=rule.service_line_id is None, fields=fields)


def check_name(value: Any, field_name: str, max_length: int = 100) -> str:
    """A required identifier-like string (event type, customer): non-empty text of at most `max_length`."""
    if not isinstance(value, str) or not value.strip():
        raise validation_error(field_name, "is required and must be a non-empty string")
    if len(value) > max_length:
        raise validation_error(field_name, f"must be at most {max_length} characters")
    return value
