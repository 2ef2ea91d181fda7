"""Reconciliation: recompute recent rollups from raw events and repair any drift.

For each (service line, period_date): read the rollups first, then the raw
events and which of them the aggregator has counted (a batch with no pending
record is wholly counted; a pending one, as far as its markers say). A
rollup that differs is set to the recomputed totals only if its version is
still the one read, so a concurrent aggregator (or a second reconciler) wins
and the repair is retried on the next run. Rollups touched within a quiet
period are left for later (DynamoDB's indexes are eventually consistent).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from chalicelib.domain.models import UsageEvent, instant
from chalicelib.domain.usage import RollupDelta, RollupKey, coalesce
from chalicelib.services.aggregate import countable
from chalicelib.storage.catalog_repo import DynamoCatalogRepository
from chalicelib.storage.events_repo import DynamoEventStore
from chalicelib.storage.rollups_repo import DynamoRollupStore, Rollup

log = logging.getLogger("usage-metering.reconcile")

RECENT_DAYS = 3
QUIET_PERIOD = timedelta(minutes=2)


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
    catalog: DynamoCatalogRepository,
    events: DynamoEventStore,
    rollups: DynamoRollupStore,
    now: datetime,
    days: int = RECENT_DAYS,
    quiet: timedelta = QUIET_PERIOD,
) -> ReconcileReport:
    """Check and repair the rollups of every service line for the last `days` period dates."""
    report = ReconcileReport()
    today = now.date()
    for line in catalog.all_service_lines():
        for offset in range(days):
            reconcile_line_day(line.id, today - timedelta(days=offset), events, rollups, now, quiet, report)
    if report.repaired:
        log.warning("reconciliation repaired %d rollups", len(report.repaired))
    return report


def reconcile_line_day(
    line_id: str,
    day: date,
    events: DynamoEventStore,
    rollups: DynamoRollupStore,
    now: datetime,
    quiet: timedelta,
    report: ReconcileReport,
) -> None:
    observed: dict[RollupKey, Rollup] = {r.key: r for r in rollups.rollups_of_period(line_id, day)}
    recent = instant(now - quiet)
    if any(r.updated_at > recent for r in observed.values()):
        report.skipped_recent += 1
        return
    by_batch: dict[str, list[UsageEvent]] = defaultdict(list)
    for event in events.iter_line(line_id, day, day):
        by_batch[event.batch_id].append(event)
    counted: list[UsageEvent] = []
    for batch_id, batch_events in by_batch.items():
        if events.is_pending(batch_id):
            applied = rollups.applied_event_ids(batch_id)
            counted.extend(e for e in batch_events if e.id in applied)
        else:
            counted.extend(batch_events)
    expected = coalesce(countable(e) for e in counted)
    for rk in sorted(set(expected) | set(observed)):
        report.checked += 1
        want = expected.get(rk, RollupDelta(Decimal(0), 0))
        have = observed.get(rk)
        if have is not None and have.quantity == want.quantity and have.event_count == want.event_count:
            continue
        if have is None and want.event_count == 0:
            continue
        if rollups.repair(rk, want.quantity, want.event_count, have, now):
            report.repaired.append(
                {
                    "service_line_id": rk.service_line_id,
                    "meter": rk.meter,
                    "grain": rk.grain,
                    "period_date": rk.period_date,
                    "hour": rk.hour or None,
                    "was": {"quantity": have.quantity, "event_count": have.event_count} if have else None,
                    "now": {"quantity": want.quantity, "event_count": want.event_count},
                }
            )
        else:
            report.changed_during_check += 1
