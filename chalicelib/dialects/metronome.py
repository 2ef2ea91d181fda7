"""The Metronome dialect (document 003): `POST /v1/usage`, batched usage per customer and billable metric.

How Metronome's words map onto the core: a customer is our organization. Metronome's
customer ids are UUIDs, so every organization has a stable one (`Organization.uuid`,
uuid5 of its ORG-* id): rows carry it as `customer_id`, and `customer_ids` takes it or the
ORG-* id. An API key reads only its own organization, so any other id is a 404 that says
nothing about whether it exists. A billable metric is a meter: `id` = the meter's UUID,
`name` = its name.

Which usage a window counts (windows over `[starting_on, ending_before)`, RFC 3339
date-times with a zone, read as UTC):

- `hour`: by event time, from hour rollups: an event counts in the UTC hour of its event time.
- `day` and `none`: by period_date, from day rollups: an event counts in the UTC day that is its
  period_date. A `none` window is the one aggregate of exactly the days a `day` query over the
  same bounds lists, whatever its length and however its bounds are aligned.

So `none` always equals the sum of the `day` windows over the same bounds. The `hour` windows
sum to the same value when every event in the period has a period_date equal to the UTC date of
its event time: always for meter API (002) reports (period_date is the timestamp's date) and for
native events sent without a period_date (it defaults to the day they are received). An event
whose period_date is another day (a timesheet sent the next morning, a backfill) counts on its
period_date in `day` and `none` windows and in the hour it was received in `hour` windows.

Bounds: Metronome's documentation does not ask for aligned bounds, so any instants are accepted.
Windows are whole UTC hours (`hour`) or whole UTC days (`day`, `none`): the first window is the one
that contains starting_on, the last the one that contains the last instant before ending_before.
A bound off that grid widens the period to the enclosing hour or day (never narrows it), and each
row's start_timestamp and end_timestamp say exactly what it counts: day windows from
2026-04-14T10:30:00Z to 2026-04-16T06:00:00Z are the days 04-14, 04-15 and 04-16.

Rows: one per (customer, billable metric, window), value 0 where there was no usage, in a stable
order: customer, then billable metric (the order of `billable_metrics`, or by meter id when it is
absent), then window start. Without `billable_metrics`, the rows cover every active meter that one
of the customer's service lines rates. Queries read rollups only, never raw events.

Limits:

- 100 rows per page; `next_page` (a query parameter) is an opaque cursor bound to the caller's
  organization and the normalized request (window size, the windows' bounds, customers, metrics),
  so a cursor of another request or organization is refused with 400. There is no limit on the
  number of windows: a long period is paged (60 days of hours for one metric is 1,440 rows, 15
  pages), and each page reads only the rollups of its own windows. A period may span at most
  3,660 days (ten years);
- `group_by` (`{key, values?}`, the key one of the meter's `group_by` keys): read from the rollups
  kept per group value (day rollups for `day` and `none` windows, hour rollups for `hour` windows),
  never raw events. Metadata values are matched as text (numbers in plain decimal form, booleans as
  true/false). `groups` maps each requested value to its value under the meter's aggregation, or to
  null when no event of the window carries it; without `values`, a window lists the values its
  events carry, at most 200 (the first in sorted order), and `__other__` for the values past the
  meter's bound of distinct values per day (docs/architecture.md). Events without the key count in
  the row's `value`, which is still the total of every event, but in no group.

Values: each row's `value` is the meter's aggregation over the window (sum, count, max, min, latest
or unique count; see `GET /v1/meters`), across the customer's service lines.

Errors are Metronome's `{"message": "...", "code": "..."}` with the HTTP status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from chalice.app import Blueprint
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from chalicelib.api.http import Call, Reply, endpoint, parse_model
from chalicelib.api.schemas import Schema
from chalicelib.domain import cursors
from chalicelib.domain.aggregation import EMPTY, NO_GROUP, OTHER_GROUP, RollupState, fold
from chalicelib.domain.auth import USAGE_READ
from chalicelib.domain.models import Meter, ServiceLine, organization_uuid
from chalicelib.domain.timestamps import TimestampError, parse_rfc3339, rfc3339
from chalicelib.domain.windows import DAY, HOUR, MAX_PERIOD, Windows, ceil_to, floor_to, make_windows
from chalicelib.errors import ErrorCode, MeteringError, validation_error
from chalicelib.services import queries
from chalicelib.services.ports import CatalogReader as CatalogRepository

__all__ = ["DAY", "HOUR", "MAX_PERIOD", "Windows", "ceil_to", "floor_to", "make_windows", "rfc3339"]

bp = Blueprint(__name__)

PAGE_SIZE = 100
MAX_GROUP_VALUES = 200
OTHER_LABEL = "__other__"
MAX_CUSTOMERS = 100
MAX_METRICS = 100
BODY_LIMIT = 64 * 1024
CURSOR_KIND = "metronome.usage"

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

WindowSize = Literal["hour", "day", "none", "HOUR", "DAY", "NONE", "Hour", "Day", "None"]
Text = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class MetronomeErrorPublic(Schema):
    """An error as Metronome gives it."""

    message: str
    code: str


class MetronomeDialect:
    """Errors as Metronome gives them: {"message": "...", "code": "..."}."""

    content_type = "application/json"
    error_model: type[BaseModel] = MetronomeErrorPublic

    def error_body(self, error: MeteringError, request_id: str) -> Any:
        return {"message": error.message, "code": error.code}


METRONOME = MetronomeDialect()

# The paths of Metronome's API (as its official SDK calls them) that no native route holds: a request
# to one of them that no route answers gets Metronome's error shape. (`/v1/plans` and
# `/v1/usage/summary` are native paths; `POST /v1/usage` is this module's route.)
METRONOME_PATH_PREFIXES = (
    "/v1/ingest",
    "/v1/usage/groups",
    "/v1/customers",
    "/v1/billable-metrics",
    "/v1/contracts",
    "/v1/contract-pricing",
    "/v1/credits",
    "/v1/credit-types",
    "/v1/alerts",
    "/v1/customer-alerts",
    "/v1/dashboards",
    "/v1/events",
    "/v1/invoices",
    "/v1/packages",
    "/v1/planDetails",
    "/v1/services",
    "/v1/users",
    "/v1/auditLogs",
    "/v1/customFields",
    "/v1/archiveCustomerBillingProviderConfigurations",
    "/v1/getCustomerBillingProviderConfigurations",
    "/v1/listConfiguredBillingProviders",
    "/v1/setCustomerBillingProviderConfigurations",
    "/v1/setUpBillingProvider",
    "/v1/upsertAvalaraCredentials",
    "/v2/",
)


def is_metronome_path(path: str) -> bool:
    """Whether a request path is one of Metronome's (see METRONOME_PATH_PREFIXES), so its errors use its shape."""
    path = "/" + path.split("?", 1)[0].strip("/")
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in METRONOME_PATH_PREFIXES)


