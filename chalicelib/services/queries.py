"""Reading usage: which service lines a caller may see, event listings, and the one query service that
answers totals (hour, day and none windows, optionally per group value) from rollups only, under each
meter's aggregation. Every surface (native summary, Metronome, Scalr, the dashboard) reads through it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from chalicelib.domain import aggregation
from chalicelib.domain.aggregation import EMPTY, NO_GROUP, OTHER_GROUP, RollupState, fold, fold_all
from chalicelib.domain.models import Meter, ServiceLine, UsageEvent
from chalicelib.domain.money import exact_sum, line_cost, round_money
from chalicelib.domain.usage import CORRECTIONS, Rollup, RollupKey
from chalicelib.domain.windows import DAY, HOUR, Windows, bucket_start, days, each_day, hour_text
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services.aggregate import platform_meter
from chalicelib.services.ports import CatalogReader, EventStore, RollupStore


def lines_in_scope(
    catalog: CatalogReader,
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
    events: EventStore,
    organization_id: str,
    lines: list[ServiceLine],
    start: date,
    end: date,
    limit: int,
    meter: str | None = None,
    position: dict[str, Any] | None = None,
    keep: Callable[[UsageEvent], bool] | None = None,
) -> UsagePage:
    """One page of events ordered by (service line, period_date, id); a position resumes after an event.

    Each line is read through the by_line index (a Query per line, never a scan). `keep` leaves out the
    events it refuses (pages stay full).
    """
    line_ids = [line.id for line in lines]
    first = 0
    resume: dict[str, Any] | None = None
    if position is not None:
        if position.get("l") not in line_ids or not isinstance(position.get("k"), dict):
            raise MeteringError(ErrorCode.INVALID_CURSOR, field="cursor")
        first = line_ids.index(position["l"])
        resume = position["k"]  # the store's own position, handed back as it gave it
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
            found.extend((line_id, event, key) for event, key in rows if keep is None or keep(event))
            if last is None:
                break
            start_key = last
        if len(found) > limit:
            break
    page = found[:limit]
    next_position = None
    if len(found) > limit:
        line_id, _, key = page[-1]
        next_position = {"l": line_id, "k": key}
    return UsagePage([event for _, event, _ in page], next_position)


# -- totals from rollups: the one query service ------------------------------------------------


def value_of(meter: Meter, state: RollupState) -> Decimal:
    """The value of a (folded) rollup state under the meter's aggregation."""
    return aggregation.value(meter.aggregation, state)


def _grain_rows(
    rollups: RollupStore, organization_id: str, line_id: str, windows: Windows, lo: datetime, hi: datetime
) -> list[Rollup]:
    if windows.grain == "day":
        return rollups.day_rollups(organization_id, line_id, lo.date(), (hi - DAY).date())
    return rollups.hour_rollups(organization_id, line_id, hour_text(lo), hour_text(hi))


def _window_span(windows: Windows, first: int, last: int | None) -> tuple[datetime, datetime]:
    lo, _ = windows.bounds(first)
    _, hi = windows.bounds(windows.count - 1 if last is None else last)
    return lo, hi


def _bucket(windows: Windows, rk: RollupKey) -> datetime:
    return bucket_start(windows.grain, rk.period_date if windows.grain == "day" else rk.hour)


def window_states(
    rollups: RollupStore,
    organization_id: str,
    line_ids: Iterable[str],
    windows: Windows,
    first: int = 0,
    last: int | None = None,
) -> dict[tuple[str, str, int], RollupState]:
    """Folded rollup state per (line, meter, window) for windows first..last (inclusive), from day rollups
    (day and none windows, by period_date) or hour rollups (hour windows, by event time)."""
    lo, hi = _window_span(windows, first, last)
    states: dict[tuple[str, str, int], RollupState] = {}
    for line_id in line_ids:
        for row in _grain_rows(rollups, organization_id, line_id, windows, lo, hi):
            moment = _bucket(windows, row.key)
            if lo <= moment < hi:
                k = (line_id, row.key.meter, windows.index_of(moment))
                states[k] = fold(states.get(k, EMPTY), row.state)
    return states


def group_states(
    rollups: RollupStore,
    organization_id: str,
    line_ids: Iterable[str],
    meter_id: str,
    group_key: str,
    windows: Windows,
    first: int = 0,
    last: int | None = None,
) -> dict[tuple[str, int, str], RollupState]:
    """Folded rollup state per (line, window, group value) of one meter's group key, from the group
    rollups of the windows' grain. Group values are metadata texts, NO_GROUP or OTHER_GROUP."""
    lo, hi = _window_span(windows, first, last)
    states: dict[tuple[str, int, str], RollupState] = {}
    for line_id in line_ids:
        if windows.grain == "day":
            rows = rollups.group_day_rollups(
                organization_id, line_id, meter_id, group_key, lo.date(), (hi - DAY).date()
            )
        else:
            rows = rollups.group_hour_rollups(
                organization_id, line_id, meter_id, group_key, hour_text(lo), hour_text(hi)
            )
        for row in rows:
            moment = _bucket(windows, row.key)
            if lo <= moment < hi:
                k = (line_id, windows.index_of(moment), row.key.group_value)
                states[k] = fold(states.get(k, EMPTY), row.state)
    return states


def meter_lookup(meters: Iterable[Meter]) -> Callable[[str], Meter | None]:
    by_id = {m.id: m for m in meters}
    return by_id.get


