"""The Scalr dialect (document 004): `GET /usage-statistics` through chalice.test.Client.

Usage is ingested with the native `POST /v1/metering/events`, rolled up by invoking the real
`aggregate_usage` handler with the queued SQS messages, and read back as JSON:API documents.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from chalicelib.container import Container
from chalicelib.dialects.scalr import JsonApiErrorDocument
from chalicelib.domain.auth import ACCOUNTS_BILLING, CATALOG_READ, METERING_WRITE, USAGE_READ
from chalicelib.domain.models import Organization, ServiceLine, Workspace
from chalicelib.domain.usage import RollupDelta, RollupKey
from chalicelib.services import catalog_admin
from chalicelib.storage.rollups_repo import ApplyUnit
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY
from tests.support import in_memory_container, run_aggregator

ORG = "ORG-26-090500"
OTHER_ORG = "ORG-26-100200"
NOW = datetime(2026, 5, 20, 12, 0, tzinfo=UTC)
MAY = "between:2026-05-01T00:00:00Z,2026-06-01T00:00:00Z"
JSON_API = "application/vnd.api+json"
HEX_ID = re.compile(r"[0-9a-f]{64}")

# (service line, meter, quantity, period_date): what the tests report.
EVENTS: list[tuple[str, str, str, str]] = [
    ("LIN-26-091100", "agent.runs", "3", "2026-05-10"),
    ("LIN-26-091100", "agent.runs", "2", "2026-05-10"),
    ("LIN-26-091100", "agent.run_seconds", "120.5", "2026-05-10"),
    ("LIN-26-091100", "agent.run_seconds", "30", "2026-05-10"),
    ("LIN-26-091100", "agent.runs", "1", "2026-05-11"),
    ("LIN-26-091100", "agent.run_seconds", "42", "2026-05-11"),
    ("LIN-26-091100", "agent.tokens", "1000", "2026-05-11"),
    ("LIN-26-091100", "agent.runs", "4", "2026-05-12"),
    ("LIN-26-091100", "agent.run_seconds", "0.1", "2026-05-12"),
    ("LIN-26-091100", "agent.run_seconds", "0.2", "2026-05-12"),
    ("LIN-26-091200", "agent.runs", "2", "2026-05-11"),
    ("LIN-26-091200", "agent.run_seconds", "10", "2026-05-11"),
    ("LIN-26-091300", "agent.runs", "6", "2026-05-11"),
    ("LIN-26-091300", "agent.run_seconds", "600.25", "2026-05-11"),
    ("LIN-26-091300", "agent.runs", "7", "2026-05-13"),
    ("LIN-26-091300", "agent.run_seconds", "70", "2026-05-13"),
    ("LIN-26-084729", "talent.hours", "8", "2026-05-10"),
    ("LIN-26-084729", "talent.hours", "6", "2026-05-14"),
]


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The app over the in-memory stores (the emulator is for the stores' own tests)."""
    yield from in_memory_container(monkeypatch)


def body(response: Any) -> Any:
    """The JSON body with non-integral numbers as exact Decimals."""
    return json.loads(response.body, parse_float=Decimal)


def header(response: Any, name: str) -> str | None:
    return next((v for k, v in response.headers.items() if k.lower() == name.lower()), None)


def stats(
    client: Any,
    key: str | None = FULL_KEY,
    prefer: str | None = "profile=preview",
    **params: str,
) -> Any:
    """GET /usage-statistics; params use _ for brackets: filter_date -> filter[date]."""
    names = {
        "filter_date": "filter[date]",
        "filter_account": "filter[account]",
        "page_number": "page[number]",
        "page_size": "page[size]",
    }
    query = {names.get(k, k): v for k, v in params.items()}
    return get(client, "/usage-statistics?" + urlencode(query), key, prefer)


def get(client: Any, url: str, key: str | None = FULL_KEY, prefer: str | None = "profile=preview") -> Any:
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if prefer is not None:
        headers["Prefer"] = prefer
    return client.http.get(url, headers=headers)


def rows(response: Any) -> list[tuple[Any, ...]]:
    """(date, breakdown-id, breakdown-name, runs-count, runs-seconds) of each item, in order."""
    assert response.status_code == 200, response.body
    return [
        (
            a["date"],
            a["breakdown-id"],
            a["breakdown-name"],
            a["runs-count"],
            a["runs-seconds"],
        )
        for a in (item["attributes"] for item in body(response)["data"])
    ]


