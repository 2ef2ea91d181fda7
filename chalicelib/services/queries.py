"""Reading usage: which service lines a caller may see, event listings, and rollup totals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from chalicelib.domain.models import ServiceLine, UsageEvent
from chalicelib.domain.money import exact_sum, line_cost, round_money
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services.ports import CatalogRepository
from chalicelib.storage.events_repo import DynamoEventStore
from chalicelib.storage.rollups_repo import DynamoRollupStore


def lines_in_scope(
    catalog: CatalogRepository,
    caller_org: str,
    organization_id: str | None = None,
    workspace_id: str | None = None,
    service_line_id: str | None = None,
) -> list[ServiceLine]:
    """The caller's service lines narrowed by the filters; another organization's ids are refused."""
    if organization_id is not None and organization_id != caller_org:
        raise MeteringError(
            ErrorCode.FORBIDDEN, "This API key may only read its own organization.", field="organization_id"
        )
    lines = catalog.list_service_lines(caller_org)
    if workspace_id is not None:
        if workspace_id not in {w.id for w in catalog.list_workspaces(caller_org)}:
            raise MeteringError(
                ErrorCode.NOT_FOUND,
                f"No workspace '{workspace_id}' belongs to this organization.",
                field="workspace_id",
            )
        lines = [line for line in lines if line.workspace_id == workspace_id]
    if service_line_id is not None:
        lines = [line for line in lines if line.id == service_line_id]
        if not lines:
            raise MeteringError(
                ErrorCode.SERVICE_LINE_NOT_FOUND,
                f"No service line '{service_line_id}' belongs to this organization"
                + (" and workspace." if workspace_id else "."),
                field="service_line_id",
            )
    return sorted(lines, key=lambda line: line.id)


@dataclass(frozen=True)
class UsagePage:
    events: list[UsageEvent]
    next_position: dict[str, Any] | None


def list_usage(
    events: DynamoEventStore,
    organization_id: str,
    lines: list[ServiceLine],
    start: date,
    end: date,
    limit: int,
    meter: str | None = None,
    position: dict[str, Any] | None = None,
) -> UsagePage:
    """One page of events ordered by (service line, period_date, id); a position resumes after an event.

    Each line is read through the by_line index (a Query per line, never a scan).
    """
    line_ids = [line.id for line in lines]
    first = 0
    resume: dict[str, Any] | None = None
    if position is not None:
        if position.get("l") not in line_ids or not isinstance(position.get("k"), dict):
            raise MeteringError(ErrorCode.INVALID_CURSOR, field="cursor")
        first = line_ids.index(position["l"])
        resume = {k: {"S": v} for k, v in position["k"].items()}
    found: list[tuple[str, UsageEvent, dict[str, Any]]] = []
    for line_id in line_ids[first:]:
        start_key = resume
        resume = None
        while len(found) <= limit:
            try:
                rows, last = events.query_line(
                    organization_id, line_id, start, end, start_key, limit=limit + 1 - len(found), meter=meter
                )
            except ValueError:  # a start key that is not this line's: a cursor we did not issue
                raise MeteringError(ErrorCode.INVALID_CURSOR, field="cursor") from None
            found.extend((line_id, event, key) for event, key in rows)
            if last is None:
                break
            start_key = last
        if len(found) > limit:
            break
    page = found[:limit]
    next_position = None
    if len(found) > limit:
        line_id, _, key = page[-1]
        next_position = {"l": line_id, "k": {k: v["S"] for k, v in key.items()}}
    return UsagePage([event for _, event, _ in page], next_position)


def daily_totals(
    rollups: DynamoRollupStore, organization_id: str, line_ids: Iterable[str], start: date, end: date
) -> dict[tuple[str, str, str], Decimal]:
    """Quantity per (line, meter, period_date) of an organization's lines from day rollups."""
    totals: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for line_id in line_ids:
        for row in rollups.day_rollups(organization_id, line_id, start, end):
            k = (line_id, row.key.meter, row.key.period_date)
            totals[k] = exact_sum((totals[k], row.quantity))
    return totals


def hourly_totals(
    rollups: DynamoRollupStore, organization_id: str, line_ids: Iterable[str], start_hour: str, end_hour: str
) -> dict[tuple[str, str, str], Decimal]:
    """Quantity per (line, meter, hour) of an organization's lines from hour rollups, start_hour <= hour < end_hour."""
    totals: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for line_id in line_ids:
        for row in rollups.hour_rollups(organization_id, line_id, start_hour, end_hour):
            k = (line_id, row.key.meter, row.key.hour)
            totals[k] = exact_sum((totals[k], row.quantity))
    return totals


def _summary_currency(catalog: CatalogRepository, organization_id: str, lines: list[ServiceLine]) -> str:
    """The currency of the total: the organization's plan's, else its lines' (USD when it has none)."""
    plan = catalog.get_organization_plan(organization_id)
    if plan is not None:
        return plan.currency
    return lines[0].currency if lines else "USD"


def summarize(
    catalog: CatalogRepository,
    rollups: DynamoRollupStore,
    organization_id: str,
    lines: list[ServiceLine],
    start: date,
    end: date,
) -> dict[str, Any]:
    """Usage and cost per service line from day rollups; cost = rate x quantity, rounded at the edge.

    The total adds only lines billed in the summary's currency; each line states its own.
    """
    units = {m.id: m.unit for m in catalog.list_meters()}
    totals = daily_totals(rollups, organization_id, (line.id for line in lines), start, end)
    currency = _summary_currency(catalog, organization_id, lines)
    by_line = []
    costs_in_currency: list[Decimal] = []
    for line in lines:
        quantities: dict[str, Decimal] = defaultdict(Decimal)
        for (line_id, meter, _), quantity in totals.items():
            if line_id == line.id:
                quantities[meter] = exact_sum((quantities[meter], quantity))
        cost = line_cost(line.rates, quantities)
        if line.currency == currency:  # amounts in another currency are never added in
            costs_in_currency.append(cost)
        by_line.append(
            {
                "service_line_id": line.id,
                "name": line.name,
                "product_line": line.product_line,
                "meters": [
                    {"meter": meter, "quantity": quantities[meter], "unit": units.get(meter, "")}
                    for meter in sorted(quantities)
                ],
                "cost_estimate": round_money(cost, line.currency),
                "currency": line.currency,
            }
        )
    return {
        "total_cost_estimate": round_money(exact_sum(costs_in_currency), currency),
        "currency": currency,
        "by_service_line": by_line,
    }
