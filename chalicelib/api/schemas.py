"""Request and response models of the native API, named by role."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chalicelib.domain.aggregation import AGGREGATIONS
from chalicelib.domain.models import (
    ExecutionModel,
    Meter,
    Plan,
    PlanLimits,
    ProductLine,
    ServiceLine,
    Sla,
    UsageEvent,
    instant,
)

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class Schema(BaseModel):
    """The base of every model here: its validator is built at first use, not at import (a cold start
    builds only the models its request needs; validation and JSON schema are the same either way)."""

    model_config = ConfigDict(defer_build=True)


class QueryBase(Schema):
    """Query parameters: unknown ones are refused with a 400 naming them."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MetersQuery(QueryBase):
    include_archived: bool = False


class PlansQuery(QueryBase):
    include_deprecated: bool = False
    cursor: str | None = Field(default=None, max_length=2048)
    limit: int = Field(default=100, ge=1, le=100)


class ListMeta(Schema):
    cursor: str | None
    has_more: bool


class MeterPublic(Schema):
    """A meter as document 000 lists it, with document 002's UUID and status."""

    id: str
    name: str
    unit: str
    product_lines: list[str]
    description: str
    uuid: str
    status: str
    aggregation: str = Field(
        description="How usage of the meter adds up in a period: "
        + "; ".join(f"{name}: {a.description}" for name, a in AGGREGATIONS.items()),
        json_schema_extra={"enum": list(AGGREGATIONS)},
    )
    value_property: str | None = Field(
        description="unique_count: the metadata property whose distinct values are counted (events must carry it)."
    )
    group_by: list[str] = Field(description="Metadata keys usage can be grouped by (at most 2).")

    @classmethod
    def of(cls, meter: Meter) -> MeterPublic:
        return cls(
            id=meter.id,
            name=meter.name,
            unit=meter.unit,
            product_lines=list(meter.product_lines),
            description=meter.description,
            uuid=meter.uuid,
            status=meter.status,
            aggregation=meter.aggregation,
            value_property=meter.value_property,
            group_by=list(meter.group_by),
        )


class PlanLimitsSummary(Schema):
    workspaces: int | None
    active_service_lines: int | None
    users: int | None
    api_calls_monthly: int | None
    agent_credits_monthly: int | str | None


class PlanSummaryPublic(Schema):
    """A plan as `GET /v1/plans` lists it."""

    id: str
    name: str
    tier: str
    billing_cycle: str
    price: Decimal | None
    currency: str
    status: str
    allowed_product_lines: list[str]
    allowed_execution_models: list[str] = Field(description="An addition: the execution models lines may use.")
    limits: PlanLimitsSummary

    @classmethod
    def of(cls, plan: Plan) -> PlanSummaryPublic:
        return cls(
            **plan.model_dump(include={"id", "name", "tier", "billing_cycle", "price", "currency", "status"}),
            allowed_product_lines=list(plan.allowed_product_lines),
            allowed_execution_models=list(plan.allowed_execution_models),
            limits=PlanLimitsSummary(**plan.limits.model_dump(exclude={"integrations", "webhooks"})),
        )


class PlanPublic(PlanSummaryPublic):
    """A plan with its features, full limits, support tier and SLA (`GET /v1/plans/{id}`)."""

    features: list[str]
    limits: PlanLimits  # type: ignore[assignment]
    support_tier: str
    sla: Sla | None

    @classmethod
    def of(cls, plan: Plan) -> PlanPublic:
        return cls(
            **plan.model_dump(include={"id", "name", "tier", "billing_cycle", "price", "currency", "status"}),
            allowed_product_lines=list(plan.allowed_product_lines),
            allowed_execution_models=list(plan.allowed_execution_models),
            features=list(plan.features),
            limits=plan.limits,
            support_tier=plan.support_tier,
            sla=plan.sla,
        )


