"""The usage dashboard: a static page served by the app, and two read-only routes it needs.

`GET /dashboard` is the page and `GET /dashboard/{asset}` its scripts, styles and the vendored
chart library (`chalicelib/dashboard/`); neither needs a key. The page keeps the API key in the
browser's sessionStorage and sends it only as an `Authorization` header to the API routes, so no
key is ever in a URL or a log. The page's asset routes are not API operations: the OpenAPI
document leaves them out.

`GET /v1/usage/timeseries` gives usage per service line, meter and day (or hour) for the
charts; `GET /v1/organization/limits` gives the plan's limits against what is used (active
lines, workspaces, API calls this month, agent credits) and what the caller's key may do.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Literal

from chalice.app import Blueprint, Response
from pydantic import Field

from chalicelib.api.http import (
    ANY_CONTENT_TYPE,
    EDGE_ROUTES,
    NATIVE,
    Call,
    Reply,
    endpoint,
    log_request,
    render,
    request_id_of,
)
from chalicelib.api.schemas import Schema, ScopeQuery, SummaryPeriod
from chalicelib.domain.auth import METER_REPORT, METERING_WRITE, SERVICE_LINES_WRITE, USAGE_READ, WORKSPACES_WRITE
from chalicelib.errors import ErrorCode, MeteringError, validation_error
from chalicelib.services import entitlements, queries
from chalicelib.services.service_lines import plan_of

bp = Blueprint(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "dashboard"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
# The page loads only its own files and talks only to its own origin (no CDN, no inline script).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
WRITE_SCOPES = frozenset({METERING_WRITE, METER_REPORT, SERVICE_LINES_WRITE, WORKSPACES_WRITE})
MAX_DAYS = 400
MAX_HOUR_DAYS = 7


@dataclass(frozen=True)
class Asset:
    """One file of the page, read once per process."""

    body: str
    content_type: str
    etag: str
    cache_control: str


@cache
def assets() -> dict[str, Asset]:
    """The page's files by name; the vendored library (versioned in its name) is cached for a day."""
    found: dict[str, Asset] = {}
    for path in sorted(ASSETS_DIR.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_text(encoding="utf-8")
        etag = '"' + hashlib.sha256(body.encode("utf-8")).hexdigest()[:20] + '"'
        vendored = path.name.startswith("uPlot")
        cache_control = "public, max-age=86400" if vendored else "no-cache"
        found[path.name] = Asset(body, content_type, etag, cache_control)
    return found


def _serve(name: str, route: str) -> Response:
    request = bp.current_request
    request_id = request_id_of(request)
    started = time.monotonic()
    asset = assets().get(name) if name != "index.html" or route == "/dashboard" else None
    if asset is None:
        error = MeteringError(ErrorCode.NOT_FOUND, "No dashboard file has this name.")
        response = render(404, NATIVE.error_body(error, request_id), NATIVE.content_type, request_id)
    else:
        headers: dict[str, str | list[str]] = {
            "Content-Type": asset.content_type,
            "Cache-Control": asset.cache_control,
            "ETag": asset.etag,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Request-Id": request_id,
        }
        if asset.content_type.startswith("text/html"):
            headers["Content-Security-Policy"] = CSP
        if_none_match = {k.lower(): v for k, v in (request.headers or {}).items()}.get("if-none-match", "")
        if asset.etag in [tag.strip() for tag in if_none_match.split(",")]:
            response = Response(body="", status_code=304, headers=headers)
        else:
            response = Response(body=asset.body, status_code=200, headers=headers)
    log_request(request_id, request.method, route, response.status_code, None, started)
    return response


@bp.route("/dashboard", methods=["GET"], content_types=ANY_CONTENT_TYPE)
def dashboard_page() -> Response:
    """The dashboard page."""
    return _serve("index.html", "/dashboard")


@bp.route("/dashboard/{asset}", methods=["GET"], content_types=ANY_CONTENT_TYPE)
def dashboard_asset(asset: str) -> Response:
    """A script, style sheet or licence of the page."""
    return _serve(asset, "/dashboard/{asset}")


# A page is not an API operation: the OpenAPI document leaves these out, as it does the edge's answers.
EDGE_ROUTES.update({("/dashboard", "GET"), ("/dashboard/{asset}", "GET")})


# -- usage per day or hour, for the charts --------------------------------------------------------


class TimeseriesQuery(ScopeQuery):
    """Query parameters of `GET /v1/usage/timeseries`."""

    granularity: Literal["day", "hour"] = Field(
        default="day", description=f"day (at most {MAX_DAYS} days) or hour (at most {MAX_HOUR_DAYS} days)."
    )


class SeriesPublic(Schema):
    service_line_id: str
    meter: str
    unit: str
    aggregation: str
    values: list[Decimal] = Field(description="One value per bucket, in the order of `buckets` (0: no usage).")


class Timeseries(Schema):
    period: SummaryPeriod
    granularity: str
    buckets: list[str] = Field(description="Days (YYYY-MM-DD) or UTC hours (YYYY-MM-DDTHH:00:00Z).")
    series: list[SeriesPublic]


class TimeseriesPublic(Schema):
    data: Timeseries


@endpoint(bp, "/v1/usage/timeseries", scope=USAGE_READ, query=TimeseriesQuery, responses={200: TimeseriesPublic})
def usage_timeseries(call: Call) -> Reply:
    """Usage per service line, meter and day (by period_date) or UTC hour (by event time), from rollups."""
    query = call.query_as(TimeseriesQuery)
    end = query.to or call.container.clock().date()
    start = query.from_ or end.replace(day=1)
    if start > end:
        raise validation_error("from", "must not be after 'to' (which defaults to today)")
    if end >= date.max:  # the day after `to` bounds the series
        raise validation_error("to", f"must be before {date.max.isoformat()}")
    most = MAX_HOUR_DAYS if query.granularity == "hour" else MAX_DAYS
    if (end - start).days + 1 > most:
        raise validation_error("to", f"a {query.granularity} series spans at most {most} days")
    if query.organization_id is not None and query.organization_id != call.organization_id:
        raise MeteringError(ErrorCode.FORBIDDEN, "This API key may only read its own organization.")
    lines = queries.lines_in_scope(
        call.container.catalog, call.organization_id, None, query.workspace_id, query.service_line_id
    )
    line_ids = [line.id for line in lines]
    meters = {m.id: m for m in call.container.catalog.list_meters()}  # each meter's aggregation
    if query.granularity == "day":
        days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
        keys = [d.isoformat() for d in days]
        buckets = keys
        totals = queries.daily_totals(call.container.rollups, call.organization_id, line_ids, start, end, meters.get)
    else:
        first = datetime.combine(start, datetime.min.time(), UTC)
        hours = [first + timedelta(hours=n) for n in range(24 * ((end - start).days + 1))]
        keys = [h.strftime("%Y-%m-%dT%H") for h in hours]
        buckets = [h.strftime("%Y-%m-%dT%H:00:00Z") for h in hours]
        after = (end + timedelta(days=1)).isoformat() + "T00"
        totals = queries.hourly_totals(
            call.container.rollups, call.organization_id, line_ids, keys[0], after, meters.get
        )
    series = []
    for line_id, meter_id in sorted({(line, meter) for line, meter, _ in totals}):
        meter = meters.get(meter_id)
        series.append(
            {
                "service_line_id": line_id,
                "meter": meter_id,
                "unit": meter.unit if meter else "",
                "aggregation": meter.aggregation if meter else "sum",
                "values": [totals.get((line_id, meter_id, k), Decimal(0)) for k in keys],
            }
        )
    period = {"from": start.isoformat(), "to": end.isoformat()}
    return Reply({"data": {"period": period, "granularity": query.granularity, "buckets": buckets, "series": series}})


# -- the plan's limits against what is used ---------------------------------------------------------


class Allowance(Schema):
    used: Decimal
    limit: int | str | None = Field(description="null: unlimited; 'custom': set by contract, not capped here.")


class KeyPublic(Schema):
    id: str
    scopes: list[str]
    read_only: bool = Field(description="True when the key can change nothing (no write scope).")


class PlanBrief(Schema):
    id: str
    name: str
    tier: str
    currency: str


class Limits(Schema):
    organization_id: str
    month: str = Field(description="The calendar month (UTC) the monthly counts are for, YYYY-MM.")
    resets_at: str
    plan: PlanBrief
    key: KeyPublic
    active_service_lines: Allowance
    workspaces: Allowance
    api_calls: Allowance = Field(
        description="Calls counted this month; each server adds its calls at least every 25 calls or 5 seconds."
    )
    agent_credits: Allowance | None = Field(description="null when the plan has no agent credits.")


class LimitsPublic(Schema):
    data: Limits


@endpoint(bp, "/v1/organization/limits", scope=USAGE_READ, responses={200: LimitsPublic})
def organization_limits(call: Call) -> Reply:
    """The plan's limits against what the organization uses, and what the caller's key may do."""
    catalog = call.container.catalog
    organization_id = call.organization_id
    plan = plan_of(catalog, organization_id)
    now = call.container.clock()
    first, _, resets_at = entitlements.month_bounds(now)
    month = first.strftime("%Y-%m")
    lines = catalog.list_service_lines(organization_id)
    credits = None
    if plan.limits.agent_credits_monthly not in (None, 0):
        found = entitlements.agent_credits(catalog, call.container.rollups, organization_id, now)
        credits = {"used": found.used, "limit": found.limit}
    scopes = sorted(call.principal.scopes)
    return Reply(
        {
            "data": {
                "organization_id": organization_id,
                "month": month,
                "resets_at": resets_at.isoformat().replace("+00:00", "Z"),
                "plan": {"id": plan.id, "name": plan.name, "tier": plan.tier, "currency": plan.currency},
                "key": {
                    "id": call.principal.key_id,
                    "scopes": scopes,
                    "read_only": not WRITE_SCOPES & set(scopes),
                },
                "active_service_lines": {
                    "used": sum(1 for line in lines if line.status == "active"),
                    "limit": plan.limits.active_service_lines,
                },
                "workspaces": {"used": len(catalog.list_workspaces(organization_id)), "limit": plan.limits.workspaces},
                "api_calls": {
                    "used": catalog.get_api_calls(organization_id, month),
                    "limit": plan.limits.api_calls_monthly,
                },
                "agent_credits": credits,
            }
        }
    )
