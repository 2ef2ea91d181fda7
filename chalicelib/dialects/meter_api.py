"""The meter API dialect (document 002): meter subscriptions and report usage.

Field names are the document's (camelCase), so the models here use them as they are.

Subscriptions are the organization's service lines; a subscription can report
to a meter when its billing model rates that meter. Errors are `{code, message}`.

A report that names no `subscriptionId` (the document's body) goes to the meter's default
subscription: the oldest active one that rates it (`services.ingest.default_line`), which is
listed first by the subscriptions endpoints. A replayed key answers `duplicate` with the
original `requestId` whatever changed in the catalog since (paused, archived, a second
subscription, another plan).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal

from chalice.app import Blueprint
from pydantic import ConfigDict, Field

from chalicelib import observability
from chalicelib.api.http import Call, Reply, endpoint, parse_model
from chalicelib.api.schemas import Schema
from chalicelib.domain import usage
from chalicelib.domain.auth import METER_REPORT
from chalicelib.domain.models import METERED_USAGE_FEATURE, PRODUCT_LINE_NAMES, Meter, ServiceLine
from chalicelib.errors import ErrorCode, MeteringError, validation_error
from chalicelib.services.ingest import ingest
from chalicelib.services.ingest import reporting_lines as lines_of_meter
from chalicelib.services.ports import CatalogRepository

bp = Blueprint(__name__)

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_CODES = {
    ErrorCode.LICENSE_REQUIRED: "LICENSE.REQUIRED",
    ErrorCode.IDEMPOTENCY_CONFLICT: "IDEMPOTENCY_KEY_CONFLICT",
    ErrorCode.SERVICE_LINE_NOT_FOUND: "SUBSCRIPTION_NOT_FOUND",
    ErrorCode.SERVICE_LINE_INACTIVE: "SUBSCRIPTION_PAUSED",
}


class MeterApiErrorPublic(Schema):
    """An error as document 002 gives it."""

    code: str
    message: str
    field: str | None = None
    requestId: str


class MeterApiDialect:
    """Errors as document 002 gives them: {"code": "METER_NOT_FOUND", "message": "..."}."""

    content_type = "application/json"
    error_model = MeterApiErrorPublic

    def error_body(self, error: MeteringError, request_id: str) -> Any:
        body: dict[str, Any] = {"code": _CODES.get(error.error_code, error.code.upper()), "message": error.message}
        if error.field:
            body["field"] = error.field
        body["requestId"] = request_id
        return body


METER_API = MeterApiDialect()


class ReportUsageBody(Schema):
    """The body of `POST /v1/meter-usage`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: Any = Field(description="Usage value to record: a JSON number.")
    customerId: str = Field(min_length=1, max_length=64)
    meterId: str | None = Field(default=None, max_length=64)
    meterName: str | None = Field(default=None, max_length=64)
    subscriptionId: str | None = Field(
        default=None,
        max_length=64,
        description="An extension of the document: the subscription to report to. Without it, the "
        "meter's default subscription (the oldest active one that rates it) takes the report.",
    )
    timestamp: str | None = Field(default=None, description="ISO-8601; defaults to now.")
    metadata: dict[str, Any] | None = None


class MeterNameQuery(Schema):
    meterName: str | None = None


class PricePublic(Schema):
    meterId: str
    unitAmount: Decimal
    currency: str


class ProductPublic(Schema):
    productId: str
    productName: str
    price: PricePublic


class SubscriptionPublic(Schema):
    subscriptionId: str
    customerId: str
    name: str
    status: str
    workspaceId: str
    products: list[ProductPublic]


class MeterSubscriptionsPublic(Schema):
    """The subscriptions (with their products) that can report usage to a meter."""

    meterId: str
    meterName: str
    status: str
    subscriptions: list[SubscriptionPublic]


class ReportQueuedPublic(Schema):
    status: Literal["queued"]
    requestId: str


class ReportDuplicatePublic(Schema):
    status: Literal["duplicate"]
    idempotencyKey: str
    requestId: str = Field(description="The requestId the first report of this key answered with.")


_KEY_HEADERS = {
    "Idempotency-Key": "Deduplicates retries (required unless x-api-idempotency-key is sent).",
    "x-api-idempotency-key": "The same, under the reference's header name; when both are sent they must be equal.",
}


def require_license(catalog: CatalogRepository, organization_id: str) -> None:
    plan = catalog.get_organization_plan(organization_id)
    if plan is None or not plan.has_feature(METERED_USAGE_FEATURE):
        raise MeteringError(
            ErrorCode.LICENSE_REQUIRED, "The organization's plan does not include metered usage (Metered Products)."
        )


def find_meter(catalog: CatalogRepository, meter_id: str | None, meter_name: str | None) -> Meter:
    """A meter by UUID or by name (both: they must name the same meter); 400 METER_IDENTIFIER_REQUIRED,
    404 METER_NOT_FOUND, 400 VALIDATION_ERROR when they name different meters."""
    by_id = _meter_by_id(catalog, meter_id) if meter_id else None
    by_name = _meter_by_name(catalog, meter_name) if meter_name else None
    if by_id is not None and by_name is not None and by_id.id != by_name.id:
        raise validation_error(
            "meterName", f"names meter '{by_name.id}' but meterId is meter '{by_id.id}'; send one, or both of one meter"
        )
    meter = by_id or by_name
    if meter is None:
        raise MeteringError(ErrorCode.METER_IDENTIFIER_REQUIRED)
    return meter


def _meter_by_id(catalog: CatalogRepository, meter_id: str) -> Meter:
    meter = catalog.get_meter_by_uuid(meter_id) if _UUID.match(meter_id) else None
    if meter is None:
        raise MeteringError(ErrorCode.METER_NOT_FOUND, f"No meter has the id '{meter_id}'.")
    return meter