class GroupByQuery(Schema):
    """`billable_metrics[].group_by`: a metadata key of the meter, optionally narrowed to some values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Text
    values: list[Text] | None = Field(default=None, min_length=1, max_length=MAX_GROUP_VALUES)


class BillableMetricQuery(Schema):
    """`billable_metrics[]`: a billable metric (meter UUID) and an optional group_by."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Text
    group_by: GroupByQuery | None = None


class UsageBody(Schema):
    """The body of `POST /v1/usage`."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {"window_size": "day", "starting_on": "2026-04-01T00:00:00Z", "ending_before": "2026-04-03T00:00:00Z"}
            ]
        },
    )

    window_size: WindowSize
    starting_on: Annotated[str, StringConstraints(max_length=64)] = Field(
        description="RFC 3339 date-time with a zone; the first window is the UTC hour (hour windows) or "
        "UTC day (day and none windows) that contains it.",
        json_schema_extra={"format": "date-time"},
    )
    ending_before: Annotated[str, StringConstraints(max_length=64)] = Field(
        description="RFC 3339 date-time after starting_on (exclusive); the last window is the UTC hour or day "
        "that contains the instant just before it.",
        json_schema_extra={"format": "date-time"},
    )
    customer_ids: list[Text] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CUSTOMERS,
        description="The organization's UUID (or its ORG-* id); only the API key's own organization is readable.",
    )
    billable_metrics: list[BillableMetricQuery] | None = Field(default=None, min_length=1, max_length=MAX_METRICS)


class NextPageQuery(Schema):
    """The query string of `POST /v1/usage`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    next_page: str | None = Field(
        default=None, description="Cursor that indicates where the next page of results should start."
    )