def ingest(client: Any, line: str, meter: str, quantity: str, period_date: str, key: str = FULL_KEY) -> None:
    # the quantity goes into the JSON text as written, so "0.1" stays an exact decimal
    payload = (
        f'{{"service_line_id": "{line}", "meter": "{meter}", "quantity": {quantity}, "period_date": "{period_date}"}}'
    )
    response = client.http.post(
        "/v1/metering/events",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        body=payload,
    )
    assert response.status_code == 201, response.body


@pytest.fixture
def usage(client: Any, container: Container) -> Any:
    """Two more agent lines (one in a second workspace), the EVENTS ingested and rolled up."""
    container.clock = lambda: NOW
    container.catalog.put_workspace(Workspace(id="WS-26-000102", organization_id=ORG, name="Data Science"))
    for line_id, workspace, name in (
        ("LIN-26-091200", "WS-26-000101", "Agent Gateway - Staging"),
        ("LIN-26-091300", "WS-26-000102", "Research Agents"),
    ):
        container.catalog.put_service_line(
            ServiceLine(
                id=line_id,
                organization_id=ORG,
                workspace_id=workspace,
                name=name,
                product_line="agent_gateway",
                rates={"agent.runs": Decimal("0.40"), "agent.run_seconds": Decimal("0.002")},
                created_at=datetime(2026, 4, 1, tzinfo=UTC),
            )
        )
    for event in EVENTS:
        ingest(client, *event)
    ingest(client, "LIN-26-100201", "talent.hours", "5", "2026-05-11", key=OTHER_ORG_KEY)
    assert run_aggregator(client, container) == len(EVENTS) + 1
    return client


# -- sums per date, breakdowns, totals ---------------------------------------------------------


def test_per_date_rows_sum_runs_and_run_seconds_exactly_and_render_integers(usage: Any) -> None:
    response = stats(usage, filter_date=MAY, filter_account=ORG)
    # seconds are summed exactly, then rounded half-even: 150.5 -> 150, 652.25 -> 652, 0.1 + 0.2 -> 0
    assert rows(response) == [
        ("2026-05-10", None, None, 5, 150),
        ("2026-05-11", None, None, 9, 652),
        ("2026-05-12", None, None, 4, 0),
        ("2026-05-13", None, None, 7, 70),
    ]
    attributes = [item["attributes"] for item in body(response)["data"]]
    assert all(type(a["runs-count"]) is int and type(a["runs-seconds"]) is int for a in attributes)
    assert b'"runs-seconds":150}' in response.body.replace(b" ", b"")


def test_breakdown_by_environment_is_per_workspace_with_names(usage: Any) -> None:
    response = stats(usage, filter_date=MAY, filter_account=ORG, breakdown_by="environment")
    assert rows(response) == [
        ("2026-05-10", "WS-26-000101", "Platform Engineering", 5, 150),
        ("2026-05-11", "WS-26-000101", "Platform Engineering", 3, 52),
        ("2026-05-11", "WS-26-000102", "Data Science", 6, 600),
        ("2026-05-12", "WS-26-000101", "Platform Engineering", 4, 0),
        ("2026-05-13", "WS-26-000102", "Data Science", 7, 70),
    ]


def test_breakdown_by_workspace_is_per_service_line_with_names(usage: Any) -> None:
    response = stats(usage, filter_date=MAY, filter_account=ORG, breakdown_by="workspace")
    assert rows(response) == [
        ("2026-05-10", "LIN-26-091100", "Agent Gateway - Production", 5, 150),
        ("2026-05-11", "LIN-26-091100", "Agent Gateway - Production", 1, 42),
        ("2026-05-11", "LIN-26-091200", "Agent Gateway - Staging", 2, 10),
        ("2026-05-11", "LIN-26-091300", "Research Agents", 6, 600),
        ("2026-05-12", "LIN-26-091100", "Agent Gateway - Production", 4, 0),
        ("2026-05-13", "LIN-26-091300", "Research Agents", 7, 70),
    ]


