"""Service lines: create, list, read, pause and resume, gated by the organization's plan (document 001)."""

from __future__ import annotations

import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any

from chalicelib.domain.models import Plan, ServiceLine
from chalicelib.domain.store import Idempotency
from chalicelib.domain.usage import decimal_places, fingerprint
from chalicelib.errors import ErrorCode, MeteringError, validation_error
from chalicelib.services.ports import CatalogRepository

MAX_RATE = Decimal(10) ** 9


def plan_of(catalog: CatalogRepository, organization_id: str) -> Plan:
    plan = catalog.get_organization_plan(organization_id)
    if plan is None:
        raise MeteringError(ErrorCode.INTERNAL_ERROR, "The organization has no plan.")
    return plan


def get_line(catalog: CatalogRepository, organization_id: str, line_id: str) -> ServiceLine:
    line = catalog.get_service_line(organization_id, line_id)
    if line is None:
        raise MeteringError(
            ErrorCode.SERVICE_LINE_NOT_FOUND, f"No service line '{line_id}' belongs to this organization."
        )
    return line


def _limit_error(plan: Plan) -> MeteringError:
    return MeteringError(
        ErrorCode.PLAN_LIMIT_EXCEEDED,
        f"Plan '{plan.id}' allows {plan.limits.active_service_lines} active service lines.",
        details={"limit": "active_service_lines", "plan_id": plan.id, "max": plan.limits.active_service_lines},
    )


def create_line(
    catalog: CatalogRepository,
    organization_id: str,
    workspace_id: str,
    name: str,
    product_line: str,
    rates: dict[str, Decimal],
    currency: str,
    now: datetime,
    execution_model: str = "on_demand",
    idempotency_key: str | None = None,
) -> tuple[ServiceLine, bool]:
    """Create an active service line if the plan allows its product line, its execution model and one more line.

    With an idempotency key, a retry of the same request returns the line it created (True: a replay); the
    same key with another request is 409 idempotency_conflict. The key is looked up only when the create fails.
    """
    payload = {
        "workspace_id": workspace_id,
        "name": name,
        "product_line": product_line,
        "rates": rates,
        "currency": currency,
        "execution_model": execution_model,
    }
    idempotency = creation_key(idempotency_key, payload)
    if workspace_id not in {w.id for w in catalog.list_workspaces(organization_id)}:
        raise MeteringError(
            ErrorCode.NOT_FOUND, f"No workspace '{workspace_id}' belongs to this organization.", field="workspace_id"
        )
    plan = plan_of(catalog, organization_id)
    if product_line not in plan.allowed_product_lines:
        raise MeteringError(
            ErrorCode.PLAN_LIMIT_EXCEEDED,
            f"Plan '{plan.id}' does not allow the '{product_line}' product line.",
            field="product_line",
            details={"limit": "allowed_product_lines", "allowed_product_lines": list(plan.allowed_product_lines)},
        )
    if execution_model not in plan.allowed_execution_models:
        raise MeteringError(
            ErrorCode.PLAN_LIMIT_EXCEEDED,
            f"Plan '{plan.id}' does not allow the '{execution_model}' execution model.",
            field="execution_model",
            details={"limit": "allowed_execution_models", "allowed": list(plan.allowed_execution_models)},
        )
    if not rates:
        raise validation_error("rates", "must name at least one meter")
    for meter_id, rate in rates.items():
        meter = catalog.get_meter(meter_id)
        if meter is None:
            raise MeteringError(
                ErrorCode.METER_NOT_FOUND, f"No meter is named '{meter_id}'.", field=f"rates.{meter_id}"
            )
        if not meter.active:
            raise MeteringError(ErrorCode.METER_ARCHIVED, f"Meter '{meter_id}' is archived.", field=f"rates.{meter_id}")
        if product_line not in meter.product_lines:
            raise MeteringError(
                ErrorCode.METER_NOT_PERMITTED,
                f"Meter '{meter_id}' does not belong to the '{product_line}' product line.",
                field=f"rates.{meter_id}",
            )
        if not rate.is_finite() or rate < 0 or rate > MAX_RATE or decimal_places(rate) > 9:
            raise validation_error(f"rates.{meter_id}", "must be a number from 0 to 10^9 with at most 9 decimals")
    for _ in range(5):
        line = ServiceLine(
            id=f"LIN-{now:%y}-{secrets.randbelow(900000) + 100000}",
            organization_id=organization_id,
            workspace_id=workspace_id,
            name=name,
            product_line=product_line,  # type: ignore[arg-type]
            execution_model=execution_model,  # type: ignore[arg-type]
            status="active",
            currency=currency,
            rates=rates,
            created_at=now,
        )
        outcome = catalog.create_service_line(line, plan.limits.active_service_lines, idempotency)
        if outcome is None:
            return line, False
        if outcome == "replay" and idempotency is not None:
            return get_line(
                catalog, organization_id, replayed_id(catalog, organization_id, "service_line", idempotency)
            ), True
        if outcome == "limit":
            raise _limit_error(plan)
    raise MeteringError(ErrorCode.SERVICE_UNAVAILABLE, "Could not allocate a service line id; retry.")


def creation_key(idempotency_key: str | None, request: dict[str, Any]) -> Idempotency | None:
    """A creation's idempotency key with its request's fingerprint; None without a key."""
    return Idempotency(idempotency_key, fingerprint(request)) if idempotency_key is not None else None


def replayed_id(catalog: CatalogRepository, organization_id: str, kind: str, idempotency: Idempotency) -> str:
    """The id a creation key made before; 409 when the key was used for another request."""
    first = catalog.get_creation_key(organization_id, kind, idempotency.key)
    if first is None:  # the key's record and what it names are written together: it cannot be missing
        raise MeteringError(ErrorCode.SERVICE_UNAVAILABLE, "The idempotency key could not be read; retry.")
    if first.payload_hash != idempotency.payload_hash:
        raise MeteringError(
            ErrorCode.IDEMPOTENCY_CONFLICT,
            "This Idempotency-Key was used with a different request.",
            field="Idempotency-Key",
        )
    return first.target_id


def set_status(catalog: CatalogRepository, organization_id: str, line_id: str, status: str) -> ServiceLine:
    """Pause or resume a line (idempotent); resuming counts against the plan's active-line limit."""
    line = get_line(catalog, organization_id, line_id)
    if line.status == status:
        return line
    plan = plan_of(catalog, organization_id)
    outcome = catalog.set_service_line_status(organization_id, line_id, status, plan.limits.active_service_lines)
    if outcome == "limit":
        raise _limit_error(plan)
    return get_line(catalog, organization_id, line_id)
