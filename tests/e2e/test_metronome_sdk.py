"""Metronome's official Python SDK against the real local stack: `client.v1.usage.list` with auto-pagination."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal

import pytest
from metronome import BadRequestError, Metronome, NotFoundError

from tests.conftest import FULL_KEY
from tests.e2e.localstack import request, running_stack

ORG = "ORG-26-090500"
ORG_UUID = "a6b50534-cbd6-59e4-ad5e-053883b86cc2"  # the organization's stable UUID: Metronome's customer id
OTHER_UUID = "83c1c060-95b4-564d-bddd-eaf03aa90599"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
HOURS = "aa206334-df7a-5953-b483-6c3179ad0b08"  # talent.hours
RUNS = "ade9d848-54a8-568b-81f1-13f650ffbbf0"  # agent.runs
TOKENS = "4605a6c6-7bf4-525a-8ccd-b53bda05eb40"  # agent.tokens
DAYS = "9e780c07-3a00-5401-9bcf-542a26b5a822"  # talent.days
RUN_SECONDS = "bee3ccb5-81c8-5b0d-8d39-04dc481c449f"  # agent.run_seconds
DEFAULT_METRICS = [RUN_SECONDS, RUNS, TOKENS, DAYS, HOURS]


@pytest.fixture(scope="module")
def stack() -> Iterator[str]:
    with running_stack("--schedule-every", "1") as base_url:
        yield base_url


def midnight(day: date) -> datetime:
    return datetime.combine(day, clock_time(), UTC)


class Usage:
    """What was ingested: the day the test started and the hour before the first event."""

    def __init__(self, base_url: str) -> None:
        now = datetime.now(UTC)
        self.base_url = base_url
        self.today = now.date()
        self.first_hour = now.replace(minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def usage(stack: str) -> Usage:
    """A few events over HTTP, then wait until the rollups show them (native summary)."""
    ingested = Usage(stack)
    today = ingested.today
    events = [
        (TALENT, "talent.hours", Decimal("1.5"), today - timedelta(days=1), {"talent_id": "T1"}),
        (TALENT, "talent.hours", Decimal("2.25"), today - timedelta(days=5), {"talent_id": "T2"}),
        (TALENT, "talent.hours", Decimal("0.1"), today - timedelta(days=5), {"talent_id": "T1"}),
        (AGENT, "agent.runs", Decimal(3), today - timedelta(days=1), {"agent_id": "a1"}),
        (AGENT, "agent.tokens", Decimal(1000), today - timedelta(days=20), {"agent_id": "a1"}),
    ]
    for index, (line, meter, quantity, period_date, metadata) in enumerate(events):
        status, body = request(
            f"{stack}/v1/metering/events",
            data={
                "service_line_id": line,
                "meter": meter,
                "quantity": quantity,
                "period_date": period_date.isoformat(),
                "metadata": metadata,
                "idempotency_key": f"sdk-test-{index}",
            },
        )
        assert status == 201, body
    expected = {"talent.hours": Decimal("3.85"), "agent.runs": Decimal(3), "agent.tokens": Decimal(1000)}
    summary_url = f"{stack}/v1/usage/summary?from={(today - timedelta(days=29)).isoformat()}&to={today.isoformat()}"
    seen: dict[str, Decimal] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = request(summary_url)
        assert status == 200, body
        seen = {m["meter"]: m["quantity"] for line in body["data"]["by_service_line"] for m in line["meters"]}
        if seen == expected:
            return ingested
        time.sleep(0.25)
    raise AssertionError(f"the rollups never showed the events: {seen}")


@pytest.fixture
def metronome(usage: Usage) -> Metronome:
    return Metronome(bearer_token=FULL_KEY, base_url=usage.base_url, max_retries=0)


def test_day_windows_auto_paginate_across_pages(usage: Usage, metronome: Metronome) -> None:
    start = midnight(usage.today - timedelta(days=29))
    end = midnight(usage.today + timedelta(days=1))
    first = metronome.v1.usage.list(window_size="DAY", starting_on=start, ending_before=end)
    assert len(first.data) == 100 and first.has_next_page()
    pages = list(first.iter_pages())
    assert [len(page.data) for page in pages] == [100, 50]
    assert pages[-1].next_page is None

    rows = list(first)  # the SDK's auto-pagination: every row of every page
    assert len(rows) == 150  # 5 metrics x 30 days
    assert [r.billable_metric_id for r in rows] == [m for m in DEFAULT_METRICS for _ in range(30)]
    assert len({(r.billable_metric_id, r.start_timestamp) for r in rows}) == 150
    assert {r.customer_id for r in rows} == {ORG_UUID}
    assert rows[0].start_timestamp == start and rows[-1].end_timestamp == end
    assert all(r.end_timestamp - r.start_timestamp == timedelta(days=1) for r in rows)
    nonzero = {(r.billable_metric_name, r.start_timestamp.date()): r.value for r in rows if r.value}
    assert nonzero == {
        ("Agent Runs", usage.today - timedelta(days=1)): 3,
        ("Agent Tokens", usage.today - timedelta(days=20)): 1000,
        ("Talent Hours", usage.today - timedelta(days=5)): 2.35,
        ("Talent Hours", usage.today - timedelta(days=1)): 1.5,
    }
    assert sum(1 for r in rows if r.value == 0) == 146


def test_hour_windows_and_billable_metric_filter_through_the_sdk(usage: Usage, metronome: Metronome) -> None:
    start = usage.first_hour - timedelta(hours=70)
    end = usage.first_hour + timedelta(hours=2)
    rows = list(
        metronome.v1.usage.list(
            window_size="HOUR",
            starting_on=start,
            ending_before=end,
            customer_ids=[ORG_UUID],
            billable_metrics=[{"id": HOURS}, {"id": TOKENS}],
        )
    )
    assert len(rows) == 144  # 2 metrics x 72 hours: two pages
    assert [r.billable_metric_id for r in rows] == [HOURS] * 72 + [TOKENS] * 72
    # hour windows go by event time: every event was logged during this test
    totals = {m: sum(Decimal(str(r.value)) for r in rows if r.billable_metric_id == m) for m in (HOURS, TOKENS)}
    assert totals == {HOURS: Decimal("3.85"), TOKENS: Decimal(1000)}
    assert all(r.start_timestamp >= usage.first_hour for r in rows if r.value)


def test_none_window_with_group_by_through_the_sdk(usage: Usage, metronome: Metronome) -> None:
    page = metronome.v1.usage.list(
        window_size="NONE",
        starting_on=midnight(usage.today - timedelta(days=29)),
        ending_before=midnight(usage.today + timedelta(days=1)),
        billable_metrics=[
            {"id": HOURS, "group_by": {"key": "talent_id"}},
            {"id": RUNS, "group_by": {"key": "agent_id", "values": ["a1", "a2"]}},
        ],
    )
    assert page.next_page is None
    hours, runs = page.data
    assert hours.value == 3.85 and hours.groups == {"T1": 1.6, "T2": 2.25}
    assert runs.value == 3 and runs.groups == {"a1": 3, "a2": None}


def test_errors_reach_the_sdk_as_its_exceptions(usage: Usage, metronome: Metronome) -> None:
    start = midnight(usage.today - timedelta(days=1))
    end = midnight(usage.today)
    with pytest.raises(NotFoundError) as missing:
        metronome.v1.usage.list(
            window_size="DAY",
            starting_on=start,
            ending_before=end,
            billable_metrics=[{"id": "00000000-0000-0000-0000-000000000000"}],
        )
    assert missing.value.status_code == 404
    assert isinstance(missing.value.body, dict) and missing.value.body["code"] == "meter_not_found"
    for other in ("ORG-26-100200", OTHER_UUID):
        with pytest.raises(NotFoundError):
            metronome.v1.usage.list(window_size="DAY", starting_on=start, ending_before=end, customer_ids=[other])
    with pytest.raises(BadRequestError) as empty:
        metronome.v1.usage.list(window_size="DAY", starting_on=end, ending_before=start)
    assert isinstance(empty.value.body, dict) and "after starting_on" in empty.value.body["message"]


def test_bounds_off_the_grid_get_the_days_that_contain_them(usage: Usage, metronome: Metronome) -> None:
    yesterday = midnight(usage.today - timedelta(days=1))
    rows = list(
        metronome.v1.usage.list(
            window_size="DAY",
            starting_on=yesterday + timedelta(hours=13, minutes=5),
            ending_before=yesterday + timedelta(days=1, hours=2),
            customer_ids=[ORG],
            billable_metrics=[{"id": HOURS}],
        )
    )
    assert [(r.customer_id, r.start_timestamp, r.end_timestamp, r.value) for r in rows] == [
        (ORG_UUID, yesterday, yesterday + timedelta(days=1), 1.5),
        (ORG_UUID, yesterday + timedelta(days=1), yesterday + timedelta(days=2), 0),
    ]


def test_the_raw_answer_carries_exact_json_numbers(usage: Usage) -> None:
    status, body = request(
        f"{usage.base_url}/v1/usage",
        data={
            "window_size": "none",
            "starting_on": midnight(usage.today - timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ending_before": midnight(usage.today - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "billable_metrics": [{"id": HOURS}],
        },
    )
    assert status == 200, body
    assert body["next_page"] is None and body["data"][0]["value"] == Decimal("2.35")