def test_total_summarizes_the_whole_period(usage: Any) -> None:
    # the total rounds the exact total (873.05 -> 873), not the sum of the rounded days (150+652+0+70 = 872)
    overall = stats(usage, filter_date=MAY, filter_account=ORG, total="true")
    assert rows(overall) == [(None, None, None, 25, 873)]
    environments = stats(usage, filter_date=MAY, filter_account=ORG, total="1", breakdown_by="environment")
    assert rows(environments) == [
        (None, "WS-26-000101", "Platform Engineering", 12, 203),
        (None, "WS-26-000102", "Data Science", 13, 670),
    ]
    lines = stats(usage, filter_date=MAY, filter_account=ORG, total="True", breakdown_by="workspace")
    assert rows(lines) == [
        (None, "LIN-26-091100", "Agent Gateway - Production", 10, 193),
        (None, "LIN-26-091200", "Agent Gateway - Staging", 2, 10),
        (None, "LIN-26-091300", "Research Agents", 13, 670),
    ]
    not_total = stats(usage, filter_date=MAY, filter_account=ORG, total="false")
    assert [r[0] for r in rows(not_total)] == ["2026-05-10", "2026-05-11", "2026-05-12", "2026-05-13"]


def test_run_seconds_round_half_even_at_the_edge_and_stay_exact_in_the_store(usage: Any, container: Container) -> None:
    # 05-14 .. 05-17: a day each of 0.5, 1.5, 2.5 and 0.000000001 seconds on the production line
    for day, seconds in (("2026-05-14", "0.5"), ("2026-05-15", "1.5"), ("2026-05-16", "2.5"), ("2026-05-17", "1E-9")):
        ingest(usage, "LIN-26-091100", "agent.run_seconds", seconds, day)
        ingest(usage, "LIN-26-091100", "agent.runs", "1", day)
    assert run_aggregator(usage, container) == 8
    week = "between:2026-05-14T00:00:00Z,2026-05-18T00:00:00Z"
    response = stats(usage, filter_date=week, filter_account=ORG)
    assert rows(response) == [
        ("2026-05-14", None, None, 1, 0),
        ("2026-05-15", None, None, 1, 2),
        ("2026-05-16", None, None, 1, 2),
        ("2026-05-17", None, None, 1, 0),
    ]
    assert b"E-" not in response.body and b"." not in response.body.split(b'"data"', 1)[1].split(b'"links"')[0]
    # the total rounds the exact 4.500000001 seconds: 5 (not 0 + 2 + 2 + 0)
    assert rows(stats(usage, filter_date=week, filter_account=ORG, total="true")) == [(None, None, None, 4, 5)]
    # the store keeps the exact value: the native summary shows it
    summary = usage.http.get(
        f"/v1/usage/summary?organization_id={ORG}&from=2026-05-14&to=2026-05-17",
        headers={"Authorization": f"Bearer {FULL_KEY}"},
    )
    assert summary.status_code == 200, summary.body
    quantities = {
        meter["meter"]: meter["quantity"]
        for line in body(summary)["data"]["by_service_line"]
        for meter in line["meters"]
    }
    assert quantities["agent.run_seconds"] == Decimal("4.500000001")


def test_fractional_runs_already_in_the_store_render_as_an_integer(usage: Any, container: Container) -> None:
    """Runs stored before ingest refused fractions (a rollup of 100.5 runs) still render as an integer."""
    delta = RollupDelta(Decimal("100.5"), 1)
    unit = ApplyUnit(
        "BATCH-legacy",
        0,
        ORG,
        ("USAGE-legacy",),
        {RollupKey(ORG, "LIN-26-091100", "agent.runs", "D", "2026-05-20"): delta},
    )
    assert container.rollups.apply([unit], NOW).applied == [unit]
    day = "between:2026-05-20T00:00:00Z,2026-05-21T00:00:00Z"
    response = stats(usage, filter_date=day, filter_account=ORG)
    assert rows(response) == [("2026-05-20", None, None, 100, 0)]
    assert type(body(response)["data"][0]["attributes"]["runs-count"]) is int


