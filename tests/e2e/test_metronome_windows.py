"""Metronome's windows (document 003) agree with each other: a property test over HTTP.

For usage whose period_date is the UTC date of its event time (events sent without a period_date
are: it defaults to the day they are received), over any midnight-aligned bounds, the hour windows
(by event time), the day windows and the none window (by period_date) count the same usage, and
that is the exact sum of the events in the period. Over any bounds at all, the none window equals
the sum of the day windows, which cover the UTC days that contain the bounds.

The examples share one emulator (the function-scoped fixtures): each adds events on other days and
hours to the same store, so later examples query over everything the earlier ones ingested.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from chalicelib import jsonutil
from chalicelib.container import Container
from chalicelib.domain.usage import WHOLE_METERS
from tests.conftest import FULL_KEY, auth
from tests.support import in_memory_container, run_aggregator

BASE = datetime(2026, 4, 10, tzinfo=UTC)
DAYS = 4
ORG_UUID = "a6b50534-cbd6-59e4-ad5e-053883b86cc2"
# (service line, meter, the meter's uuid): two lines, five meters
LINE_METERS = [
    ("LIN-26-084729", "talent.hours", "aa206334-df7a-5953-b483-6c3179ad0b08"),
    ("LIN-26-084729", "talent.days", "9e780c07-3a00-5401-9bcf-542a26b5a822"),
    ("LIN-26-091100", "agent.runs", "ade9d848-54a8-568b-81f1-13f650ffbbf0"),
    ("LIN-26-091100", "agent.tokens", "4605a6c6-7bf4-525a-8ccd-b53bda05eb40"),
    ("LIN-26-091100", "agent.run_seconds", "bee3ccb5-81c8-5b0d-8d39-04dc481c449f"),
]
METER_UUIDS = [uuid for _, _, uuid in LINE_METERS]

PROPERTY_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

quantities = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(Decimal),
    st.decimals(min_value=0, max_value=10**6, places=9),
)
# (which line and meter, when it happened: seconds after BASE, quantity)
events = st.lists(
    st.tuples(
        st.integers(0, len(LINE_METERS) - 1),
        st.integers(0, DAYS * 86_400 - 1),
        quantities,
    ),
    min_size=1,
    max_size=6,
)
aligned_bounds = st.integers(0, DAYS - 1).flatmap(lambda a: st.tuples(st.just(a), st.integers(a + 1, DAYS)))
any_bounds = st.integers(0, DAYS * 86_400 - 2).flatmap(
    lambda a: st.tuples(st.just(a), st.integers(a + 1, DAYS * 86_400 - 1))
)


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The app over the in-memory stores (the emulator is for the stores' own tests)."""
    yield from in_memory_container(monkeypatch)


def text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def windows(client: Any, window: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Every row of every page of one query, over all five metrics."""
    body = {
        "window_size": window,
        "starting_on": text(start),
        "ending_before": text(end),
        "billable_metrics": [{"id": uuid} for uuid in METER_UUIDS],
    }
    rows: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        path = "/v1/usage" + (f"?next_page={token}" if token else "")
        response = client.http.post(path, headers=auth(FULL_KEY), body=json.dumps(body))
        assert response.status_code == 200, response.body
        page = jsonutil.loads(response.body)
        rows.extend(page["data"])
        token = page["next_page"]
        if token is None:
            return rows


def per_metric(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        sums[row["billable_metric_id"]] += Decimal(row["value"])
    return {uuid: sums[uuid] for uuid in METER_UUIDS}


def test_hour_day_and_none_windows_count_the_same_on_time_usage(client: Any, container: Container) -> None:
    ingested: list[tuple[str, datetime, Decimal]] = []

    @PROPERTY_SETTINGS
    @given(new_events=events, bounds=aligned_bounds, other=any_bounds)
    def check(new_events: list[tuple[int, int, Decimal]], bounds: tuple[int, int], other: tuple[int, int]) -> None:
        for which, offset, quantity in new_events:
            line, meter, uuid = LINE_METERS[which]
            if meter in WHOLE_METERS:  # runs are whole
                quantity = quantity.to_integral_value()
            moment = BASE + timedelta(seconds=offset)
            container.clock = lambda moment=moment: moment  # type: ignore[misc]
            event = {"service_line_id": line, "meter": meter, "quantity": quantity}  # no period_date: on time
            response = client.http.post("/v1/metering/events", headers=auth(), body=jsonutil.dumps(event))
            assert response.status_code == 201, response.body
            ingested.append((uuid, moment, quantity))
        container.clock = lambda: BASE + timedelta(days=DAYS)
        assert run_aggregator(client, container) == len(new_events)

        start, end = BASE + timedelta(days=bounds[0]), BASE + timedelta(days=bounds[1])
        hours, days, none_rows = (windows(client, size, start, end) for size in ("hour", "day", "none"))
        expected = {uuid: Decimal(0) for uuid in METER_UUIDS}
        for uuid, moment, quantity in ingested:
            if start <= moment < end:
                expected[uuid] += quantity
        assert len(hours) == 5 * 24 * (bounds[1] - bounds[0]) and len(days) == 5 * (bounds[1] - bounds[0])
        assert per_metric(hours) == per_metric(days) == per_metric(none_rows) == expected
        assert {r["customer_id"] for r in hours + days + none_rows} == {ORG_UUID}

        # any bounds: the none window is the sum of the day windows, over the days that contain the bounds
        lo, hi = BASE + timedelta(seconds=other[0]), BASE + timedelta(seconds=other[1])
        some_days, one = windows(client, "day", lo, hi), windows(client, "none", lo, hi)
        assert per_metric(some_days) == per_metric(one)
        first_day = datetime.combine(lo.date(), datetime.min.time(), UTC)
        last_day = datetime.combine((hi - timedelta(microseconds=1)).date(), datetime.min.time(), UTC)
        assert {(r["start_timestamp"], r["end_timestamp"]) for r in one} == {
            (text(first_day), text(last_day + timedelta(days=1)))
        }
        covered = {uuid: Decimal(0) for uuid in METER_UUIDS}
        for uuid, moment, quantity in ingested:
            if first_day <= moment < last_day + timedelta(days=1):
                covered[uuid] += quantity
        assert per_metric(one) == covered

    check()
