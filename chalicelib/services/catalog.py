"""Catalog use cases: meters and plans (read-only over the API)."""

from __future__ import annotations

from chalicelib.domain.models import Meter, Plan
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services.ports import CatalogRepository


def list_meters(catalog: CatalogRepository, include_archived: bool = False) -> list[Meter]:
    """The platform meters; archived ones only when asked for."""
    return [m for m in catalog.list_meters() if include_archived or m.active]


def list_plans(catalog: CatalogRepository, include_deprecated: bool = False) -> list[Plan]:
    """Available plans; deprecated ones only when asked for (document 001)."""
    return [p for p in catalog.list_plans() if include_deprecated or p.status != "deprecated"]


def get_plan(catalog: CatalogRepository, plan_id: str) -> Plan:
    plan = catalog.get_plan(plan_id)
    if plan is None:
        raise MeteringError(ErrorCode.PLAN_NOT_FOUND, f"No plan has the id '{plan_id}'.")
    return plan