def test_total_over_a_range_without_usage_has_no_rows(usage: Any) -> None:
    response = stats(
        usage, filter_date="between:2026-05-14T00:00:00Z,2026-05-20T00:00:00Z", filter_account=ORG, total="true"
    )
    assert rows(response) == []
    assert body(response)["meta"]["pagination"]["total-count"] == 0


def test_only_rolled_up_usage_counts(usage: Any, container: Container) -> None:
    """The statistics read day rollups: an event not yet aggregated is not in them."""
    ingest(usage, "LIN-26-091100", "agent.runs", "100", "2026-05-12")
    day = "between:2026-05-12T00:00:00Z,2026-05-13T00:00:00Z"
    assert rows(stats(usage, filter_date=day, filter_account=ORG)) == [("2026-05-12", None, None, 4, 0)]
    assert run_aggregator(usage, container) == 1
    assert rows(stats(usage, filter_date=day, filter_account=ORG)) == [("2026-05-12", None, None, 104, 0)]


# -- the date range --------------------------------------------------------------------------


DATE_RANGES: list[tuple[str, list[str]]] = [
    # B is exclusive
    ("between:2026-05-11T00:00:00Z,2026-05-13T00:00:00Z", ["2026-05-11", "2026-05-12"]),
    ("between:2026-05-10T00:00:00Z,2026-05-11T00:00:00.000Z", ["2026-05-10"]),
    # offsets are converted to UTC first: both bounds are midnight UTC
    ("between:2026-05-11T02:00:00+02:00,2026-05-12T02:00:00+02:00", ["2026-05-11"]),
    ("between:2026-05-11T20:00:00-04:00,2026-05-13T20:00:00-04:00", ["2026-05-12", "2026-05-13"]),
    ("between:2026-05-13T00:00:00Z,2026-05-14T00:00:00Z", ["2026-05-13"]),
    ("between:2026-04-01T00:00:00Z,2026-05-10T00:00:00Z", []),
]
PARTIAL_DAYS: list[tuple[str, str]] = [
    # (filter, the bound the error names): a part of a day is refused, never widened to whole days
    ("between:2026-05-11T12:00:00Z,2026-05-12T12:00:00Z", "2026-05-11T12:00:00Z"),
    ("between:2026-05-11T00:00:00Z,2026-05-13T00:00:01Z", "2026-05-13T00:00:01Z"),
    ("between:2026-05-11T00:00:00Z,2026-05-12T23:59:59.999999Z", "2026-05-12T23:59:59.999999Z"),
    ("between:2026-05-10T23:59:59Z,2026-05-11T00:00:00Z", "2026-05-10T23:59:59Z"),
    ("between:2026-05-12T10:00:00.250Z,2026-05-12T11:00:00Z", "2026-05-12T10:00:00.250Z"),
    ("between:2026-05-11T00:00:00+02:00,2026-05-12T00:00:00+02:00", "2026-05-11T00:00:00+02:00"),
]


def test_date_range_boundaries(usage: Any) -> None:
    for date_filter, dates in DATE_RANGES:
        response = stats(usage, filter_date=date_filter, filter_account=ORG)
        assert [r[0] for r in rows(response)] == dates, date_filter


def test_partial_days_are_a_400_naming_the_bound_not_widened(usage: Any) -> None:
    for date_filter, bound in PARTIAL_DAYS:
        response = stats(usage, filter_date=date_filter, filter_account=ORG, total="true")
        assert response.status_code == 400, date_filter
        assert header(response, "Content-Type") == JSON_API
        (error,) = body(response)["errors"]
        assert error["code"] == "invalid_date_range" and error["source"] == {"parameter": "filter[date]"}
        assert bound in error["detail"] and "midnight UTC" in error["detail"], error["detail"]
        assert error["title"] == "Invalid date range"


def test_an_unencoded_plus_offset_is_understood(usage: Any) -> None:
    """A raw '+' arrives decoded as a space; it is read as the offset sign it was."""
    date_filter = "between:2026-05-11T02:00:00+02:00,2026-05-13T02:00:00+02:00"
    url = f"/usage-statistics?filter[date]={date_filter}&filter[account]={ORG}"
    assert [r[0] for r in rows(get(usage, url))] == ["2026-05-11", "2026-05-12"]


