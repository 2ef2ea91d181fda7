"""Reconciliation as a use case, over the in-memory stores: every rollup a line's day has (day and hour,
ungrouped and per group value) is recomputed under its meter's aggregation, and one that drifted is set
back; correct ones are left alone. The same under SQS and DynamoDB faults: tests/integration/test_pipeline_faults.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import cast

from chalicelib.container import Container
from chalicelib.domain.aggregation import RollupState
from chalicelib.domain.models import ServiceLine
from chalicelib.domain.pipeline import ReconcileMessage
from chalicelib.domain.usage import RollupKey, UsageDraft
from chalicelib.services import reconcile
from chalicelib.services.aggregate import Delivery, aggregate
from chalicelib.services.ingest import ingest
from chalicelib.storage.memory import MemoryQueue

ORG = "ORG-26-090500"
LINE = "LIN-26-555001"
DAY = date(2026, 5, 10)
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
METERS = ("agent.runs", "agent.peak_concurrency", "agent.unique_users")


def usage(container: Container) -> dict[RollupKey, RollupState]:
    """Agent usage of three aggregations on a line of its own, rolled up by the real aggregator."""
    container.catalog.put_service_line(
        ServiceLine(
            id=LINE,
            organization_id=ORG,
            workspace_id="WS-26-000101",
            name="Agents",
            product_line="agent_gateway",
            status="active",
            currency="USD",
            rates={meter: Decimal(1) for meter in METERS},
            created_at=NOW - timedelta(days=30),
        )
    )
    drafts = [
        UsageDraft(
            service_line_id=LINE,
            meter=meter,
            quantity=Decimal(n % 4 + 1),
            period_date=DAY,
            event_time=NOW - timedelta(hours=n % 3),
            source="test",
            metadata={"agent_id": f"agent-{n % 2}", "user_id": f"user-{n % 5}"},
            idempotency_key=f"{meter}-{n}",
        )
        for meter in METERS
        for n in range(12)
    ]
    outcomes = ingest(drafts, ORG, container.catalog, container.events, container.queue, NOW)
    assert {o.status for o in outcomes} == {"accepted"}
    queue = cast(MemoryQueue, container.queue)
    deliveries = [Delivery(f"m{n}", m.body, 1) for n, m in enumerate(queue.take())]
    result = aggregate(deliveries, container.events, container.rollups, container.dead_letters, NOW)
    assert result.failed == [] and result.events_applied == len(drafts)
    return rollups_of_day(container)


def rollups_of_day(container: Container) -> dict[RollupKey, RollupState]:
    return {r.key: r.state for r in container.rollups.rollups_of_period(ORG, LINE, DAY, with_groups=True)}


def run(container: Container, at: datetime) -> reconcile.ReconcileReport:
    item = ReconcileMessage(org=ORG, lines=[LINE], days=[DAY.isoformat()])
    return reconcile.run_item(item, container.events, container.rollups, at, quiet=timedelta(0))


def test_correct_rollups_of_every_aggregation_are_left_alone(container: Container) -> None:
    before = usage(container)
    assert {rk.meter for rk in before} == set(METERS)
    assert any(rk.group_key for rk in before) and any(rk.grain == "H" for rk in before)
    report = run(container, NOW + timedelta(minutes=5))
    assert report.repaired == [] and report.changed_during_check == 0
    assert report.checked == len(before)
    assert rollups_of_day(container) == before


def test_drift_in_a_max_a_unique_count_and_a_group_rollup_is_repaired_once(container: Container) -> None:
    before = usage(container)
    peak = next(rk for rk in before if rk.meter == "agent.peak_concurrency" and rk.grain == "D" and not rk.group_key)
    users = next(rk for rk in before if rk.meter == "agent.unique_users" and rk.grain == "H" and not rk.group_key)
    group = next(rk for rk in before if rk.meter == "agent.runs" and rk.group_key == "agent_id")
    drift = {
        peak: replace(before[peak], maximum=Decimal(99)),
        users: replace(before[users], values=before[users].values | {"user-never"}),
        group: replace(before[group], quantity=before[group].quantity + 1, event_count=before[group].event_count + 1),
    }
    observed = {r.key: r for r in container.rollups.rollups_of_period(ORG, LINE, DAY, with_groups=True)}
    for rk, state in drift.items():
        assert container.rollups.repair_state(rk, state, observed[rk], NOW + timedelta(minutes=1))
    assert rollups_of_day(container) != before

    report = run(container, NOW + timedelta(minutes=5))
    repaired = {(r["meter"], r["grain"], r["hour"], r["group_key"], r["group_value"]) for r in report.repaired}
    assert repaired == {
        (rk.meter, rk.grain, rk.hour or None, rk.group_key or None, rk.group_value or None) for rk in drift
    }
    assert rollups_of_day(container) == before
    assert run(container, NOW + timedelta(minutes=6)).repaired == []
