"""Catalog use cases: meters and plans (read-only over the API)."""

from __future__ import annotations

from chalicelib.domain.models import Meter, Plan
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services.ports import CatalogReader


def list_meters(catalog: CatalogReader, include_archived: bool = False) -> list[Meter]:
    """The platform meters; archived ones only when asked for."""
    return [m for m in catalog.list_meters() if include_archived or m.active]


def list_plans(catalog: CatalogReader, include_deprecated: bool = False) -> list[Plan]:
    """Available plans; deprecated ones only when asked for (document 001)."""
    return [p for p in catalog.list_plans() if include_deprecated or p.status != "deprecated"]


def page_plans(
    catalog: CatalogReader, include_deprecated: bool, limit: int, after: object = None
) -> tuple[list[Plan], bool]:
    """A page of plans in id order after the plan id `after`, and whether more follow."""
    if after is not None and not isinstance(after, str):
        raise MeteringError(ErrorCode.INVALID_CURSOR, field="cursor")
    plans = sorted(list_plans(catalog, include_deprecated), key=lambda p: p.id)
    rest = [p for p in plans if after is None or p.id > after]
    return rest[:limit], len(rest) > limit


def get_plan(catalog: CatalogReader, plan_id: str) -> Plan:
    plan = catalog.get_plan(plan_id)
    if plan is None:
        raise MeteringError(ErrorCode.PLAN_NOT_FOUND, f"No plan has the id '{plan_id}'.")
    return plan