def test_a_range_may_cover_366_days_but_not_more(usage: Any) -> None:
    longest = stats(usage, filter_date="between:2025-06-01T00:00:00Z,2026-06-02T00:00:00Z", filter_account=ORG)
    assert len(rows(longest)) == 4
    too_long = stats(usage, filter_date="between:2025-06-01T00:00:00Z,2026-06-03T00:00:00Z", filter_account=ORG)
    assert too_long.status_code == 400
    assert body(too_long)["errors"][0]["code"] == "invalid_date_range"
    assert "366 days" in body(too_long)["errors"][0]["detail"]


# -- the document ------------------------------------------------------------------------------


def test_the_whole_json_api_document(usage: Any) -> None:
    date_filter = "between:2026-05-12T00:00:00Z,2026-05-14T00:00:00Z"
    response = stats(usage, filter_date=date_filter, filter_account=ORG)
    assert response.status_code == 200
    assert header(response, "Content-Type") == JSON_API
    assert header(response, "Preference-Applied") == "profile=preview"
    document = body(response)
    assert set(document) == {"data", "included", "links", "meta"}
    assert document["included"] is None
    first, second = document["data"]
    for item in (first, second):
        assert set(item) == {"type", "id", "attributes", "links", "relationships"}
        assert item["type"] == "usage-statistics"
        assert HEX_ID.fullmatch(item["id"])
        assert item["links"] is None
        assert item["relationships"] == {"account": {"data": {"id": ORG, "type": "accounts"}}}
    assert first["attributes"] == {
        "breakdown-id": None,
        "breakdown-name": None,
        "date": "2026-05-12",
        "runs-count": 4,
        "runs-seconds": 0,
    }
    assert second["attributes"]["date"] == "2026-05-13"
    assert first["id"] != second["id"]
    assert document["meta"] == {
        "pagination": {"current-page": 1, "next-page": None, "prev-page": None, "total-count": 2, "total-pages": 1}
    }
    links = document["links"]
    assert set(links) == {"first", "last", "next", "prev", "self"}
    assert links["next"] is None and links["prev"] is None
    assert links["first"] == links["last"] == links["self"]
    self_link = urlsplit(links["self"])
    assert self_link.path == "/usage-statistics"
    assert parse_qs(self_link.query) == {
        "filter[date]": [date_filter],
        "filter[account]": [ORG],
        "page[number]": ["1"],
        "page[size]": ["100"],
    }
    # the self link answers the same document
    assert body(get(usage, links["self"])) == document


def test_ids_are_stable_and_distinct(usage: Any) -> None:
    def ids(response: Any) -> dict[tuple[Any, Any], str]:
        return {
            (item["attributes"]["date"], item["attributes"]["breakdown-id"]): item["id"]
            for item in body(response)["data"]
        }

    once = ids(stats(usage, filter_date=MAY, filter_account=ORG, breakdown_by="workspace"))
    again = ids(stats(usage, filter_date=MAY, filter_account=ORG, breakdown_by="workspace", page_size="2"))
    assert len(once) == 6 and len(set(once.values())) == 6
    assert again.items() <= once.items()
    narrower = ids(
        stats(
            usage,
            filter_date="between:2026-05-11T00:00:00Z,2026-05-12T00:00:00Z",
            filter_account=ORG,
            breakdown_by="workspace",
        )
    )
    assert narrower == {k: v for k, v in once.items() if k[0] == "2026-05-11"}
    by_date = ids(stats(usage, filter_date=MAY, filter_account=ORG))
    environment = ids(stats(usage, filter_date=MAY, filter_account=ORG, breakdown_by="environment"))
    totals = ids(stats(usage, filter_date=MAY, filter_account=ORG, total="true"))
    everything = [*once.values(), *by_date.values(), *environment.values(), *totals.values()]
    assert len(everything) == len(set(everything)) == 6 + 4 + 5 + 1


# -- paging --------------------------------------------------------------------------------------


