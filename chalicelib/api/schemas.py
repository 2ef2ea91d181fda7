"""Request and response models of the native API, named by role."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from chalicelib.domain.models import Meter, Plan, PlanLimits, Sla


class QueryBase(BaseModel):
    """Query parameters: unknown ones are refused with a 400 naming them."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MetersQuery(QueryBase):
    include_archived: bool = False


class PlansQuery(QueryBase):
    include_deprecated: bool = False


class ListMeta(BaseModel):
    cursor: str | None
    has_more: bool


class MeterPublic(BaseModel):
    """A meter as document 000 lists it, with document 002's UUID and status."""

    id: str
    name: str
    unit: str
    product_lines: list[str]
    description: str
    uuid: str
    status: str

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
        )


class PlanLimitsSummary(BaseModel):
    workspaces: int | None
    active_service_lines: int | None
    users: int | None
    api_calls_monthly: int | None
    agent_credits_monthly: int | str | None


class PlanSummaryPublic(BaseModel):
    """A plan as `GET /v1/plans` lists it."""

    id: str
    name: str
    tier: str
    billing_cycle: str
    price: Decimal | None
    currency: str
    status: str
    allowed_product_lines: list[str]
    limits: PlanLimitsSummary

    @classmethod
    def of(cls, plan: Plan) -> PlanSummaryPublic:
        return cls(
            **plan.model_dump(include={"id", "name", "tier", "billing_cycle", "price", "currency", "status"}),
            allowed_product_lines=list(plan.allowed_product_lines),
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
            features=list(plan.features),
            limits=plan.limits,
            support_tier=plan.support_tier,
            sla=plan.sla,
        )