class UsageRowPublic(Schema):
    """One row: a customer's usage of a billable metric in one window."""

    customer_id: str = Field(description="The organization's UUID.", json_schema_extra={"format": "uuid"})
    billable_metric_id: str
    billable_metric_name: str
    start_timestamp: datetime
    end_timestamp: datetime
    value: Decimal = Field(description="Exact decimal quantity; 0 for a window without usage.")
    groups: dict[str, Decimal | None] | None = Field(
        default=None, description="Present with group_by: quantity per group value (null: no event carries it)."
    )


class UsagePagePublic(Schema):
    """A page of rows; `next_page` is null on the last page."""

    data: list[UsageRowPublic]
    next_page: str | None


# -- windows (chalicelib/domain/windows.py) ----------------------------------------


def parse_instant(value: str, field: str) -> datetime:
    """An RFC 3339 date-time with a zone (Z or +hh:mm), as UTC."""
    try:
        return parse_rfc3339(value.strip())
    except TimestampError as bad:
        if bad.reason.startswith("is not an RFC 3339"):
            raise validation_error(
                field, "must be an RFC 3339 date-time with a time zone, e.g. 2026-04-01T00:00:00Z"
            ) from None
        raise validation_error(field, bad.reason) from None


# -- what is asked ----------------------------------------------------------------


@dataclass(frozen=True)
class MetricQuery:
    """One billable metric of the query: its meter and, with group_by, the key and values to group by."""

    meter: Meter
    group_key: str | None = None
    group_values: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Customer:
    """A Metronome customer: an organization, by its ORG-* id and its UUID."""

    id: str
    uuid: str


def caller_customer(catalog: CatalogRepository, organization_id: str) -> Customer:
    """The API key's organization as a customer (its UUID derived from the id if the catalog lacks it)."""
    organization = catalog.get_organization(organization_id)
    return Customer(organization_id, organization.uuid if organization else organization_uuid(organization_id))


def is_customer(customer: Customer, customer_id: str) -> bool:
    """Whether a Metronome customer id names the customer: its UUID (in any case) or its ORG-* id."""
    return customer_id == customer.id or customer_id.lower() == customer.uuid


def resolve_customers(customer_ids: list[str] | None, caller: Customer) -> list[Customer]:
    """The customers to report: only the key's own organization; any other id is 404 (nothing leaked)."""
    if customer_ids is None:
        return [caller]
    for index, customer_id in enumerate(customer_ids):
        if not is_customer(caller, customer_id):
            raise MeteringError(
                ErrorCode.CUSTOMER_NOT_FOUND,
                f"customer_ids[{index}]: no customer '{customer_id}' is readable with this API key.",
                field=f"customer_ids[{index}]",
            )
    return [caller]