def test_paging_walks_the_rows_with_links_and_meta(usage: Any) -> None:
    everything = rows(stats(usage, filter_date=MAY, filter_account=ORG, breakdown_by="workspace"))
    first = stats(usage, filter_date=MAY, filter_account=ORG, breakdown_by="workspace", page_size="4")
    page1 = body(first)
    assert page1["meta"]["pagination"] == {
        "current-page": 1,
        "next-page": 2,
        "prev-page": None,
        "total-count": 6,
        "total-pages": 2,
    }
    assert page1["links"]["prev"] is None
    next_query = parse_qs(urlsplit(page1["links"]["next"]).query)
    assert next_query["page[number]"] == ["2"] and next_query["page[size]"] == ["4"]
    assert next_query["breakdown_by"] == ["workspace"] and next_query["filter[account]"] == [ORG]
    assert page1["links"]["last"] == page1["links"]["next"]
    second = get(usage, page1["links"]["next"])
    page2 = body(second)
    assert page2["meta"]["pagination"] == {
        "current-page": 2,
        "next-page": None,
        "prev-page": 1,
        "total-count": 6,
        "total-pages": 2,
    }
    assert page2["links"]["next"] is None
    assert page2["links"]["prev"] == page1["links"]["self"] == page2["links"]["first"]
    assert rows(first) + rows(second) == everything
    assert len(rows(first)) == 4


def test_a_page_past_the_end_is_empty(usage: Any) -> None:
    response = stats(usage, filter_date=MAY, filter_account=ORG, page_number="3", page_size="2")
    document = body(response)
    assert response.status_code == 200 and document["data"] == []
    assert document["meta"]["pagination"] == {
        "current-page": 3,
        "next-page": None,
        "prev-page": 2,
        "total-count": 4,
        "total-pages": 2,
    }


BAD_PAGES = [
    ("page[number]", "0"),
    ("page[number]", "-1"),
    ("page[number]", "two"),
    ("page[number]", ""),
    ("page[number]", "1" * 10),
    ("page[size]", "0"),
    ("page[size]", "101"),
    ("page[size]", "1.5"),
    ("page[size]", "1e2"),
    ("page[size]", " 5"),
]


def test_bad_paging_values_are_400(client: Any) -> None:
    for name, value in BAD_PAGES:
        query = {"filter[date]": MAY, "filter[account]": ORG, name: value}
        response = get(client, "/usage-statistics?" + urlencode(query))
        assert response.status_code == 400, (name, value)
        error = body(response)["errors"][0]
        assert error["code"] == "invalid_page", (name, value)
        assert error["source"] == {"parameter": name}


def test_page_size_100_is_allowed(usage: Any) -> None:
    response = stats(usage, filter_date=MAY, filter_account=ORG, page_size="100", page_number="1")
    assert len(rows(response)) == 4


# -- validation --------------------------------------------------------------------------------


BAD_DATE_FILTERS: list[tuple[str, str]] = [
    ("2026-05-01T00:00:00Z,2026-06-01T00:00:00Z", "invalid_filter"),
    ("since:2026-05-01T00:00:00Z", "invalid_filter"),
    ("BETWEEN:2026-05-01T00:00:00Z,2026-06-01T00:00:00Z", "invalid_filter"),
    ("between:2026-05-01T00:00:00Z", "invalid_filter"),
    ("between:2026-05-01T00:00:00Z,", "invalid_filter"),
    ("between:2026-05-01T00:00:00Z,2026-06-01T00:00:00Z,2026-07-01T00:00:00Z", "invalid_filter"),
    ("between:2026-05-01,2026-06-01", "invalid_filter"),
    ("between:2026-05-01T00:00:00,2026-06-01T00:00:00", "invalid_filter"),
    ("between:2026-05-01T00:00Z,2026-06-01T00:00Z", "invalid_filter"),
    ("between:2026-02-30T00:00:00Z,2026-06-01T00:00:00Z", "invalid_filter"),
    ("between:2026-05-01T00:00:00Z,2026-06-01T00:00:00+24:00", "invalid_filter"),
    ("between:0001-01-01T00:00:00+01:00,2026-06-01T00:00:00Z", "invalid_filter"),
    ("between:2026-06-01T00:00:00Z,2026-05-01T00:00:00Z", "invalid_date_range"),
    ("between:2026-05-01T00:00:00Z,2026-05-01T00:00:00Z", "invalid_date_range"),
    ("between:2026-05-01T02:00:00+02:00,2026-05-01T00:00:00Z", "invalid_date_range"),
    ("between:2024-01-01T00:00:00Z,2026-01-01T00:00:00Z", "invalid_date_range"),
    ("between:\u0662\u0660\u0662\u0666-05-01T00:00:00Z,2026-06-01T00:00:00Z", "invalid_filter"),
]
ACCOUNT = {"filter[date]": MAY, "filter[account]": ORG}
BAD_QUERIES: list[tuple[dict[str, str], str, str]] = [
    ({"filter[account]": ORG}, "missing_parameter", "filter[date]"),
    ({"filter[date]": "", "filter[account]": ORG}, "missing_parameter", "filter[date]"),
    ({"filter[date]": MAY}, "missing_parameter", "filter[account]"),
    ({"filter[date]": MAY, "filter[account]": ""}, "missing_parameter", "filter[account]"),
    ({**ACCOUNT, "breakdown_by": "account"}, "invalid_parameter", "breakdown_by"),
    ({**ACCOUNT, "breakdown_by": "Environment"}, "invalid_parameter", "breakdown_by"),
    ({**ACCOUNT, "breakdown_by": ""}, "invalid_parameter", "breakdown_by"),
    ({**ACCOUNT, "total": "perhaps"}, "invalid_parameter", "total"),
    ({**ACCOUNT, "total": ""}, "invalid_parameter", "total"),
    ({**ACCOUNT, "sort": "date"}, "unknown_parameter", "sort"),
    ({**ACCOUNT, "filter[environment]": "WS-26-000101"}, "unknown_parameter", "filter[environment]"),
    *(({"filter[date]": value, "filter[account]": ORG}, code, "filter[date]") for value, code in BAD_DATE_FILTERS),
]


