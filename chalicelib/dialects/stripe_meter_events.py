"""Stripe's meter events, `POST /v1/billing/meter_events`: one event, form-encoded as Stripe's clients send it.

Parameters: `event_name` (required), `payload[...]` (required: the customer and the value),
`identifier` (optional, at most 100 characters), `timestamp` (optional, Unix seconds) and
`expand[]` (accepted, ignored). Mapped by `chalicelib.domain.ingest_mapping`: `event_name` names
the meter; `payload[stripe_customer_id]` (or the key the organization's mapping names) is the
customer, the organization's ORG-* id or UUID (or an alias); `payload[value]` (or the meter's
`value_property`) is the quantity, as text; the rest of the payload is metadata.

Answers as Stripe's: `200` with the `billing.meter_event` object. Duplicates are by `identifier`
(our key `stripe <identifier>`; without one, the `Idempotency-Key` header stands in for it, and
without either the event has no key and the answer's identifier is its USAGE-* id): the same
identifier and payload within the service's 48-hour idempotency window answers the first event's
object again and stores nothing; the same identifier with another payload is a 400
`idempotency_error`. Errors are Stripe's `{"error": {"type", "code", "message", "param"}}`, and an
event refused for any reason is a 400 `invalid_request_error`, as Stripe refuses it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from chalice.app import Blueprint
from pydantic import BaseModel, Field

from chalicelib.api.http import Call, Reply, endpoint
from chalicelib.api.schemas import Schema
from chalicelib.dialects import ingest_mapping
from chalicelib.domain.auth import METERING_WRITE
from chalicelib.domain.ingest_mapping import ForeignEvent, check_name, event_key, unix_timestamp
from chalicelib.domain.models import UsageEvent
from chalicelib.errors import ErrorCode, MeteringError

bp = Blueprint(__name__)

BODY_LIMIT = 16 * 1024
MAX_IDENTIFIER = 100
_PAYLOAD = re.compile(r"^payload\[([^\[\]]+)\]$")
_EXPAND = re.compile(r"^expand\[\d*\]$")
_TYPES = {
    ErrorCode.UNAUTHORIZED: "invalid_request_error",
    ErrorCode.IDEMPOTENCY_CONFLICT: "idempotency_error",
}


class StripeErrorDetail(Schema):
    type: str
    code: str | None = None
    message: str
    param: str | None = None


class StripeErrorPublic(Schema):
    """An error as Stripe gives it."""

    error: StripeErrorDetail


class StripeDialect:
    """Errors as Stripe gives them: {"error": {"type", "code", "message", "param"?}}."""

    content_type = "application/json"
    error_model: type[BaseModel] = StripeErrorPublic

    def error_body(self, error: MeteringError, request_id: str) -> Any:
        kind = _TYPES.get(error.error_code) or ("api_error" if error.http_status >= 500 else "invalid_request_error")
        body: dict[str, Any] = {"type": kind, "code": error.details.get("stripe_code", error.code)}
        body["message"] = error.message
        if error.field is not None:
            body["param"] = error.field
        body["request_log_url"] = f"urn:request:{request_id}"
        return {"error": body}


STRIPE = StripeDialect()


class MeterEventForm(Schema):
    """The form of `POST /v1/billing/meter_events` (application/x-www-form-urlencoded)."""

    event_name: str = Field(max_length=100, description="The meter id, such as agent.runs (or a mapped name).")
    payload: dict[str, str] = Field(
        description="payload[stripe_customer_id]: the organization's ORG-* id or UUID; payload[value]: the quantity."
    )
    identifier: str | None = Field(default=None, max_length=MAX_IDENTIFIER)
    timestamp: int | None = Field(default=None, description="Unix seconds; defaults to now.")


class MeterEventPublic(Schema):
    """Stripe's billing.meter_event object."""

    object: str
    created: int
    event_name: str
    identifier: str
    livemode: bool
    payload: dict[str, str]
    timestamp: int


def unknown(param: str) -> MeteringError:
    return MeteringError(
        ErrorCode.VALIDATION_ERROR,
        f"Received unknown parameter: {param}",
        field=param,
        details={"stripe_code": "parameter_unknown"},
    )


def missing(param: str) -> MeteringError:
    return MeteringError(
        ErrorCode.VALIDATION_ERROR,
        f"Missing required param: {param}.",
        field=param,
        details={"stripe_code": "parameter_missing"},
    )


