"""The Scalr dialect (document 004): `GET /usage-statistics`, a JSON:API document of usage per date.

Mapping onto the core: a Scalr account is our organization, `breakdown_by=environment`
breaks down by our workspaces and `breakdown_by=workspace` by our service lines;
`runs-count` sums the meter `agent.runs` and `runs-seconds` the meter `agent.run_seconds`.
Only day rollups are read (by period_date, through services/queries.py), never raw events. Errors are JSON:API
error documents: {"errors": [{"status", "code", "title", "detail", "source"?}]}.

Both attributes are integers, as the document types them. Runs are whole (ingest refuses a
fractional `agent.runs`); run seconds are summed exactly and each row's exact sum is rounded
half-even to whole seconds only when rendered (100.5 -> 100, 101.5 -> 102, 0.3 -> 0), so the
exact value stays in the store and a `total` row is the rounded exact total, not a sum of
rounded rows. `runs-count` is rendered by the same rule, which matters only for fractional
runs stored before ingest refused them.

`filter[date]=between:A,B` covers [A, B). Usage is kept per UTC date (the period_date the
usage applies to), so a part of a day cannot be answered on that basis: A and B must be at
midnight UTC (any offset, e.g. 2026-05-11T02:00:00+02:00), else the request is a 400
`invalid_date_range` that names the bound; a range is never widened to whole days silently.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import quote, urlencode

from chalice.app import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from chalicelib.api.http import Call, Reply, endpoint
from chalicelib.api.schemas import Schema
from chalicelib.domain import aggregation
from chalicelib.domain.aggregation import EMPTY, RollupState, fold
from chalicelib.domain.auth import ACCOUNTS_BILLING
from chalicelib.domain.models import Meter, ServiceLine
from chalicelib.domain.timestamps import TimestampError, parse_rfc3339
from chalicelib.domain.windows import days, each_day
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services import queries
from chalicelib.services.ports import CatalogReader, RollupStore

bp = Blueprint(__name__)

JSON_API = "application/vnd.api+json"
PATH = "/usage-statistics"
PROFILE = "preview"
RESOURCE_TYPE = "usage-statistics"
RUNS_COUNT_METER = "agent.runs"
RUNS_SECONDS_METER = "agent.run_seconds"
MAX_RANGE_DAYS = 366
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 100
MAX_PAGE_NUMBER = 1_000_000

P_DATE = "filter[date]"
P_ACCOUNT = "filter[account]"
P_BREAKDOWN = "breakdown_by"
P_TOTAL = "total"
P_PAGE_NUMBER = "page[number]"
P_PAGE_SIZE = "page[size]"
KNOWN_PARAMETERS = (P_DATE, P_ACCOUNT, P_BREAKDOWN, P_TOTAL, P_PAGE_NUMBER, P_PAGE_SIZE)

Breakdown = Literal["environment", "workspace"]
BREAKDOWNS: tuple[Breakdown, ...] = ("environment", "workspace")
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})

_DIGITS = re.compile(r"[0-9]{1,9}")

_TITLES = {
    "missing_parameter": "Missing query parameter",
    "unknown_parameter": "Unknown query parameter",
    "duplicate_parameter": "Repeated query parameter",
    "invalid_filter": "Invalid filter",
    "invalid_date_range": "Invalid date range",
    "invalid_parameter": "Invalid query parameter",
    "invalid_page": "Invalid page parameter",
    "profile_required": "API profile required",
    "unsupported_profile": "Unsupported API profile",
    "account_not_found": "Account not found",
}


class ScalrError(MeteringError):
    """A request error with its JSON:API code and the query parameter or header it concerns."""

    def __init__(
        self,
        code: ErrorCode,
        jsonapi_code: str,
        detail: str,
        *,
        parameter: str | None = None,
        header: str | None = None,
    ) -> None:
        super().__init__(code, detail, field=parameter or header)
        self.jsonapi_code = jsonapi_code
        self.parameter = parameter
        self.header = header


def bad_request(jsonapi_code: str, detail: str, parameter: str | None = None) -> ScalrError:
    return ScalrError(ErrorCode.VALIDATION_ERROR, jsonapi_code, detail, parameter=parameter)


class JsonApiErrorSource(Schema):
    """Which query parameter or request header an error concerns."""

    model_config = ConfigDict(extra="forbid")

    parameter: str | None = None
    header: str | None = None


class JsonApiError(Schema):
    """One JSON:API error object."""

    model_config = ConfigDict(extra="forbid")

    status: str
    code: str
    title: str
    detail: str
    source: JsonApiErrorSource | None = None


class JsonApiErrorDocument(Schema):
    """A JSON:API error document: {"errors": [{"status", "code", "title", "detail", "source"?}]}."""

    model_config = ConfigDict(extra="forbid")

    errors: list[JsonApiError]


class ScalrDialect:
    """Errors as a JSON:API error document."""

    content_type = JSON_API
    error_model: type[BaseModel] = JsonApiErrorDocument

    def error_body(self, error: MeteringError, request_id: str) -> Any:
        status = error.http_status
        code = error.jsonapi_code if isinstance(error, ScalrError) else error.code
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        item: dict[str, Any] = {
            "status": str(status),
            "code": code,
            "title": _TITLES.get(code, phrase),
            "detail": error.message,
        }
        if isinstance(error, ScalrError) and error.header:
            item["source"] = {"header": error.header}
        elif error.field:
            item["source"] = {"parameter": error.field}
        return {"errors": [item]}


SCALR = ScalrDialect()


# -- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageStatisticsQuery:
    """A validated `GET /usage-statistics` request."""

    date_filter: str
    account: str
    first: date
    last: date
    breakdown_by: Breakdown | None
    total: bool
    total_text: str | None
    page_number: int
    page_size: int


def parse_datetime(text: str, parameter: str = P_DATE) -> datetime:
    """An RFC 3339 date-time (a time zone offset is required), in UTC (chalicelib/domain/timestamps.py)."""
    try:
        return parse_rfc3339(text, space_is_plus=True)
    except TimestampError as bad:
        if bad.reason.startswith("is not an RFC 3339"):
            raise bad_request(
                "invalid_filter",
                f"'{text}' is not an RFC 3339 date-time such as 2022-01-01T00:00:00Z.",
                parameter,
            ) from None
        raise bad_request("invalid_filter", f"'{text}' is not a valid date-time.", parameter) from None


def parse_date_filter(text: str) -> tuple[date, date]:
    """`between:A,B` (both at midnight UTC) as the first and last period dates it covers: A <= d < B."""
    operator, colon, operands = text.partition(":")
    if not colon or operator != "between":
        raise bad_request(
            "invalid_filter",
            f"{P_DATE} must be 'between:<start>,<end>' with RFC 3339 date-times, "
            "e.g. between:2022-01-01T00:00:00Z,2022-02-01T00:00:00Z.",
            P_DATE,
        )
    parts = operands.split(",")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise bad_request("invalid_filter", f"{P_DATE} 'between:' takes exactly two date-times: A,B.", P_DATE)
    start = parse_datetime(parts[0].strip())
    end = parse_datetime(parts[1].strip())
    if start >= end:
        raise bad_request("invalid_date_range", "The start of the date range must be before its end.", P_DATE)
    for which, moment, text_given in (("start", start, parts[0].strip()), ("end", end, parts[1].strip())):
        if moment != datetime.combine(moment.date(), time(), UTC):
            raise bad_request(
                "invalid_date_range",
                f"The {which} of the date range, {text_given}, is not at midnight UTC: usage statistics are "
                "kept per UTC date, so a part of a day cannot be answered. Use whole UTC days, e.g. "
                f"between:{start.date().isoformat()}T00:00:00Z,{end.date().isoformat()}T00:00:00Z.",
                P_DATE,
            )
    first = start.date()
    last = end.date() - timedelta(days=1)  # the end is exclusive
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise bad_request("invalid_date_range", f"The date range may cover at most {MAX_RANGE_DAYS} days.", P_DATE)
    return first, last


def parse_flag(text: str, parameter: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise bad_request("invalid_parameter", f"{parameter} must be true or false.", parameter)


def parse_page_value(text: str | None, parameter: str, default: int, maximum: int) -> int:
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= maximum:
        raise bad_request("invalid_page", f"{parameter} must be an integer from 1 to {maximum}.", parameter)
    return int(text)


def parse_query(query: Mapping[str, str], repeated: frozenset[str] = frozenset()) -> UsageStatisticsQuery:
    """Validate the query string; every problem is a 400 naming its parameter."""
    unknown = sorted(set(query) - set(KNOWN_PARAMETERS))
    if unknown:
        raise bad_request(
            "unknown_parameter",
            f"Unknown query parameter '{unknown[0]}'; known: {', '.join(KNOWN_PARAMETERS)}.",
            unknown[0],
        )
    if repeated:
        name = sorted(repeated)[0]
        raise bad_request("duplicate_parameter", f"The query parameter '{name}' may be given only once.", name)
    for required in (P_DATE, P_ACCOUNT):
        if not query.get(required, "").strip():
            raise bad_request("missing_parameter", f"The query parameter {required} is required.", required)
    first, last = parse_date_filter(query[P_DATE])
    breakdown: Breakdown | None = None
    if P_BREAKDOWN in query:
        value = query[P_BREAKDOWN]
        if value not in BREAKDOWNS:
            raise bad_request(
                "invalid_parameter", f"{P_BREAKDOWN} must be 'environment' or 'workspace', not '{value}'.", P_BREAKDOWN
            )
        breakdown = "environment" if value == "environment" else "workspace"
    total_text = query.get(P_TOTAL)
    return UsageStatisticsQuery(
        date_filter=query[P_DATE],
        account=query[P_ACCOUNT],
        first=first,
        last=last,
        breakdown_by=breakdown,
        total=parse_flag(total_text, P_TOTAL) if total_text is not None else False,
        total_text=total_text,
        page_number=parse_page_value(query.get(P_PAGE_NUMBER), P_PAGE_NUMBER, 1, MAX_PAGE_NUMBER),
        page_size=parse_page_value(query.get(P_PAGE_SIZE), P_PAGE_SIZE, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    )


def check_profile(prefer: str | None) -> None:
    """The `Prefer` header (RFC 7240) must ask for `profile=preview`."""
    profiles: list[str] = []
    for preference in (prefer or "").split(","):
        token, _, value = preference.split(";", 1)[0].partition("=")
        if token.strip().lower() == "profile":
            profiles.append(value.strip().strip('"'))
    if not profiles:
        raise ScalrError(
            ErrorCode.INVALID_REQUEST,
            "profile_required",
            f"This endpoint needs the header 'Prefer: profile={PROFILE}'.",
            header="Prefer",
        )
    if any(p != PROFILE for p in profiles):
        raise ScalrError(
            ErrorCode.INVALID_REQUEST,
            "unsupported_profile",
            f"Unsupported profile '{next(p for p in profiles if p != PROFILE)}'; "
            f"this endpoint answers only 'Prefer: profile={PROFILE}'.",
            header="Prefer",
        )


# -- the use case ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    """One usage statistic: a date (None for the whole period) and an optional breakdown entity."""

    day: date | None
    breakdown_id: str | None
    breakdown_name: str | None
    runs_count: Decimal
    runs_seconds: Decimal


def usage_statistics(
    catalog: CatalogReader,
    rollups: RollupStore,
    organization_id: str,
    first: date,
    last: date,
    breakdown_by: Breakdown | None,
    total: bool,
) -> list[UsageRow]:
    """Runs and run seconds of an organization from day rollups (the query service), first <= period_date <= last.

    Ordered by date, then breakdown id; only rows with usage (a nonzero sum) are returned.
    """
    lines = catalog.list_service_lines(organization_id)
    entity_of: dict[str, tuple[str | None, str | None]] = {}
    if breakdown_by == "environment":
        names = {w.id: w.name for w in catalog.list_workspaces(organization_id)}
        entity_of = {line.id: (line.workspace_id, names.get(line.workspace_id)) for line in lines}
    elif breakdown_by == "workspace":
        entity_of = {line.id: (line.id, line.name) for line in lines}
    sums: dict[tuple[date | None, str | None], list[RollupState]] = defaultdict(lambda: [EMPTY, EMPTY])
    entity_names: dict[str | None, str | None] = {}
    windows = days(first, last) if total else each_day(first, last)
    states = queries.window_states(rollups, organization_id, _ids(lines), windows)
    for (line_id, meter, window), state in states.items():
        if meter not in (RUNS_COUNT_METER, RUNS_SECONDS_METER):
            continue
        entity_id, entity_name = entity_of.get(line_id, (None, None))
        entity_names[entity_id] = entity_name
        day = None if total else windows.bounds(window)[0].date()
        pair = sums[(day, entity_id)]
        slot = 0 if meter == RUNS_COUNT_METER else 1
        pair[slot] = fold(pair[slot], state)
    runs_meter = catalog.get_meter(RUNS_COUNT_METER)
    seconds_meter = catalog.get_meter(RUNS_SECONDS_METER)
    values = {k: (_value(runs_meter, count), _value(seconds_meter, seconds)) for k, (count, seconds) in sums.items()}
    rows = [
        UsageRow(day, entity_id, entity_names[entity_id], count, seconds)
        for (day, entity_id), (count, seconds) in values.items()
        if count != 0 or seconds != 0
    ]
    return sorted(rows, key=lambda r: (r.day or date.min, r.breakdown_id or ""))


def _value(meter: Meter | None, state: RollupState) -> Decimal:
    """A meter's value under its aggregation (both Scalr meters sum)."""
    return aggregation.value(meter.aggregation if meter is not None else "sum", state)