def test_bad_queries_are_400_json_api_errors(client: Any) -> None:
    for query, code, parameter in BAD_QUERIES:
        response = get(client, "/usage-statistics?" + urlencode(query))
        assert response.status_code == 400, query
        assert header(response, "Content-Type") == JSON_API
        document = body(response)
        assert set(document) == {"errors"}
        (error,) = document["errors"]
        assert error == {
            "status": "400",
            "code": code,
            "title": error["title"],
            "detail": error["detail"],
            "source": {"parameter": parameter},
        }, query
        assert error["title"] and error["detail"]
        JsonApiErrorDocument.model_validate(document)


def test_a_repeated_parameter_is_400(client: Any) -> None:
    url = f"/usage-statistics?filter[date]={MAY}&filter[account]={ORG}&filter[account]={OTHER_ORG}"
    response = get(client, url)
    assert response.status_code == 400
    assert body(response)["errors"][0]["code"] == "duplicate_parameter"


def test_the_preview_profile_is_required(usage: Any) -> None:
    for prefer in (None, "return=minimal", "profile=legacy", ""):
        response = stats(usage, prefer=prefer, filter_date=MAY, filter_account=ORG)
        assert response.status_code == 400, prefer
        assert header(response, "Content-Type") == JSON_API
        assert header(response, "Preference-Applied") is None
        (error,) = body(response)["errors"]
        assert error["status"] == "400"
        assert error["code"] == ("unsupported_profile" if prefer == "profile=legacy" else "profile_required")
        assert error["source"] == {"header": "Prefer"}
        assert "data" not in body(response)
    for prefer in ('profile="preview"', "return=minimal, profile=preview"):
        response = stats(usage, prefer=prefer, filter_date=MAY, filter_account=ORG)
        assert len(rows(response)) == 4
        assert header(response, "Preference-Applied") == "profile=preview"


# -- who may read what ---------------------------------------------------------------------------


def test_the_read_only_key_has_accounts_billing(usage: Any) -> None:
    full = stats(usage, filter_date=MAY, filter_account=ORG, breakdown_by="environment")
    read = stats(usage, key=READ_KEY, filter_date=MAY, filter_account=ORG, breakdown_by="environment")
    assert read.status_code == 200
    assert body(read) == body(full)