def _meter_by_name(catalog: CatalogRepository, meter_name: str) -> Meter:
    meter = catalog.get_meter(meter_name) or next(
        (m for m in catalog.list_meters() if m.name.lower() == meter_name.lower()), None
    )
    if meter is None:
        raise MeteringError(ErrorCode.METER_NOT_FOUND, f"No meter is named '{meter_name}'.")
    return meter


def reporting_lines(catalog: CatalogRepository, organization_id: str, meter: Meter) -> list[ServiceLine]:
    """The organization's active service lines that can report to the meter (paused ones excluded),
    the default subscription first."""
    return lines_of_meter(catalog, organization_id, meter.id)


def subscription_public(line: ServiceLine, meter: Meter) -> dict[str, Any]:
    return {
        "subscriptionId": line.id,
        "customerId": line.organization_id,
        "name": line.name,
        "status": "ACTIVE",
        "workspaceId": line.workspace_id,
        "products": [
            {
                "productId": line.product_line,
                "productName": PRODUCT_LINE_NAMES.get(line.product_line, line.product_line),
                "price": {"meterId": meter.uuid, "unitAmount": line.rates[meter.id], "currency": line.currency},
            }
        ],
    }


def _subscriptions(call: Call, meter_id: str | None, meter_name: str | None) -> Reply:
    require_license(call.container.catalog, call.organization_id)
    meter = find_meter(call.container.catalog, meter_id, meter_name)
    lines = reporting_lines(call.container.catalog, call.organization_id, meter)
    return Reply(
        {
            "meterId": meter.uuid,
            "meterName": meter.id,
            "status": meter.status,
            "subscriptions": [subscription_public(line, meter) for line in lines],
        }
    )


@endpoint(
    bp,
    "/v1/meters/{meterId}/subscriptions",
    scope=METER_REPORT,
    dialect=METER_API,
    responses={200: MeterSubscriptionsPublic},
)
def meter_subscriptions_by_id(call: Call) -> Reply:
    """The subscriptions (with their products) that can report usage to a meter, by meter UUID."""
    return _subscriptions(call, call.path["meterId"], None)


@endpoint(
    bp,
    "/v1/meter-subscriptions",
    scope=METER_REPORT,
    dialect=METER_API,
    query=MeterNameQuery,
    responses={200: MeterSubscriptionsPublic},
)
def meter_subscriptions_by_name(call: Call) -> Reply:
    """The subscriptions that can report usage to a meter, by `?meterName=`."""
    unknown = set(call.query) - {"meterName"}
    if unknown:
        raise MeteringError(ErrorCode.VALIDATION_ERROR, f"Unknown query parameter '{sorted(unknown)[0]}'.")
    name = call.query.get("meterName", "").strip()
    if not name:
        raise MeteringError(ErrorCode.METER_IDENTIFIER_REQUIRED, "The meterName query parameter is required.")
    return _subscriptions(call, None, name)


@endpoint(
    bp,
    "/v1/meter-usage",
    methods=("POST",),
    scope=METER_REPORT,
    dialect=METER_API,
    max_body_bytes=16384,
    body=ReportUsageBody,
    responses={202: ReportQueuedPublic, 200: ReportDuplicatePublic},
    headers=_KEY_HEADERS,
)
def report_usage(call: Call) -> Reply:
    """Report usage to a meter: 202 queued, or 200 duplicate (with the first requestId) for a replayed key."""
    key = idempotency_key(call)
    now = call.container.clock()
    body = parse_model(ReportUsageBody, call.json())
    catalog = call.container.catalog
    if body.customerId != call.organization_id:
        raise MeteringError(ErrorCode.CUSTOMER_NOT_FOUND, f"No customer '{body.customerId}' is visible to this key.")
    meter = find_meter(catalog, body.meterId, body.meterName)
    quantity = usage.check_quantity(body.value, "value")
    days_back = call.container.settings.period_days_back
    event_time = usage.check_timestamp(body.timestamp, now, days_back=days_back) if body.timestamp is not None else None
    metadata = usage.check_metadata(body.metadata)
    draft = usage.UsageDraft(
        service_line_id=body.subscriptionId or "",
        meter=meter.id,
        quantity=quantity,
        period_date=(event_time or now).date(),
        event_time=event_time,
        source="meter-api",
        metadata=metadata,
        idempotency_key=key,
        period_date_given=event_time is not None,
    )
    c = call.container
    (outcome,) = ingest(
        [draft],
        call.organization_id,
        catalog,
        c.events,
        c.queue,
        now,
        guard=lambda: require_license(catalog, call.organization_id),
        line_by_rule=not body.subscriptionId,
    )
    observability.count_outcomes([outcome.status])
    if outcome.error is not None:
        raise outcome.error
    assert outcome.event is not None
    if outcome.status == "duplicate":
        return Reply({"status": "duplicate", "idempotencyKey": key, "requestId": outcome.event.id}, 200)
    return Reply({"status": "queued", "requestId": outcome.event.id}, 202)


def idempotency_key(call: Call) -> str:
    """The report's key from `Idempotency-Key` or `x-api-idempotency-key` (equal when both are sent)."""
    first, second = call.header("idempotency-key"), call.header("x-api-idempotency-key")
    if first and second and first != second:
        raise validation_error(
            "x-api-idempotency-key", "differs from the Idempotency-Key header; send one, or the same key in both"
        )
    key = first or second
    if not key:
        raise MeteringError(
            ErrorCode.IDEMPOTENCY_KEY_REQUIRED, "The Idempotency-Key (or x-api-idempotency-key) header is required."
        )
    return usage.check_idempotency_key(key, "Idempotency-Key" if first else "x-api-idempotency-key")