def _ids(lines: list[ServiceLine]) -> list[str]:
    return [line.id for line in lines]


# -- rendering -------------------------------------------------------------------------------


def whole(quantity: Decimal) -> int:
    """A count or a duration as the integer the document types it: rounded half-even (exact when whole)."""
    return int(quantity.to_integral_value(rounding=ROUND_HALF_EVEN))


def statistic_id(account: str, query: UsageStatisticsQuery, row: UsageRow) -> str:
    """A stable hex id of (account, date or whole period, breakdown kind and id)."""
    when = row.day.isoformat() if row.day else f"{query.first.isoformat()}..{query.last.isoformat()}"
    text = "\x1f".join((RESOURCE_TYPE, account, when, query.breakdown_by or "", row.breakdown_id or ""))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resource(account: str, query: UsageStatisticsQuery, row: UsageRow) -> dict[str, Any]:
    return {
        "type": RESOURCE_TYPE,
        "id": statistic_id(account, query, row),
        "attributes": {
            "breakdown-id": row.breakdown_id,
            "breakdown-name": row.breakdown_name,
            "date": row.day.isoformat() if row.day else None,
            "runs-count": whole(row.runs_count),
            "runs-seconds": whole(row.runs_seconds),
        },
        "links": None,
        "relationships": {"account": {"data": {"id": account, "type": "accounts"}}},
    }