def resolve_metrics(
    catalog: CatalogRepository,
    asked: list[BillableMetricQuery] | None,
    lines: list[ServiceLine],
    windows: Windows,
) -> list[MetricQuery]:
    """The billable metrics to report, in order; 404 for an unknown id, 400 for a bad group_by."""
    if asked is None:
        rated = {meter for line in lines for meter in line.rates}
        return [MetricQuery(m) for m in sorted(catalog.list_meters(), key=lambda m: m.id) if m.active and m.id in rated]
    metrics: list[MetricQuery] = []
    seen: set[str] = set()
    for index, item in enumerate(asked):
        field = f"billable_metrics[{index}]"
        meter = catalog.get_meter_by_uuid(item.id.lower()) if _UUID.match(item.id) else None
        if meter is None:
            raise MeteringError(
                ErrorCode.METER_NOT_FOUND,
                f"{field}.id: no billable metric has the id '{item.id}' (use the meter's uuid from GET /v1/meters).",
                field=f"{field}.id",
            )
        if meter.uuid in seen:
            raise validation_error(f"{field}.id", f"billable metric '{item.id}' is listed more than once")
        seen.add(meter.uuid)
        if item.group_by is None:
            metrics.append(MetricQuery(meter))
            continue
        key = item.group_by.key
        if key not in meter.group_by:
            valid = ", ".join(meter.group_by) if meter.group_by else "none"
            raise validation_error(
                f"{field}.group_by.key",
                f"'{key}' is not a group key of billable metric '{meter.name}' (its group keys: {valid})",
            )
        values = tuple(dict.fromkeys(item.group_by.values)) if item.group_by.values is not None else None
        metrics.append(MetricQuery(meter, key, values))
    return metrics


# -- reading (services/queries.py) -------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One row to emit: (customer, metric, window) by index."""

    customer: int
    metric: int
    window: int


def read_totals(
    call: Call, windows: Windows, line_ids: list[str], first: int, last: int
) -> dict[tuple[str, int], RollupState]:
    """Rollup state per (meter, window) for windows first..last (inclusive), folded over the lines."""
    states = queries.window_states(call.container.rollups, call.organization_id, line_ids, windows, first, last)
    totals: dict[tuple[str, int], RollupState] = {}
    for (_, meter, window), state in states.items():
        totals[(meter, window)] = fold(totals.get((meter, window), EMPTY), state)
    return totals


def read_groups(
    call: Call, windows: Windows, metric: MetricQuery, line_ids: list[str], first: int, last: int
) -> dict[int, dict[str, Decimal]]:
    """Value per window and group value (metadata text, or OTHER_LABEL) from the group rollups."""
    assert metric.group_key is not None
    states = queries.group_states(
        call.container.rollups,
        call.organization_id,
        line_ids,
        metric.meter.id,
        metric.group_key,
        windows,
        first,
        last,
    )
    folded: dict[tuple[int, str], RollupState] = {}
    for (_, window, group_value), state in states.items():
        if group_value == NO_GROUP:
            continue
        label = OTHER_LABEL if group_value == OTHER_GROUP else group_value
        folded[(window, label)] = fold(folded.get((window, label), EMPTY), state)
    groups: dict[int, dict[str, Decimal]] = {}
    for (window, label), state in folded.items():
        groups.setdefault(window, {})[label] = queries.value_of(metric.meter, state)
    return groups


def render_groups(metric: MetricQuery, found: Mapping[str, Decimal]) -> dict[str, Decimal | None]:
    if metric.group_values is not None:
        return {value: found.get(value) for value in metric.group_values}
    return {value: found[value] for value in sorted(found)[:MAX_GROUP_VALUES]}


# -- the route -------------------------------------------------------------------


def canonical(body: UsageBody, windows: Windows, customers: list[Customer]) -> dict[str, Any]:
    """The query a cursor is bound to: window size, the windows' bounds, customers (by ORG id) and metrics."""
    return {
        "window_size": windows.size,
        "starting_on": rfc3339(windows.start),
        "ending_before": rfc3339(windows.end),
        "customer_ids": [c.id for c in customers] if body.customer_ids is not None else None,
        "billable_metrics": (
            [m.model_dump(mode="json") for m in body.billable_metrics] if body.billable_metrics is not None else None
        ),
    }