def parse_form(call: Call) -> tuple[dict[str, str], dict[str, str]]:
    """The form's parameters and its payload; a 400 for what Stripe would refuse."""
    if len(call.raw_body) > call.max_body_bytes:
        raise MeteringError(ErrorCode.PAYLOAD_TOO_LARGE, f"The request body exceeds {call.max_body_bytes} bytes.")
    if (call.header("content-type") or "").split(";")[0].strip().lower() == "application/json":
        raise MeteringError(
            ErrorCode.INVALID_REQUEST,
            "The body must be form-encoded (application/x-www-form-urlencoded), as Stripe's API takes it: "
            "event_name=...&payload[stripe_customer_id]=...&payload[value]=...",
        )
    try:
        pairs = parse_qsl(call.raw_body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise MeteringError(ErrorCode.INVALID_REQUEST, "The body must be form-encoded UTF-8 text.") from None
    params: dict[str, str] = {}
    payload: dict[str, str] = {}
    for key, value in pairs:
        match = _PAYLOAD.fullmatch(key)
        if match:
            payload[match.group(1)] = value
        elif key in ("event_name", "identifier", "timestamp"):
            params[key] = value
        elif not _EXPAND.fullmatch(key):
            raise unknown((key.split("[", 1)[0] if key.startswith("payload") else key)[:100])
    return params, payload


def parse_event(call: Call) -> tuple[ForeignEvent, dict[str, str], str | None]:
    """The meter event in neutral words, its payload and its identifier (given or from Idempotency-Key)."""
    params, payload = parse_form(call)
    if "event_name" not in params:
        raise missing("event_name")
    if not payload:
        raise missing("payload")
    event_name = check_name(params["event_name"], "event_name", 100)
    identifier = params.get("identifier") or call.header("idempotency-key")
    if identifier is not None:
        identifier = check_name(identifier, "identifier", MAX_IDENTIFIER)
    timestamp = None
    if params.get("timestamp"):
        settings = call.container.settings
        timestamp = unix_timestamp(params["timestamp"], call.container.clock(), "timestamp", settings.period_days_back)
    event = ForeignEvent(
        dialect="stripe",
        key=event_key("stripe", identifier) if identifier is not None else None,
        customer=None,
        event_type=event_name,
        properties=payload,
        timestamp=timestamp,
        fields={"event_type": "event_name", "properties": "payload", "timestamp": "timestamp"},
        property_field="{properties}[{name}]",
    )
    return event, payload, identifier


def meter_event_public(event: UsageEvent, event_name: str, payload: dict[str, str], identifier: str | None) -> Any:
    return {
        "object": "billing.meter_event",
        "created": int(event.recorded_at.timestamp()),
        "event_name": event_name,
        "identifier": identifier if identifier is not None else event.id,
        "livemode": False,
        "payload": payload,
        "timestamp": int(event.event_time.timestamp()),
    }


@endpoint(
    bp,
    "/v1/billing/meter_events",
    methods=("POST",),
    scope=METERING_WRITE,
    dialect=STRIPE,
    max_body_bytes=BODY_LIMIT,
    body=MeterEventForm,
    responses={200: MeterEventPublic},
)
def create_meter_event(call: Call) -> Reply:
    """Create a billing meter event (Stripe's); the same identifier and payload again answers the same object."""
    event, payload, identifier = parse_event(call)
    now = call.container.clock()
    prepared = ingest_mapping.prepare(call.container.catalog, call.organization_id, [event], now)
    invalid = ingest_mapping.first_invalid(prepared, lambda _: "")
    if invalid is not None:
        raise invalid
    (outcome,) = ingest_mapping.store(call.container, call.organization_id, prepared, now)
    failure = ingest_mapping.request_failure([outcome], lambda _: "", conflicts_are_duplicates=False)
    if failure is not None:
        if outcome.status == "conflict":
            raise Conflict(identifier)
        raise failure
    assert outcome.event is not None
    return Reply(meter_event_public(outcome.event, event.event_type, payload, identifier))


class Conflict(MeteringError):
    """400 idempotency_error: the identifier was used with another payload (Stripe answers 400)."""

    def __init__(self, identifier: str | None) -> None:
        super().__init__(
            ErrorCode.IDEMPOTENCY_CONFLICT,
            f"An event with identifier '{identifier}' was created with other parameters; nothing was written. "
            "Use a new identifier for a new event.",
            field="identifier",
        )

    @property
    def http_status(self) -> int:
        return 400
