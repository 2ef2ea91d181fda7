"""Routes of service lines: create (plan-gated), list, read, pause and resume."""

from __future__ import annotations

from chalice.app import Blueprint

from chalicelib.api.http import IDEMPOTENCY_HEADER_DOC, Call, Reply, endpoint
from chalicelib.api.schemas import (
    ServiceLineCreate,
    ServiceLineEnvelope,
    ServiceLineListPublic,
    ServiceLinePublic,
    ServiceLinesQuery,
)
from chalicelib.domain.auth import CATALOG_READ, SERVICE_LINES_WRITE
from chalicelib.domain.models import ServiceLine
from chalicelib.services import service_lines

bp = Blueprint(__name__)


def _public(call: Call, line: ServiceLine) -> dict[str, object]:
    units = {m.id: m.unit for m in call.container.catalog.list_meters()}
    return ServiceLinePublic.of(line, units).model_dump(mode="python")


@endpoint(
    bp,
    "/v1/service-lines",
    methods=("POST",),
    scope=SERVICE_LINES_WRITE,
    max_body_bytes=16384,
    body=ServiceLineCreate,
    responses={201: ServiceLineEnvelope, 200: ServiceLineEnvelope},
    headers=IDEMPOTENCY_HEADER_DOC,
)
def create_service_line(call: Call) -> Reply:
    """Create a service line; 403 plan_limit_exceeded outside the plan's product lines or active-line limit."""
    body = call.body_as(ServiceLineCreate)
    line, replay = service_lines.create_line(
        call.container.catalog,
        call.organization_id,
        body.workspace_id,
        body.name,
        body.product_line,
        body.rates,
        body.currency,
        call.container.clock(),
        execution_model=body.execution_model,
        idempotency_key=call.idempotency_header(),
    )
    return Reply({"data": _public(call, line)}, 200 if replay else 201)


@endpoint(bp, "/v1/service-lines", scope=CATALOG_READ, query=ServiceLinesQuery, responses={200: ServiceLineListPublic})
def list_service_lines(call: Call) -> Reply:
    """The organization's service lines, optionally by workspace and status."""
    query = call.query_as(ServiceLinesQuery)
    lines = [
        line
        for line in call.container.catalog.list_service_lines(call.organization_id)
        if (query.workspace_id is None or line.workspace_id == query.workspace_id)
        and (query.status is None or line.status == query.status)
    ]
    return Reply({"data": [_public(call, line) for line in lines], "meta": {"cursor": None, "has_more": False}})


@endpoint(bp, "/v1/service-lines/{line_id}", scope=CATALOG_READ, responses={200: ServiceLineEnvelope})
def get_service_line(call: Call) -> Reply:
    """One service line of the organization."""
    line = service_lines.get_line(call.container.catalog, call.organization_id, call.path["line_id"])
    return Reply({"data": _public(call, line)})


@endpoint(
    bp,
    "/v1/service-lines/{line_id}/pause",
    methods=("POST",),
    scope=SERVICE_LINES_WRITE,
    responses={200: ServiceLineEnvelope},
)
def pause_service_line(call: Call) -> Reply:
    """Pause a line: it accepts no usage and is hidden from meter subscriptions."""
    line = service_lines.set_status(call.container.catalog, call.organization_id, call.path["line_id"], "paused")
    return Reply({"data": _public(call, line)})


@endpoint(
    bp,
    "/v1/service-lines/{line_id}/resume",
    methods=("POST",),
    scope=SERVICE_LINES_WRITE,
    responses={200: ServiceLineEnvelope},
)
def resume_service_line(call: Call) -> Reply:
    """Resume a paused line, within the plan's active-line limit."""
    line = service_lines.set_status(call.container.catalog, call.organization_id, call.path["line_id"], "active")
    return Reply({"data": _public(call, line)})