def _page_offset(call: Call, bound: str, total: int) -> int:
    unknown = set(call.query) - {"next_page"}
    if unknown:
        raise MeteringError(ErrorCode.VALIDATION_ERROR, f"Unknown query parameter '{sorted(unknown)[0]}'.")
    token = call.query.get("next_page") or ""
    if not token:
        return 0
    position = cursors.decode(token, bound, call.container.settings.cursor_secret, field="next_page")
    offset = position.get("o")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 1:
        raise MeteringError(ErrorCode.INVALID_CURSOR, field="next_page")
    return min(offset, total)


@endpoint(
    bp,
    "/v1/usage",
    methods=("POST",),
    scope=USAGE_READ,
    dialect=METRONOME,
    max_body_bytes=BODY_LIMIT,
    query=NextPageQuery,
    body=UsageBody,
    responses={200: UsagePagePublic},
)
def batch_usage(call: Call) -> Reply:
    """Usage per customer, billable metric and window (Metronome's batched usage), 100 rows a page."""
    body = parse_model(UsageBody, call.json())
    start = parse_instant(body.starting_on, "starting_on")
    end = parse_instant(body.ending_before, "ending_before")
    windows = make_windows(body.window_size, start, end)
    catalog = call.container.catalog
    customers = resolve_customers(body.customer_ids, caller_customer(catalog, call.organization_id))
    lines = {customer.id: catalog.list_service_lines(customer.id) for customer in customers}
    all_lines = [line for customer in customers for line in lines[customer.id]]
    metrics = resolve_metrics(catalog, body.billable_metrics, all_lines, windows)

    per_customer = len(metrics) * windows.count
    total = len(customers) * per_customer
    bound = cursors.binding(call.organization_id, CURSOR_KIND, canonical(body, windows, customers))
    first = _page_offset(call, bound, total)
    last = min(first + PAGE_SIZE, total)
    slots = [
        Slot(index // per_customer, (index % per_customer) // windows.count, index % windows.count)
        for index in range(first, last)
    ]

    # The windows each (customer, metric) of this page covers; rollups are read once per distinct run.
    runs: dict[tuple[int, int], tuple[int, int]] = {}
    for slot in slots:
        lo, hi = runs.get((slot.customer, slot.metric), (slot.window, slot.window))
        runs[(slot.customer, slot.metric)] = (min(lo, slot.window), max(hi, slot.window))
    totals: dict[tuple[int, int, int], dict[tuple[str, int], RollupState]] = {}
    groups: dict[tuple[int, int], dict[int, dict[str, Decimal]]] = {}
    for (c, m), (lo, hi) in runs.items():
        line_ids = [line.id for line in lines[customers[c].id]]
        if (c, lo, hi) not in totals:
            totals[(c, lo, hi)] = read_totals(call, windows, line_ids, lo, hi)
        metric = metrics[m]
        if metric.group_key is not None:
            groups[(c, m)] = read_groups(call, windows, metric, line_ids, lo, hi)

    rows = []
    for slot in slots:
        metric = metrics[slot.metric]
        window_start, window_end = windows.bounds(slot.window)
        run = runs[(slot.customer, slot.metric)]
        value = queries.value_of(metric.meter, totals[(slot.customer, *run)].get((metric.meter.id, slot.window), EMPTY))
        row: dict[str, Any] = {
            "customer_id": customers[slot.customer].uuid,
            "billable_metric_id": metric.meter.uuid,
            "billable_metric_name": metric.meter.name,
            "start_timestamp": rfc3339(window_start),
            "end_timestamp": rfc3339(window_end),
            "value": value,
        }
        if metric.group_key is not None:
            row["groups"] = render_groups(metric, groups[(slot.customer, slot.metric)].get(slot.window, {}))
        rows.append(row)
    secret = call.container.settings.cursor_secret
    next_page = cursors.encode({"o": last}, bound, secret) if last < total else None
    return Reply({"data": rows, "next_page": next_page})
