"""Routes that read usage (document 000): event listings and summaries."""

from __future__ import annotations

from datetime import date

from chalice.app import Blueprint

from chalicelib.api.http import Call, Reply, endpoint
from chalicelib.api.schemas import (
    ScopeQuery,
    SummaryQuery,
    UsageEventPublic,
    UsageListPublic,
    UsageQuery,
    UsageSummaryPublic,
)
from chalicelib.domain import cursors
from chalicelib.domain.auth import USAGE_READ
from chalicelib.domain.models import ServiceLine, UsageEvent
from chalicelib.errors import validation_error
from chalicelib.services import queries

bp = Blueprint(__name__)

EARLIEST = date(2000, 1, 1)
LATEST = date(9999, 12, 31)


def _lines(call: Call, query: ScopeQuery) -> list[ServiceLine]:
    if query.from_ is not None and query.to is not None and query.from_ > query.to:
        raise validation_error("from", "must not be after 'to'")
    return queries.lines_in_scope(
        call.container.catalog,
        call.organization_id,
        query.organization_id,
        query.workspace_id,
        query.service_line_id,
    )


def _standing(event: UsageEvent) -> bool:
    """Neither a voided event nor a void (hide_voided): what is left adds up to the totals."""
    return event.voided_by is None and event.kind != "void"


@endpoint(bp, "/v1/usage", scope=USAGE_READ, query=UsageQuery, responses={200: UsageListPublic})
def list_usage(call: Call) -> Reply:
    """List usage events in (service line, period_date, id) order, with an opaque cursor."""
    query = call.query_as(UsageQuery)
    lines = _lines(call, query)
    filters = query.model_dump(mode="json", exclude={"cursor", "limit"})
    bound = cursors.binding(call.organization_id, "usage", filters)
    secret = call.container.settings.cursor_secret
    position = cursors.decode(query.cursor, bound, secret) if query.cursor is not None else None
    page = queries.list_usage(
        call.container.events,
        call.organization_id,
        lines,
        query.from_ or EARLIEST,
        query.to or LATEST,
        query.limit,
        query.meter,
        position,
        keep=_standing if query.hide_voided else None,
    )
    cursor = cursors.encode(page.next_position, bound, secret) if page.next_position else None
    return Reply(
        {
            "data": [UsageEventPublic.of(e).model_dump(mode="python", exclude_none=True) for e in page.events],
            "meta": {"cursor": cursor, "has_more": cursor is not None},
        }
    )


@endpoint(bp, "/v1/usage/summary", scope=USAGE_READ, query=SummaryQuery, responses={200: UsageSummaryPublic})
def usage_summary(call: Call) -> Reply:
    """Usage per service line and meter over a period (each meter under its aggregation), with cost
    estimates, from rollups only; group_by breaks meters down by a metadata key."""
    query = call.query_as(SummaryQuery)
    today = call.container.clock().date()
    end = query.to or today
    if end >= LATEST:  # the day after `to` bounds the period
        raise validation_error("to", f"must be before {LATEST.isoformat()}")
    if query.from_ is not None and query.from_ > end:
        raise validation_error("from", "must not be after 'to' (which defaults to today)")
    start = query.from_ or end.replace(day=1)
    lines = _lines(call, query)
    if query.group_by is not None:
        keys = sorted({key for meter in call.container.catalog.list_meters() for key in meter.group_by})
        if query.group_by not in keys:
            raise validation_error("group_by", f"no meter groups by '{query.group_by}' (keys: {', '.join(keys)})")
    summary = queries.summarize(
        call.container.catalog, call.container.rollups, call.organization_id, lines, start, end, query.group_by
    )
    return Reply(
        {
            "data": {
                "period": {"from": start.isoformat(), "to": end.isoformat()},
                "organization_id": call.organization_id,
                **summary,
            }
        }
    )