_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](?::[0-9]{1,5})?", re.ASCII)


def base_url(context: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    """The URL of this endpoint as the caller reached it (relative when the host is unknown or not a host name).

    Host and X-Forwarded-Proto come from the client: only a host name (or IP) with an optional port and
    the schemes http and https are echoed into links, so a crafted header cannot plant a javascript: URL.
    """
    path = str(context.get("path") or PATH)
    host = str(context.get("domainName") or headers.get("host") or "")
    if not _HOST.fullmatch(host):
        return path
    forwarded = (headers.get("x-forwarded-proto") or "").split(",")[0].strip().lower()
    scheme = forwarded if forwarded in ("http", "https") else ("https" if context.get("domainName") else "http")
    return f"{scheme}://{host}{path}"


def page_link(base: str, query: UsageStatisticsQuery, page: int) -> str:
    params = [(P_DATE, query.date_filter), (P_ACCOUNT, query.account)]
    if query.breakdown_by is not None:
        params.append((P_BREAKDOWN, query.breakdown_by))
    if query.total_text is not None:
        params.append((P_TOTAL, query.total_text))
    params += [(P_PAGE_NUMBER, str(page)), (P_PAGE_SIZE, str(query.page_size))]
    return f"{base}?{urlencode(params, quote_via=quote)}"


def document(account: str, query: UsageStatisticsQuery, rows: list[UsageRow], base: str) -> dict[str, Any]:
    """The JSON:API document of one page of rows."""
    size, page = query.page_size, query.page_number
    total_pages = max(1, -(-len(rows) // size))
    next_page = page + 1 if page < total_pages else None
    prev_page = page - 1 if page > 1 else None
    selected = rows[(page - 1) * size : page * size]
    return {
        "data": [resource(account, query, row) for row in selected],
        "included": None,
        "links": {
            "first": page_link(base, query, 1),
            "last": page_link(base, query, total_pages),
            "next": page_link(base, query, next_page) if next_page else None,
            "prev": page_link(base, query, prev_page) if prev_page else None,
            "self": page_link(base, query, page),
        },
        "meta": {
            "pagination": {
                "current-page": page,
                "next-page": next_page,
                "prev-page": prev_page,
                "total-count": len(rows),
                "total-pages": total_pages,
            }
        },
    }


# -- the route -------------------------------------------------------------------------------


def _repeated_parameters() -> frozenset[str]:
    params = bp.current_request.query_params
    if params is None:
        return frozenset()
    return frozenset(name for name in params if len(params.getlist(name)) > 1)


class UsageStatisticsParams(Schema):
    """The query parameters of `GET /usage-statistics`, as the OpenAPI document shows them."""

    filter_date: str = Field(
        alias="filter[date]", description="between:<RFC 3339>,<RFC 3339>, both at midnight UTC (end exclusive)"
    )
    filter_account: str = Field(alias="filter[account]", description="The account (organization) id.")
    breakdown_by: Literal["environment", "workspace"] | None = None
    total: str | None = Field(default=None, description="true to summarize the whole period.")
    page_number: int | None = Field(default=None, alias="page[number]", ge=1)
    page_size: int | None = Field(default=None, alias="page[size]", ge=1, le=100)


@endpoint(
    bp,
    PATH,
    scope=ACCOUNTS_BILLING,
    dialect=SCALR,
    query=UsageStatisticsParams,
    headers={"Prefer": "profile=preview (required)"},
)
def list_usage_statistics(call: Call) -> Reply:
    """Billing usage statistics (runs and run seconds) of the caller's account, per date or in total."""
    check_profile(call.header("prefer"))
    query = parse_query(call.query, _repeated_parameters())
    if query.account != call.organization_id:
        raise ScalrError(
            ErrorCode.NOT_FOUND,
            "account_not_found",
            f"Account '{query.account}' was not found.",
            parameter=P_ACCOUNT,
        )
    rows = usage_statistics(
        call.container.catalog,
        call.container.rollups,
        call.organization_id,
        query.first,
        query.last,
        query.breakdown_by,
        query.total,
    )
    base = base_url(bp.current_request.context or {}, call.headers)
    return Reply(
        document(call.organization_id, query, rows, base),
        headers={"Preference-Applied": f"profile={PROFILE}"},
        content_type=JSON_API,
    )
