"""Frozen domain models of the catalog and the usage store."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID, uuid5

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from chalicelib.domain.aggregation import AGGREGATIONS, MAX_GROUP_KEYS

ProductLine = Literal["talent", "managed_services", "ods", "infrastructure", "intelligence", "agent_gateway"]
PRODUCT_LINES: tuple[str, ...] = (
    "talent",
    "managed_services",
    "ods",
    "infrastructure",
    "intelligence",
    "agent_gateway",
)
PRODUCT_LINE_NAMES: dict[str, str] = {
    "talent": "Talent Marketplace",
    "managed_services": "Managed Services",
    "ods": "ODS",
    "infrastructure": "Platforms & Infrastructure",
    "intelligence": "Developer Intelligence",
    "agent_gateway": "AI Agent Gateway",
}
METERED_USAGE_FEATURE = "metered_usage"


def instant(moment: datetime) -> str:
    """A UTC instant in the one fixed, sortable text form stored and shown: 2026-04-15T10:00:00.000Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class Frozen(BaseModel):
    """Base of every domain model: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Meter(Frozen):
    """A named consumption metric with its unit (document 000), UUID and status (002)."""

    id: str
    uuid: str
    name: str
    unit: str
    product_lines: tuple[ProductLine, ...]
    description: str
    status: Literal["ACTIVE", "ARCHIVED"] = "ACTIVE"
    aggregation: str = "sum"
    value_property: str | None = None
    group_by: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _rename_group_keys(cls, data: Any) -> Any:
        """A meter stored before group_by was named group_keys reads as group_by."""
        if isinstance(data, dict) and "group_keys" in data:
            renamed = {k: v for k, v in data.items() if k != "group_keys"}
            renamed.setdefault("group_by", data["group_keys"])
            return renamed
        return data

    @model_validator(mode="after")
    def _check_aggregation(self) -> Meter:
        """A known aggregation; unique_count names its metadata property; at most 2 distinct group_by keys."""
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        if AGGREGATIONS[self.aggregation].needs_value_property != (self.value_property is not None):
            raise ValueError("value_property is required for unique_count and only for it")
        if len(self.group_by) > MAX_GROUP_KEYS or len(set(self.group_by)) != len(self.group_by):
            raise ValueError(f"group_by names at most {MAX_GROUP_KEYS} distinct metadata keys")
        return self

    @property
    def active(self) -> bool:
        return self.status == "ACTIVE"

    @property
    def group_keys(self) -> tuple[str, ...]:
        """The metadata keys usage of this meter can be grouped by (the same as group_by)."""
        return self.group_by


# How a service line's work is carried out. Document 001 gates "every execution_model and product_line
# combination" by the plan but names no models: these four, and the plans' allowed_execution_models, are ours.
ExecutionModel = Literal["on_demand", "dedicated", "managed", "autonomous"]
EXECUTION_MODELS: tuple[ExecutionModel, ...] = ("on_demand", "dedicated", "managed", "autonomous")


class PlanLimits(Frozen):
    """Hard limits per resource; None means unlimited."""

    workspaces: int | None
    active_service_lines: int | None
    users: int | None
    api_calls_monthly: int | None
    agent_credits_monthly: int | Literal["custom"] | None
    integrations: int | None
    webhooks: int | None


class Sla(Frozen):
    uptime_percent: Decimal
    response_time_hours: int


class Plan(Frozen):
    """A plan tier in one billing cycle (document 001)."""

    id: str
    name: str
    tier: Literal["starter", "growth", "scale", "enterprise"]
    billing_cycle: Literal["monthly", "annual", "custom"]
    price: Decimal | None
    currency: str
    status: Literal["active", "deprecated"]
    allowed_product_lines: tuple[ProductLine, ...]
    allowed_execution_models: tuple[ExecutionModel, ...] = ("on_demand",)
    features: tuple[str, ...]
    limits: PlanLimits
    support_tier: Literal["community", "standard", "priority", "dedicated"]
    sla: Sla | None

    def has_feature(self, feature: str) -> bool:
        return feature in self.features


# uuid5(NAMESPACE_URL, "https://api.scrums.com/v1/organizations"): the namespace of organization UUIDs.
ORGANIZATION_UUID_NAMESPACE = UUID("5f70873c-4919-5ebf-a8f9-0784e11aab99")


def organization_uuid(organization_id: str) -> str:
    """The stable UUID of an organization id (uuid5 in ORGANIZATION_UUID_NAMESPACE): its Metronome customer id."""
    return str(uuid5(ORGANIZATION_UUID_NAMESPACE, organization_id))


class Organization(Frozen):
    """A customer: its ORG-* id, its UUID (derived from the id when not given), name and plan."""

    id: str
    name: str
    plan_id: str
    created_at: datetime
    uuid: str = Field(default="", pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

    @model_validator(mode="before")
    @classmethod
    def _derive_uuid(cls, data: Any) -> Any:
        """An organization stored or written without a uuid gets organization_uuid(id)."""
        if isinstance(data, dict) and not data.get("uuid") and isinstance(data.get("id"), str):
            return {**data, "uuid": organization_uuid(data["id"])}
        return data


class Workspace(Frozen):
    id: str
    organization_id: str
    name: str


class ServiceLine(Frozen):
    """A LIN-* billed line: its product line, status and per-meter rates (its billing model)."""

    id: str
    organization_id: str
    workspace_id: str
    name: str
    product_line: ProductLine
    execution_model: ExecutionModel = "on_demand"
    status: Literal["active", "paused"] = "active"
    currency: str = "USD"
    rates: dict[str, Decimal]
    created_at: datetime

    @property
    def meters(self) -> tuple[str, ...]:
        return tuple(self.rates)

    def permits(self, meter_id: str) -> bool:
        return meter_id in self.rates


class ApiKey(Frozen):
    """An API key as stored: never the secret itself, only its hash."""

    key_id: str
    key_hash: str
    organization_id: str
    scopes: frozenset[str]
    name: str
    status: Literal["active", "revoked"] = "active"
    created_at: datetime


class Principal(Frozen):
    """Who is calling: one organization and the scopes of the key used."""

    organization_id: str
    key_id: str
    scopes: frozenset[str]

    def can(self, scope: str) -> bool:
        return scope in self.scopes


# What a stored record is: reported usage, or a correction of it (docs/architecture.md, "Corrections").
EventKind = Literal["usage", "void", "adjustment"]
# The fields of corrections and of the marks on corrected events: stored only when set, so usage events
# are stored exactly as before corrections existed.
CORRECTION_FIELDS: tuple[str, ...] = (
    "kind",
    "corrects",
    "reason",
    "created_by",
    "voided_by",
    "void_slot",
    "adjusted_by",
)


class UsageEvent(Frozen):
    """A stored usage event (USAGE-*): immutable once accepted; or a correction (a void or an adjustment).

    A usage event's quantity never changes; a correction of it is a record of its own, and the event only
    gains marks (`voided_by`, `adjusted_by`) naming its corrections.
    """

    id: str
    organization_id: str
    workspace_id: str
    service_line_id: str
    meter: str
    quantity: Decimal
    unit: str
    period_date: date
    event_time: datetime
    recorded_at: datetime
    source: str
    metadata: dict[str, str | int | Decimal | bool]
    idempotency_key: str | None
    payload_hash: str
    batch_id: str
    kind: EventKind = "usage"
    corrects: str | None = None  # a correction: the id of the usage event it corrects, if any
    reason: str | None = None  # a correction: why it was made
    created_by: str | None = None  # a correction: the id of the API key that made it
    voided_by: str | None = None  # a usage event's mark: the id of the void that cancels it
    void_slot: str | None = None  # where that void is stored (its slot)
    adjusted_by: tuple[str, ...] = ()  # a usage event's mark: the ids of adjustments naming it

    @field_validator("adjusted_by", mode="before")
    @classmethod
    def _sorted_ids(cls, value: Any) -> Any:
        """A stored string set comes back unordered: ids in order."""
        return tuple(sorted(value)) if isinstance(value, (set, frozenset)) else value

    @model_serializer(mode="wrap")
    def _without_unset_corrections(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Correction fields and marks only when set: a usage event is stored as it always was."""
        data: dict[str, Any] = handler(self)
        for name in CORRECTION_FIELDS:
            if name in data and data[name] in (None, (), [], "usage"):
                del data[name]
        return data

    @property
    def tally(self) -> int:
        """How many events the record counts as in rollups: a usage event 1, a void -1, an adjustment 0."""
        return {"usage": 1, "void": -1, "adjustment": 0}[self.kind]