class UsageEventCreate(Schema):
    """The body of `POST /v1/metering/events` (document 000)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service_line_id: str = Field(min_length=1, max_length=64)
    meter: str = Field(min_length=1, max_length=64)
    quantity: Any = Field(description="A JSON number: 0 <= quantity <= 10^12, at most 9 decimal places.")
    period_date: str | None = Field(default=None, description="YYYY-MM-DD; defaults to the UTC date of receipt.")
    idempotency_key: str | None = Field(default=None, description="At most 128 printable ASCII characters.")
    source: str | None = Field(default=None, description="The reporting system; defaults to 'api'.")
    metadata: dict[str, Any] | None = Field(default=None, description="At most 16 string/number/boolean values.")

    @field_validator("service_line_id", "meter", "period_date", "idempotency_key", "source", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a string")
        return value


class UsageEventBatchCreate(Schema):
    """The body of `POST /v1/metering/events/batch`: 1 to 100 events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[Any] = Field(min_length=1, max_length=100)


class UsageEventRecordPublic(Schema):
    """The record `POST /v1/metering/events` answers with."""

    id: str
    status: str
    service_line_id: str
    meter: str
    quantity: Decimal
    recorded_at: str

    @classmethod
    def of(cls, event: UsageEvent) -> UsageEventRecordPublic:
        return cls(
            id=event.id,
            status="accepted",
            service_line_id=event.service_line_id,
            meter=event.meter,
            quantity=event.quantity,
            recorded_at=instant(event.recorded_at),
        )


class ScopeQuery(QueryBase):
    """The scoping filters shared by usage listings and summaries."""

    organization_id: str | None = Field(default=None, max_length=64)
    workspace_id: str | None = Field(default=None, max_length=64)
    service_line_id: str | None = Field(default=None, max_length=64)
    from_: date | None = Field(default=None, alias="from", description="Period start (inclusive), YYYY-MM-DD.")
    to: date | None = Field(default=None, description="Period end (inclusive), YYYY-MM-DD.")

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _calendar_date(cls, value: Any) -> Any:
        """Only YYYY-MM-DD: pydantic would read a number such as 0 as a Unix time (1970-01-01)."""
        if value is not None and not (isinstance(value, str) and _ISO_DATE.fullmatch(value)):
            raise ValueError("must be a date in YYYY-MM-DD form")
        return value


class SummaryQuery(ScopeQuery):
    """The summary's filters, and an optional metadata key to break each meter's value down by."""

    group_by: str | None = Field(
        default=None,
        max_length=64,
        description="A metadata key: meters that group by it (GET /v1/meters, group_by) list their value per group.",
    )


class UsageQuery(ScopeQuery):
    """Query parameters of `GET /v1/usage`."""

    meter: str | None = Field(default=None, max_length=64)
    cursor: str | None = Field(default=None, max_length=2048)
    limit: int = Field(default=25, ge=1, le=100)
    hide_voided: bool = Field(
        default=False, description="true: leave out voided events and the voids that cancel them."
    )


class UsageEventPublic(Schema):
    """A usage event as `GET /v1/usage` lists it."""

    id: str
    service_line_id: str
    meter: str
    quantity: Decimal
    unit: str
    recorded_at: str
    period_date: date
    source: str
    metadata: dict[str, Any]
    kind: Literal["void", "adjustment"] | None = Field(
        default=None, description="Only on corrections: a void (cancels an event) or an adjustment (a signed delta)."
    )
    corrects: str | None = Field(default=None, description="A correction: the id of the usage event it corrects.")
    reason: str | None = Field(default=None, description="A correction: why it was made.")
    created_by: str | None = Field(default=None, description="A correction: the id of the API key that made it.")
    voided_by: str | None = Field(default=None, description="A voided usage event: the id of its void.")
    adjusted_by: list[str] | None = Field(
        default=None, description="An adjusted usage event: the ids of the adjustments naming it."
    )

    @classmethod
    def of(cls, event: UsageEvent) -> UsageEventPublic:
        """The listed event; the correction fields only where they are set (render with exclude_none)."""
        return cls(
            id=event.id,
            service_line_id=event.service_line_id,
            meter=event.meter,
            quantity=event.quantity,
            unit=event.unit,
            recorded_at=instant(event.recorded_at),
            period_date=event.period_date,
            source=event.source,
            metadata=dict(event.metadata),
            kind=None if event.kind == "usage" else event.kind,
            corrects=event.corrects,
            reason=event.reason,
            created_by=event.created_by,
            voided_by=event.voided_by,
            adjusted_by=list(event.adjusted_by) or None,
        )


