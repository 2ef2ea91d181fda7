"""Routes of the meter and plan catalogs (documents 000 and 001)."""

from __future__ import annotations

from chalice.app import Blueprint

from chalicelib.api.http import Call, Reply, endpoint
from chalicelib.api.schemas import (
    MeterListPublic,
    MeterPublic,
    MetersQuery,
    PlanEnvelope,
    PlanListPublic,
    PlanPublic,
    PlansQuery,
    PlanSummaryPublic,
)
from chalicelib.domain import cursors
from chalicelib.domain.auth import CATALOG_READ
from chalicelib.services import catalog

bp = Blueprint(__name__)


@endpoint(bp, "/v1/meters", scope=CATALOG_READ, query=MetersQuery, responses={200: MeterListPublic})
def list_meters(call: Call) -> Reply:
    """List the platform meters with their units and product lines."""
    query = call.query_as(MetersQuery)
    meters = catalog.list_meters(call.container.catalog, query.include_archived)
    return Reply({"data": [MeterPublic.of(m).model_dump(mode="python") for m in meters]})


@endpoint(bp, "/v1/plans", scope=CATALOG_READ, query=PlansQuery, responses={200: PlanListPublic})
def list_plans(call: Call) -> Reply:
    """List the plans; deprecated ones only with include_deprecated=true."""
    query = call.query_as(PlansQuery)
    bound = cursors.binding(call.organization_id, "plans", {"include_deprecated": query.include_deprecated})
    secret = call.container.settings.cursor_secret
    after = cursors.decode(query.cursor, bound, secret).get("after") if query.cursor is not None else None
    page, more = catalog.page_plans(call.container.catalog, query.include_deprecated, query.limit, after)
    cursor = cursors.encode({"after": page[-1].id}, bound, secret) if more else None
    data = [PlanSummaryPublic.of(p).model_dump(mode="python") for p in page]
    return Reply({"data": data, "meta": {"cursor": cursor, "has_more": more}})


@endpoint(bp, "/v1/plans/{plan_id}", scope=CATALOG_READ, responses={200: PlanEnvelope})
def get_plan(call: Call) -> Reply:
    """One plan with its features, limits, support tier and SLA."""
    plan = catalog.get_plan(call.container.catalog, call.path["plan_id"])
    return Reply({"data": PlanPublic.of(plan).model_dump(mode="python")})