def daily_totals(
    rollups: RollupStore,
    organization_id: str,
    line_ids: Iterable[str],
    start: date,
    end: date,
    meters: Callable[[str], Meter | None] = platform_meter,
) -> dict[tuple[str, str, str], Decimal]:
    """Value per (line, meter, period_date) of an organization's lines from day rollups, under each meter's
    aggregation."""
    states = window_states(rollups, organization_id, line_ids, each_day(start, end))
    return {
        (line_id, meter, (start + timedelta(days=index)).isoformat()): _value(meters, meter, state)
        for (line_id, meter, index), state in states.items()
    }


def hourly_totals(
    rollups: RollupStore,
    organization_id: str,
    line_ids: Iterable[str],
    start_hour: str,
    end_hour: str,
    meters: Callable[[str], Meter | None] = platform_meter,
) -> dict[tuple[str, str, str], Decimal]:
    """Value per (line, meter, hour) of an organization's lines from hour rollups, start_hour <= hour < end_hour."""
    lo, hi = bucket_start("hour", start_hour), bucket_start("hour", end_hour)
    if hi <= lo:
        return {}
    windows = Windows("hour", "hour", lo, hi, HOUR)
    states = window_states(rollups, organization_id, line_ids, windows)
    return {
        (line_id, meter, hour_text(windows.bounds(index)[0])): _value(meters, meter, state)
        for (line_id, meter, index), state in states.items()
    }


def _value(meters: Callable[[str], Meter | None], meter_id: str, state: RollupState) -> Decimal:
    meter = meters(meter_id)
    return aggregation.value(meter.aggregation if meter is not None else "sum", state)


def _summary_currency(catalog: CatalogReader, organization_id: str, lines: list[ServiceLine]) -> str:
    """The currency of the total: the organization's plan's, else its lines' (USD when it has none)."""
    plan = catalog.get_organization_plan(organization_id)
    if plan is not None:
        return plan.currency
    return lines[0].currency if lines else "USD"


def group_label(group_value: str) -> tuple[str | None, str]:
    """A group value as shown: (the metadata value or None, and whether it is a value, missing or other)."""
    if group_value == NO_GROUP:
        return None, "missing"
    if group_value == OTHER_GROUP:
        return None, "other"
    return group_value, "value"


def corrections_of(
    rollups: RollupStore,
    organization_id: str,
    line_id: str,
    meter_id: str,
    meter: Meter | None,
    start: date,
    end: date,
) -> dict[str, Any]:
    """What corrections (voids, adjustments) changed of a line's meter over the period, from its corrections
    rollups (nothing when there were none): `adjusted`, the part of the value they make (sum: their
    quantity; count: minus the voided events; other aggregations: None, their value is recomputed without
    the voided events), and `restated_at`, when the latest of them was rolled up."""
    rows = rollups.group_day_rollups(organization_id, line_id, meter_id, CORRECTIONS, start, end)
    if not rows:
        return {}
    state = fold_all(row.state for row in rows)
    aggregation_name = meter.aggregation if meter is not None else "sum"
    adjusted: Decimal | None = None
    if aggregation_name == "sum":
        adjusted = state.quantity
    elif aggregation_name == "count":
        adjusted = Decimal(state.event_count)
    return {"adjusted": adjusted, "restated_at": max(row.updated_at for row in rows)}


def summarize(
    catalog: CatalogReader,
    rollups: RollupStore,
    organization_id: str,
    lines: list[ServiceLine],
    start: date,
    end: date,
    group_by: str | None = None,
) -> dict[str, Any]:
    """Usage and cost per service line from day rollups: each meter's value under its aggregation over the
    period, cost = rate x value, rounded at the edge. With group_by, a meter that groups by that key also
    lists its value per group value.

    The total adds only lines billed in the summary's currency; each line states its own.
    """
    meters = {m.id: m for m in catalog.list_meters()}
    period = days(start, end)
    states = window_states(rollups, organization_id, (line.id for line in lines), period)
    currency = _summary_currency(catalog, organization_id, lines)
    by_line = []
    costs_in_currency: list[Decimal] = []
    for line in lines:
        values: dict[str, Decimal] = {}
        for (line_id, meter_id, _), state in states.items():
            if line_id == line.id:
                values[meter_id] = _value(meters.get, meter_id, state)
        cost = line_cost(line.rates, values)
        if line.currency == currency:  # amounts in another currency are never added in
            costs_in_currency.append(cost)
        entries = []
        restated = ""
        for meter_id in sorted(values):
            meter = meters.get(meter_id)
            entry: dict[str, Any] = {
                "meter": meter_id,
                "quantity": values[meter_id],
                "unit": meter.unit if meter else "",
                "aggregation": meter.aggregation if meter else "sum",
            }
            entry.update(corrections_of(rollups, organization_id, line.id, meter_id, meter, start, end))
            restated = max(restated, entry.get("restated_at") or "")
            if group_by is not None and meter is not None and group_by in meter.group_by:
                grouped = group_states(rollups, organization_id, [line.id], meter_id, group_by, period)
                entry["groups"] = [
                    {"value": label, "kind": kind, "quantity": value_of(meter, state)}
                    for (_, _, group_value), state in sorted(grouped.items(), key=lambda kv: kv[0][2])
                    for label, kind in [group_label(group_value)]
                ]
            entries.append(entry)
        by_line.append(
            {
                "service_line_id": line.id,
                "name": line.name,
                "product_line": line.product_line,
                "meters": entries,
                "cost_estimate": round_money(cost, line.currency),
                "currency": line.currency,
            }
        )
        if restated:  # the line's latest correction in the period (absent when none)
            by_line[-1]["restated_at"] = restated
    return {
        "total_cost_estimate": round_money(exact_sum(costs_in_currency), currency),
        "currency": currency,
        "by_service_line": by_line,
    }