def test_a_key_without_accounts_billing_is_403(usage: Any, container: Container) -> None:
    issued = catalog_admin.issue_key(
        container.catalog, ORG, frozenset({USAGE_READ, CATALOG_READ, METERING_WRITE}), "no billing"
    )
    response = stats(usage, key=issued.secret, filter_date=MAY, filter_account=ORG)
    assert response.status_code == 403
    assert header(response, "Content-Type") == JSON_API
    assert body(response) == {
        "errors": [
            {
                "status": "403",
                "code": "insufficient_scope",
                "title": "Forbidden",
                "detail": f"This operation needs the '{ACCOUNTS_BILLING}' scope.",
            }
        ]
    }
    billing = catalog_admin.issue_key(container.catalog, ORG, frozenset({ACCOUNTS_BILLING}), "billing only")
    assert len(rows(stats(usage, key=billing.secret, filter_date=MAY, filter_account=ORG))) == 4


def test_no_key_is_401(client: Any) -> None:
    for key in (None, "mk_unknown"):
        response = stats(client, key=key, filter_date=MAY, filter_account=ORG)
        assert response.status_code == 401
        assert header(response, "Content-Type") == JSON_API
        (error,) = body(response)["errors"]
        assert error["status"] == "401" and error["code"] == "unauthorized" and error["title"] == "Unauthorized"


def test_another_account_is_refused_without_data(usage: Any) -> None:
    for account, extra in itertools.product(
        (OTHER_ORG, "acc-ttpu7uslju6igv8", ORG.lower(), f"{ORG},{OTHER_ORG}"),
        ({}, {"total": "true"}, {"breakdown_by": "workspace"}),
    ):
        response = stats(usage, filter_date=MAY, filter_account=account, **extra)
        assert response.status_code == 404
        assert header(response, "Content-Type") == JSON_API
        document = body(response)
        assert set(document) == {"errors"}
        (error,) = document["errors"]
        assert error["status"] == "404" and error["code"] == "account_not_found"
        assert error["source"] == {"parameter": "filter[account]"}


def test_the_other_organization_sees_only_its_own_zero_usage(usage: Any) -> None:
    own = stats(usage, key=OTHER_ORG_KEY, filter_date=MAY, filter_account=OTHER_ORG)
    document = body(own)
    assert own.status_code == 200
    assert document["data"] == []
    assert document["meta"]["pagination"] == {
        "current-page": 1,
        "next-page": None,
        "prev-page": None,
        "total-count": 0,
        "total-pages": 1,
    }
    for extra in ({"total": "true"}, {"breakdown_by": "environment"}, {"breakdown_by": "workspace", "total": "1"}):
        assert rows(stats(usage, key=OTHER_ORG_KEY, filter_date=MAY, filter_account=OTHER_ORG, **extra)) == []
    theirs = stats(usage, key=OTHER_ORG_KEY, filter_date=MAY, filter_account=ORG)
    assert theirs.status_code == 404
    assert "data" not in body(theirs)


def test_each_organization_reads_only_its_own_agent_usage(usage: Any, container: Container) -> None:
    """Give the other organization agent usage of its own: neither sees the other's."""
    container.catalog.put_organization(
        Organization(
            id=OTHER_ORG,
            name="Demo Starter Studio",
            plan_id="plan_enterprise_annual",
            created_at=datetime(2026, 2, 10, 9, tzinfo=UTC),
        )
    )
    container.catalog.put_service_line(
        ServiceLine(
            id="LIN-26-100299",
            organization_id=OTHER_ORG,
            workspace_id="WS-26-000201",
            name="Studio Agents",
            product_line="agent_gateway",
            rates={"agent.runs": Decimal("0.40")},
            created_at=datetime(2026, 4, 1, tzinfo=UTC),
        )
    )
    ingest(usage, "LIN-26-100299", "agent.runs", "11", "2026-05-12", key=OTHER_ORG_KEY)
    assert run_aggregator(usage, container) == 1
    other = stats(usage, key=OTHER_ORG_KEY, filter_date=MAY, filter_account=OTHER_ORG, breakdown_by="environment")
    assert rows(other) == [("2026-05-12", "WS-26-000201", "Studio", 11, 0)]
    assert rows(stats(usage, key=OTHER_ORG_KEY, filter_date=MAY, filter_account=OTHER_ORG, total="true")) == [
        (None, None, None, 11, 0)
    ]
    ours = stats(usage, filter_date=MAY, filter_account=ORG, total="true")
    assert rows(ours) == [(None, None, None, 25, 873)]
    assert stats(usage, filter_date=MAY, filter_account=OTHER_ORG).status_code == 404
