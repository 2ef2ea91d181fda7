"""Metronome's official SDK reads meters that do not sum (a max and a unique count) and groups over hour
windows, against the real local stack: every value comes from rollups (issue 12)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from metronome import Metronome

from chalicelib import catalog as catalog_data
from tests.conftest import FULL_KEY
from tests.e2e.localstack import request, running_stack

ORG_UUID = "a6b50534-cbd6-59e4-ad5e-053883b86cc2"
WORKSPACE = "WS-26-000101"
UUIDS = {m["id"]: m["uuid"] for m in catalog_data.read("meters")}
PEAK = UUIDS["agent.peak_concurrency"]  # max, group_by agent_id
USERS = UUIDS["agent.unique_users"]  # unique_count of metadata.user_id, group_by agent_id
# (meter, quantity, metadata)
EVENTS = [
    ("agent.peak_concurrency", 3, {"agent_id": "a1"}),
    ("agent.peak_concurrency", 7, {"agent_id": "a1"}),
    ("agent.peak_concurrency", 5, {"agent_id": "a2"}),
    ("agent.peak_concurrency", 2, {"agent_id": "a2"}),
    ("agent.peak_concurrency", 4, {}),
    ("agent.unique_users", 1, {"agent_id": "a1", "user_id": "u1"}),
    ("agent.unique_users", 1, {"agent_id": "a1", "user_id": "u2"}),
    ("agent.unique_users", 1, {"agent_id": "a2", "user_id": "u1"}),
    ("agent.unique_users", 1, {"agent_id": "a2", "user_id": "u3"}),
    ("agent.unique_users", 1, {"agent_id": "a1", "user_id": "u1"}),
]


@dataclass(frozen=True)
class Ingested:
    base_url: str
    first_hour: datetime
    today_start: datetime


@pytest.fixture(scope="module")
def ingested() -> Iterator[Ingested]:
    """A new agent line that rates the two meters, its events over HTTP, then the rollups showing them."""
    with running_stack("--schedule-every", "1") as base_url:
        now = datetime.now(UTC)
        status, created = request(
            f"{base_url}/v1/service-lines",
            data={
                "workspace_id": WORKSPACE,
                "name": "Agents - peaks and users",
                "product_line": "agent_gateway",
                "rates": {"agent.peak_concurrency": Decimal("2.5"), "agent.unique_users": Decimal("0.75")},
            },
        )
        assert status == 201, created
        line = created["data"]["id"]
        batch = [
            {"service_line_id": line, "meter": meter, "quantity": quantity, "metadata": metadata}
            for meter, quantity, metadata in EVENTS
        ]
        status, answer = request(f"{base_url}/v1/metering/events/batch", data={"events": batch})
        assert status == 200 and all(r["status"] == "accepted" for r in answer["data"]), answer
        summary_url = f"{base_url}/v1/usage/summary?service_line_id={line}"
        deadline = time.monotonic() + 60
        seen: object = None
        while time.monotonic() < deadline:
            status, body = request(summary_url)
            assert status == 200, body
            (entry,) = body["data"]["by_service_line"]
            seen = {m["meter"]: (m["aggregation"], m["quantity"]) for m in entry["meters"]}
            if seen == {"agent.peak_concurrency": ("max", 7), "agent.unique_users": ("unique_count", 3)}:
                assert entry["cost_estimate"] == Decimal("19.75")  # 7 x 2.50 + 3 distinct users x 0.75
                yield Ingested(
                    base_url,
                    now.replace(minute=0, second=0, microsecond=0),
                    now.replace(hour=0, minute=0, second=0, microsecond=0),
                )
                return
            time.sleep(0.25)
        raise AssertionError(f"the rollups never showed the events: {seen}")


@pytest.fixture
def metronome(ingested: Ingested) -> Metronome:
    return Metronome(bearer_token=FULL_KEY, base_url=ingested.base_url, max_retries=0)


def test_a_max_and_a_unique_count_meter_over_a_day(ingested: Ingested, metronome: Metronome) -> None:
    rows = list(
        metronome.v1.usage.list(
            window_size="DAY",
            starting_on=ingested.today_start,
            ending_before=ingested.today_start + timedelta(days=1),
            customer_ids=[ORG_UUID],
            billable_metrics=[{"id": PEAK}, {"id": USERS}],
        )
    )
    assert [(r.billable_metric_id, r.value) for r in rows] == [(PEAK, 7), (USERS, 3)]


def test_group_by_over_hour_windows(ingested: Ingested, metronome: Metronome) -> None:
    start = ingested.first_hour - timedelta(hours=1)
    rows = list(
        metronome.v1.usage.list(
            window_size="HOUR",
            starting_on=start,
            ending_before=start + timedelta(hours=4),
            billable_metrics=[
                {"id": PEAK, "group_by": {"key": "agent_id"}},
                {"id": USERS, "group_by": {"key": "agent_id", "values": ["a1", "a2", "a9"]}},
            ],
        )
    )
    assert len(rows) == 8  # 2 metrics x 4 hours
    peaks = [r for r in rows if r.billable_metric_id == PEAK]
    users = [r for r in rows if r.billable_metric_id == USERS]
    assert max(r.value or 0 for r in peaks) == 7 and all(r.value == 0 for r in peaks if not r.groups)
    per_agent: dict[str, float] = {}
    for row in peaks:  # the largest per agent over the hours is the largest per agent
        for agent, value in (row.groups or {}).items():
            assert value is not None and row.value is not None and value <= row.value
            per_agent[agent] = max(per_agent.get(agent, 0), value)
    assert per_agent == {"a1": 7, "a2": 5}
    assert all(set(r.groups or {}) == {"a1", "a2", "a9"} for r in users)
    assert all((r.groups or {})["a9"] is None for r in users)
    busy = [r for r in users if r.value]
    assert busy and all((r.value or 0) <= 3 for r in busy)


def test_unique_count_grouped_over_a_none_window(ingested: Ingested, metronome: Metronome) -> None:
    page = metronome.v1.usage.list(
        window_size="NONE",
        starting_on=ingested.today_start,
        ending_before=ingested.today_start + timedelta(days=1),
        billable_metrics=[
            {"id": USERS, "group_by": {"key": "agent_id"}},
            {"id": PEAK, "group_by": {"key": "agent_id"}},
        ],
    )
    users, peaks = page.data
    assert users.value == 3 and users.groups == {"a1": 2, "a2": 2}  # u1 and u2; u1 and u3
    assert peaks.value == 7 and peaks.groups == {"a1": 7, "a2": 5}  # the event without agent_id is in no group