class ServiceLineCreate(Schema):
    """The body of `POST /v1/service-lines`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workspace_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=120)
    product_line: ProductLine
    execution_model: ExecutionModel = Field(default="on_demand", description="Gated by the plan.")
    rates: dict[str, Decimal] = Field(description="Price per unit for each meter the line bills.", max_length=20)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")

    @field_validator("rates", mode="before")
    @classmethod
    def _numbers_only(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for meter, rate in value.items():
                if isinstance(rate, bool) or not isinstance(rate, (int, Decimal)):
                    raise ValueError(f"rate of '{meter}' must be a JSON number")
        return value


class ServiceLinesQuery(QueryBase):
    workspace_id: str | None = Field(default=None, max_length=64)
    status: Literal["active", "paused"] | None = None


class ServiceLinePublic(Schema):
    """A service line with its billing model (the meters it bills and their rates)."""

    id: str
    organization_id: str
    workspace_id: str
    name: str
    product_line: str
    status: str
    execution_model: str
    currency: str
    billing_model: dict[str, Any]
    created_at: str

    @classmethod
    def of(cls, line: ServiceLine, units: dict[str, str]) -> ServiceLinePublic:
        return cls(
            id=line.id,
            organization_id=line.organization_id,
            workspace_id=line.workspace_id,
            name=line.name,
            product_line=line.product_line,
            execution_model=line.execution_model,
            status=line.status,
            currency=line.currency,
            billing_model={
                "meters": [
                    {"meter": meter, "unit": units.get(meter, ""), "rate": rate}
                    for meter, rate in sorted(line.rates.items())
                ]
            },
            created_at=instant(line.created_at),
        )


# -- response envelopes (the OpenAPI document is generated from these) --------------------------


class ErrorDetail(Schema):
    """The body of a native error: a stable code, a message, the field at fault if any."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    field: str | None = None
    request_id: str


class ErrorPublic(Schema):
    """The native error envelope."""

    error: ErrorDetail


class MeterListPublic(Schema):
    data: list[MeterPublic]


class PlanListPublic(Schema):
    data: list[PlanSummaryPublic]
    meta: ListMeta


class PlanEnvelope(Schema):
    data: PlanPublic


class UsageEventEnvelope(Schema):
    data: UsageEventRecordPublic


class BatchItemError(Schema):
    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    field: str | None = None


class BatchItemResult(Schema):
    """The outcome of one event of a batch, at its index in the request."""

    index: int
    status: Literal["accepted", "duplicate", "conflict", "rejected"]
    data: UsageEventRecordPublic | None = None
    error: BatchItemError | None = None


class BatchResultPublic(Schema):
    data: list[BatchItemResult]


class UsageListPublic(Schema):
    data: list[UsageEventPublic]
    meta: ListMeta


class SummaryGroup(Schema):
    """A meter's value over the period for one value of the group_by key."""

    value: str | None = Field(description="The metadata value (as text); null for missing and other.")
    kind: Literal["value", "missing", "other"] = Field(
        description="value: events carrying this value; missing: events without the key; other: the values "
        "past the meter's bound of 1,000 distinct values per service line and day."
    )
    quantity: Decimal


class SummaryMeter(Schema):
    meter: str
    quantity: Decimal = Field(
        description="The meter's aggregation over the period (the sum for sum meters), after corrections."
    )
    unit: str
    aggregation: str
    adjusted: Decimal | None = Field(
        default=None,
        description="Only when corrections (voids, adjustments) changed the meter in the period: the part of "
        "quantity they make (sum: their quantities; count: minus the voided events); null for max, min, "
        "latest and unique_count, whose value is recomputed without voided events.",
    )
    restated_at: str | None = Field(
        default=None, description="Only when corrected: when the latest correction of the period was rolled up."
    )
    groups: list[SummaryGroup] | None = Field(
        default=None, description="With group_by, for meters that group by that key: the value per group."
    )


