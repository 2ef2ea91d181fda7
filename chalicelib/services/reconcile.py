"""Reconciliation: recompute recent rollups from raw events and repair any drift.

The work is split so that no run grows with the platform: a scheduled planner
walks the catalog's service lines from where its last run stopped (a saved scan
cursor, at most PLAN_LINES_PER_RUN lines a run) and sends work items through the
usage queue, each at most LINES_PER_ITEM lines of one organization over the
recent period dates; the aggregator's invocations run them. The arithmetic of
how soon every line is reconciled is in docs/architecture.md.

For each (service line, period_date): read the rollups (with their group values)
first, then the raw events and which of them the aggregator has counted (a batch
with no pending record is wholly counted; a pending one, as far as its markers
say). What every rollup should hold is recomputed under each meter's aggregation
(services/aggregate.recompute: additive cells from the counted events, join cells
from every stored event). A rollup that differs is set to the recomputed cells
only if its version is still the one read, so a concurrent aggregator (or a
second reconciler) wins and the repair is retried on the next run. Rollups
touched within a quiet period are left for later (DynamoDB's indexes are
eventually consistent).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from chalicelib.domain.aggregation import EMPTY
from chalicelib.domain.models import Meter, UsageEvent, instant
from chalicelib.domain.pipeline import ReconcileMessage
from chalicelib.domain.usage import Rollup, RollupKey
from chalicelib.services.ports import CatalogRepository, EventStore, MessageQueue, RollupStore

log = logging.getLogger("usage-metering.reconcile")

RECENT_DAYS = 3
QUIET_PERIOD = timedelta(minutes=2)
PLAN_LINES_PER_RUN = 2000
PLAN_PAGES_PER_RUN = 8  # scan pages a run reads at most (a page reads at most PLAN_LINES_PER_RUN items)
LINES_PER_ITEM = 10
# A meter's definition by id (its aggregation, value property and group keys).
MeterLookup = Callable[[str], Meter | None]
PLANNER_JOB = "reconcile-planner"


@dataclass
class ReconcileReport:
    checked: int = 0
    repaired: list[dict[str, Any]] = field(default_factory=list)
    skipped_recent: int = 0
    changed_during_check: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollups_checked": self.checked,
            "repaired": len(self.repaired),
            "repairs": self.repaired[:50],
            "skipped_recent": self.skipped_recent,
            "changed_during_check": self.changed_during_check,
        }


def reconcile(
    catalog: CatalogRepository,
    events: EventStore,
    rollups: RollupStore,
    now: datetime,
    days: int = RECENT_DAYS,
    quiet: timedelta = QUIET_PERIOD,
    meters: MeterLookup | None = None,
) -> ReconcileReport:
    """Check and repair the rollups of every service line for the last `days` period dates."""
    report = ReconcileReport()
    today = now.date()
    for line in catalog.all_service_lines():
        for offset in range(days):
            day = today - timedelta(days=offset)
            reconcile_line_day(line.organization_id, line.id, day, events, rollups, now, quiet, report, meters)
    if report.repaired:
        log.warning("reconciliation repaired %d rollups", len(report.repaired))
    return report


@dataclass
class PlanReport:
    lines: int = 0
    items_sent: int = 0
    cycle_complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "work_items": self.items_sent, "cycle_complete": self.cycle_complete}


def plan(
    catalog: CatalogRepository,
    queue: MessageQueue,
    now: datetime,
    days: int = RECENT_DAYS,
    max_lines: int | None = None,
) -> PlanReport:
    """Send work items for the next lines after the saved cursor (a bounded slice of the catalog)."""
    max_lines = max_lines or PLAN_LINES_PER_RUN
    report = PlanReport()
    cursor = catalog.get_job_cursor(PLANNER_JOB)
    period = [(now.date() - timedelta(days=offset)).isoformat() for offset in range(days)]
    for _ in range(PLAN_PAGES_PER_RUN):
        if report.lines >= max_lines:
            break
        lines, cursor = catalog.service_lines_page(cursor, max_lines - report.lines)
        report.lines += len(lines)
        by_org: dict[str, list[str]] = defaultdict(list)
        for line in lines:
            by_org[line.organization_id].append(line.id)
        for org, ids in sorted(by_org.items()):
            for start in range(0, len(ids), LINES_PER_ITEM):
                item = ReconcileMessage(org=org, lines=ids[start : start + LINES_PER_ITEM], days=period)
                queue.send(item.model_dump_json())
                report.items_sent += 1
        if cursor is None:
            report.cycle_complete = True
            break
    catalog.put_job_cursor(PLANNER_JOB, cursor, instant(now))
    return report


def run_item(
    item: ReconcileMessage,
    events: EventStore,
    rollups: RollupStore,
    now: datetime,
    quiet: timedelta = QUIET_PERIOD,
    report: ReconcileReport | None = None,
    meters: MeterLookup | None = None,
) -> ReconcileReport:
    """Reconcile one work item's lines over its period dates."""
    report = report or ReconcileReport()
    for line_id in item.lines:
        for day in item.days:
            at = date.fromisoformat(day)
            reconcile_line_day(item.org, line_id, at, events, rollups, now, quiet, report, meters)
    return report


def reconcile_line_day(
    organization_id: str,
    line_id: str,
    day: date,
    events: EventStore,
    rollups: RollupStore,
    now: datetime,
    quiet: timedelta,
    report: ReconcileReport,
    meters: MeterLookup | None = None,
) -> None:
    """Recompute every rollup (day and hour, ungrouped and per group value) of a line's period_date and
    repair those that differ; `meters` gives each meter's aggregation (default: the platform catalog's)."""
    from chalicelib.services.aggregate import platform_meter, recompute  # aggregate imports this module

    observed: dict[RollupKey, Rollup] = {
        r.key: r for r in rollups.rollups_of_period(organization_id, line_id, day, with_groups=True)
    }
    recent = instant(now - quiet)
    if any(r.updated_at > recent for r in observed.values()):
        report.skipped_recent += 1
        return
    by_batch: dict[str, list[UsageEvent]] = defaultdict(list)
    for event in events.iter_line(organization_id, line_id, day, day):
        by_batch[event.batch_id].append(event)
    counted: list[UsageEvent] = []
    for batch_id, batch_events in by_batch.items():
        if events.is_pending(batch_id):
            applied = rollups.applied_event_ids(batch_id)
            counted.extend(e for e in batch_events if e.id in applied)
        else:
            counted.extend(batch_events)
    stored = [e for batch_events in by_batch.values() for e in batch_events]
    expected = recompute(counted, stored, meters or platform_meter, rollups)
    for rk in sorted(set(expected) | set(observed)):
        report.checked += 1
        want = expected.get(rk, EMPTY)
        have = observed.get(rk)
        if have is not None and have.state == want:
            continue
        if have is None and want.empty:
            continue
        if rollups.repair_state(rk, want, have, now):
            report.repaired.append(
                {
                    "service_line_id": rk.service_line_id,
                    "meter": rk.meter,
                    "grain": rk.grain,
                    "period_date": rk.period_date,
                    "hour": rk.hour or None,
                    "group_key": rk.group_key or None,
                    "group_value": rk.group_value if rk.group_key else None,
                    "was": {"quantity": have.quantity, "event_count": have.event_count} if have else None,
                    "now": {"quantity": want.quantity, "event_count": want.event_count},
                }
            )
        else:
            report.changed_during_check += 1