class SummaryLine(Schema):
    service_line_id: str
    name: str
    product_line: str
    meters: list[SummaryMeter]
    cost_estimate: Decimal
    currency: str
    restated_at: str | None = Field(
        default=None, description="Only when corrected: the latest restated_at of the line's meters."
    )


class SummaryPeriod(Schema):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from")
    to: date


class UsageSummary(Schema):
    period: SummaryPeriod
    organization_id: str
    total_cost_estimate: Decimal
    currency: str
    by_service_line: list[SummaryLine]


class UsageSummaryPublic(Schema):
    data: UsageSummary


class ServiceLineEnvelope(Schema):
    data: ServiceLinePublic


class ServiceLineListPublic(Schema):
    data: list[ServiceLinePublic]
    meta: ListMeta


class WorkspaceCreate(Schema):
    """The body of `POST /v1/workspaces`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=120)


class WorkspacePublic(Schema):
    id: str
    organization_id: str
    name: str


class WorkspaceEnvelope(Schema):
    data: WorkspacePublic


class WorkspaceListPublic(Schema):
    data: list[WorkspacePublic]


class AgentCreditsPublic(Schema):
    organization_id: str
    month: str
    limit: int | str | None = Field(description="null: no cap; 'custom': set by contract, not capped here.")
    used: Decimal
    remaining: Decimal | None
    allowed: bool
    resets_at: str


class AgentCreditsEnvelope(Schema):
    data: AgentCreditsPublic


# -- corrections (voids and adjustments) ------------------------------------------------------------


class VoidCreate(Schema):
    """The body of `POST /v1/metering/events/{event_id}/void`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Any = Field(description="Why the event is voided (1-500 characters); kept in the audit trail.")
    idempotency_key: str | None = Field(default=None, description="At most 128 printable ASCII characters.")
    service_line_id: str | None = Field(
        default=None, max_length=64, description="The event's line, as GET /v1/usage lists it: finds it in one read."
    )
    period_date: str | None = Field(default=None, description="The event's period_date (with service_line_id).")

    @field_validator("idempotency_key", "service_line_id", "period_date", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a string")
        return value


class AdjustmentCreate(Schema):
    """The body of `POST /v1/metering/adjustments`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service_line_id: str = Field(min_length=1, max_length=64)
    meter: str = Field(min_length=1, max_length=64, description="A sum meter (others take voids only).")
    period_date: str = Field(description="YYYY-MM-DD: any date within the retention (not ingest's late bound).")
    quantity: Any = Field(description="A signed JSON number, not 0: negative reduces usage.")
    reason: Any = Field(description="Why the adjustment is made (1-500 characters).")
    corrects: str | None = Field(default=None, max_length=64, description="The usage event it corrects, if any.")
    idempotency_key: str | None = Field(default=None, description="At most 128 printable ASCII characters.")

    @field_validator("service_line_id", "meter", "period_date", "corrects", "idempotency_key", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a string")
        return value


class CorrectionPublic(Schema):
    """A void or an adjustment as stored: what it corrects, why, who and when."""

    id: str
    kind: Literal["void", "adjustment"]
    service_line_id: str
    meter: str
    quantity: Decimal = Field(description="Its signed effect on the line's usage (a void: minus the event's).")
    unit: str
    period_date: date
    corrects: str | None
    reason: str
    created_by: str | None = Field(description="The id of the API key that made it.")
    recorded_at: str

    @classmethod
    def of(cls, record: UsageEvent) -> CorrectionPublic:
        assert record.kind != "usage" and record.reason is not None
        return cls(
            id=record.id,
            kind=record.kind,
            service_line_id=record.service_line_id,
            meter=record.meter,
            quantity=record.quantity,
            unit=record.unit,
            period_date=record.period_date,
            corrects=record.corrects,
            reason=record.reason,
            created_by=record.created_by,
            recorded_at=instant(record.recorded_at),
        )


class CorrectionEnvelope(Schema):
    data: CorrectionPublic
