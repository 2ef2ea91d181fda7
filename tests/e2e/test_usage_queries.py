"""Reading usage through the native API (document 000): `GET /v1/usage` and `GET /v1/usage/summary`.

Events are ingested over HTTP, rolled up by invoking the real SQS-triggered aggregator
the way Lambda would, then read back; numbers are compared as Decimal.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
import simplejson

from chalicelib.container import Container
from chalicelib.domain.auth import CATALOG_READ, METERING_WRITE
from chalicelib.domain.models import ServiceLine, Workspace
from chalicelib.services import catalog_admin
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY, auth
from tests.support import Clock, body, in_memory_container, run_aggregator

ORG = "ORG-26-090500"
OTHER_ORG = "ORG-26-100200"
WORKSPACE = "WS-26-000101"
OTHER_WORKSPACE = "WS-26-000201"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
OTHER_ORG_LINE = "LIN-26-100201"
SECOND_WORKSPACE = "WS-26-000102"
SECOND_WS_LINE = "LIN-26-200001"
T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


# -- helpers -----------------------------------------------------------------------


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The app over the in-memory stores (the emulator is for the stores' own tests)."""
    yield from in_memory_container(monkeypatch)


@pytest.fixture
def clock(container: Container) -> Clock:
    fixed = Clock(T0)
    container.clock = fixed
    return fixed


def error_of(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = body(response)["error"]
    assert error["request_id"]
    return error


def get(client: Any, path: str, params: dict[str, Any] | None = None, key: str = FULL_KEY) -> Any:
    url = f"{path}?{urlencode(params)}" if params else path
    return client.http.get(url, headers=auth(key))


def ev(line: str, meter: str, quantity: str | int, period_date: str, **extra: Any) -> dict[str, Any]:
    """An event body; the quantity goes into the JSON as its exact decimal literal."""
    return {"service_line_id": line, "meter": meter, "quantity": Decimal(quantity), "period_date": period_date, **extra}


def ingest(client: Any, events: list[dict[str, Any]], key: str = FULL_KEY) -> list[str]:
    """POST the events in batches of 100 (exact number literals); returns their ids in order."""
    ids: list[str] = []
    for start in range(0, len(events), 100):
        payload = simplejson.dumps({"events": events[start : start + 100]}, use_decimal=True)
        response = client.http.post("/v1/metering/events/batch", headers=auth(key), body=payload)
        assert response.status_code == 200, response.body
        for result in body(response)["data"]:
            assert result["status"] == "accepted", result
            ids.append(result["data"]["id"])
    return ids


def list_all(client: Any, params: dict[str, Any], key: str = FULL_KEY) -> tuple[list[dict[str, Any]], int]:
    """Follow cursors to the end; returns every event listed and the number of pages."""
    found: list[dict[str, Any]] = []
    pages = 0
    cursor: str | None = None
    while True:
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        response = get(client, "/v1/usage", query, key)
        assert response.status_code == 200, response.body
        page = body(response)
        pages += 1
        found.extend(page["data"])
        meta = page["meta"]
        assert meta["has_more"] is (meta["cursor"] is not None)
        if not meta["has_more"]:
            return found, pages
        assert len(page["data"]) == int(params.get("limit", 25)), "a page that is not the last one is full"
        cursor = meta["cursor"]
        assert pages < 1000


def order_key(item: dict[str, Any]) -> tuple[str, str, str]:
    return (item["service_line_id"], item["period_date"], item["id"])


def add_second_workspace(container: Container) -> None:
    """A second workspace of the demo organization with one talent line."""
    container.catalog.put_workspace(Workspace(id=SECOND_WORKSPACE, organization_id=ORG, name="Data"))
    container.catalog.put_service_line(
        ServiceLine(
            id=SECOND_WS_LINE,
            organization_id=ORG,
            workspace_id=SECOND_WORKSPACE,
            name="Data Squad",
            product_line="talent",
            rates={"talent.hours": Decimal("80")},
            created_at=datetime(2026, 4, 1, tzinfo=UTC),
        )
    )


def summary(client: Any, params: dict[str, Any] | None = None, key: str = FULL_KEY) -> dict[str, Any]:
    response = get(client, "/v1/usage/summary", params, key)
    assert response.status_code == 200, response.body
    data: dict[str, Any] = body(response)["data"]
    return data


def line_of(data: dict[str, Any], line_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [e for e in data["by_service_line"] if e["service_line_id"] == line_id]
    assert len(found) == 1, f"{line_id} is listed once"
    return found[0]


def meters_of(line: dict[str, Any]) -> dict[str, Decimal]:
    return {m["meter"]: Decimal(m["quantity"]) for m in line["meters"]}


def issue(container: Container, scopes: frozenset[str], organization_id: str = ORG) -> str:
    return catalog_admin.issue_key(container.catalog, organization_id, scopes, "test key").secret


# -- fixtures: data sets ------------------------------------------------------------

DAYS = ("2026-05-01", "2026-05-02", "2026-05-03")
MIXED_SERIES = (
    (TALENT, "talent.hours"),
    (TALENT, "talent.days"),
    (AGENT, "agent.runs"),
    (AGENT, "agent.tokens"),
    (SECOND_WS_LINE, "talent.hours"),
)


@dataclass(frozen=True)
class Ingested:
    id: str
    line: str
    meter: str
    period_date: str
    quantity: Decimal


@pytest.fixture
def mixed(client: Any, container: Container, clock: Clock) -> list[Ingested]:
    """One event per (line, meter, day) over three lines in two workspaces, plus another org's events."""
    add_second_workspace(container)
    rows = [  # exact halves, but whole runs (a fractional agent.runs is refused)
        (line, meter, day, Decimal(f"{n + 1}") if meter == "agent.runs" else Decimal(f"{n + 1}.5"))
        for n, ((line, meter), day) in enumerate((s, d) for s in MIXED_SERIES for d in DAYS)
    ]
    ids = ingest(client, [ev(line, meter, str(q), day) for line, meter, day, q in rows])
    ingest(client, [ev(OTHER_ORG_LINE, "talent.hours", "3", day) for day in DAYS[:2]], key=OTHER_ORG_KEY)
    return [Ingested(i, line, meter, day, q) for i, (line, meter, day, q) in zip(ids, rows, strict=True)]


@pytest.fixture
def many(client: Any, clock: Clock) -> list[Ingested]:
    """130 events over two lines and four meters, several per day (35 talent.hours, 35 talent.days,
    30 agent.runs, 30 agent.tokens)."""
    rows: list[tuple[str, str, str, Decimal]] = []
    for n in range(70):
        rows.append((TALENT, "talent.hours" if n % 2 else "talent.days", f"2026-05-0{1 + n % 4}", Decimal(n + 1)))
    for n in range(60):
        rows.append((AGENT, "agent.runs" if n % 2 else "agent.tokens", f"2026-05-0{1 + n % 3}", Decimal(n + 1)))
    ids = ingest(client, [ev(line, meter, str(q), day) for line, meter, day, q in rows])
    assert len(set(ids)) == 130
    return [Ingested(i, line, meter, day, q) for i, (line, meter, day, q) in zip(ids, rows, strict=True)]


# -- GET /v1/usage: the records ----------------------------------------------------


def test_listed_event_carries_every_documented_field(client: Any, clock: Clock) -> None:
    (event_id,) = ingest(
        client,
        [
            ev(
                TALENT,
                "talent.hours",
                "8.25",
                "2026-05-09",
                source="talent_timesheet",
                idempotency_key="ts-1",
                metadata={"talent_id": "SCR-128491", "approved": True, "shift": 2},
            )
        ],
    )
    response = get(client, "/v1/usage", {"service_line_id": TALENT})
    assert response.status_code == 200
    page = body(response)
    assert page["meta"] == {"cursor": None, "has_more": False}
    (record,) = page["data"]
    assert set(record) == {
        "id",
        "service_line_id",
        "meter",
        "quantity",
        "unit",
        "recorded_at",
        "period_date",
        "source",
        "metadata",
    }
    assert record["id"] == event_id
    assert record["id"].startswith("USAGE-")
    assert record["service_line_id"] == TALENT
    assert record["meter"] == "talent.hours"
    assert record["quantity"] == Decimal("8.25")
    assert record["unit"] == "hours"
    assert record["period_date"] == "2026-05-09"
    assert record["source"] == "talent_timesheet"
    assert record["metadata"] == {"talent_id": "SCR-128491", "approved": True, "shift": 2}
    assert datetime.fromisoformat(record["recorded_at"].replace("Z", "+00:00")) == T0


def test_listing_shows_events_before_they_are_rolled_up(client: Any, container: Container, clock: Clock) -> None:
    """Listing reads raw events: an accepted event is listed even while it is still on the queue."""
    (event_id,) = ingest(client, [ev(AGENT, "agent.runs", "3", "2026-05-10")])
    listed = body(get(client, "/v1/usage", {"service_line_id": AGENT}))["data"]
    assert [e["id"] for e in listed] == [event_id]


def test_no_events_gives_an_empty_last_page(client: Any, clock: Clock) -> None:
    response = get(client, "/v1/usage")
    assert response.status_code == 200
    assert body(response) == {"data": [], "meta": {"cursor": None, "has_more": False}}


# -- GET /v1/usage: filters ---------------------------------------------------------

FILTER_CASES: list[tuple[dict[str, str], Any]] = [
    ({}, lambda e: True),
    ({"organization_id": ORG}, lambda e: True),
    ({"workspace_id": WORKSPACE}, lambda e: e.line in (TALENT, AGENT)),
    ({"workspace_id": SECOND_WORKSPACE}, lambda e: e.line == SECOND_WS_LINE),
    ({"service_line_id": AGENT}, lambda e: e.line == AGENT),
    ({"service_line_id": TALENT, "workspace_id": WORKSPACE}, lambda e: e.line == TALENT),
    ({"organization_id": ORG, "service_line_id": SECOND_WS_LINE}, lambda e: e.line == SECOND_WS_LINE),
    ({"meter": "talent.hours"}, lambda e: e.meter == "talent.hours"),
    ({"meter": "talent.hours", "workspace_id": WORKSPACE}, lambda e: e.meter == "talent.hours" and e.line == TALENT),
    ({"meter": "agent.tokens", "service_line_id": TALENT}, lambda e: False),
    ({"meter": "ods.cycles"}, lambda e: False),
    ({"from": "2026-05-02"}, lambda e: e.period_date >= "2026-05-02"),
    ({"to": "2026-05-02"}, lambda e: e.period_date <= "2026-05-02"),
    ({"from": "2026-05-02", "to": "2026-05-02"}, lambda e: e.period_date == "2026-05-02"),
    ({"from": "2026-05-01", "to": "2026-05-03"}, lambda e: True),
    ({"from": "2026-04-01", "to": "2026-04-30"}, lambda e: False),
    ({"from": "2026-05-04"}, lambda e: False),
    (
        {"from": "2026-05-03", "to": "2026-05-03", "service_line_id": AGENT, "meter": "agent.tokens"},
        lambda e: e.period_date == "2026-05-03" and e.line == AGENT and e.meter == "agent.tokens",
    ),
]


def test_filters_select_exactly_the_matching_events_in_order(client: Any, mixed: list[Ingested]) -> None:
    for params, wanted in FILTER_CASES:
        listed, _ = list_all(client, {**params, "limit": 100})
        expected = {e.id: e for e in mixed if wanted(e)}
        assert [e["id"] for e in listed] == sorted(
            expected, key=lambda i: (expected[i].line, expected[i].period_date, i)
        ), params
        for record in listed:
            source = expected[record["id"]]
            assert (record["service_line_id"], record["meter"], record["period_date"], record["quantity"]) == (
                source.line,
                source.meter,
                source.period_date,
                source.quantity,
            ), params


def test_another_organizations_events_are_never_listed(client: Any, mixed: list[Ingested]) -> None:
    own, _ = list_all(client, {"limit": 100})
    assert {e["service_line_id"] for e in own} == {TALENT, AGENT, SECOND_WS_LINE}
    theirs, _ = list_all(client, {"limit": 100}, key=OTHER_ORG_KEY)
    assert [e["service_line_id"] for e in theirs] == [OTHER_ORG_LINE, OTHER_ORG_LINE]
    assert not {e["id"] for e in theirs} & {e.id for e in mixed}


# -- GET /v1/usage: limits and validation -----------------------------------------------


def test_page_size_defaults_to_25_and_is_at_most_100(client: Any, many: list[Ingested]) -> None:
    default = body(get(client, "/v1/usage"))
    assert len(default["data"]) == 25
    assert default["meta"]["has_more"] is True
    assert isinstance(default["meta"]["cursor"], str)
    first = body(get(client, "/v1/usage", {"limit": 100}))
    assert len(first["data"]) == 100
    assert first["meta"]["has_more"] is True
    rest = body(get(client, "/v1/usage", {"limit": 100, "cursor": first["meta"]["cursor"]}))
    assert len(rest["data"]) == 30
    assert rest["meta"] == {"cursor": None, "has_more": False}


def test_limit_of_1_pages_one_event_at_a_time(client: Any, mixed: list[Ingested]) -> None:
    listed, pages = list_all(client, {"limit": 1, "service_line_id": AGENT})
    assert pages == 6
    assert sorted(e["id"] for e in listed) == sorted(e.id for e in mixed if e.line == AGENT)


INVALID_PARAMETERS: list[tuple[dict[str, str], str]] = [
    ({"limit": "0"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"limit": "-5"}, "limit"),
    ({"limit": "abc"}, "limit"),
    ({"limit": "2.5"}, "limit"),
    ({"limit": ""}, "limit"),
    ({"from": "2026-13-01"}, "from"),
    ({"from": "yesterday"}, "from"),
    ({"to": "2026-02-30"}, "to"),
    ({"meter": "x" * 65}, "meter"),
    ({"service_line": AGENT}, "service_line"),
]


def test_invalid_parameters_are_refused_naming_the_field(client: Any, mixed: list[Ingested]) -> None:
    for params, field in INVALID_PARAMETERS:
        response = get(client, "/v1/usage", params)
        assert response.status_code == 400, (params, response.body)
        error = error_of(response)
        assert (error["code"], error["field"]) == ("validation_error", field), params
        assert "data" not in body(response)


def test_summary_up_to_the_last_calendar_day_is_refused_not_a_server_error(client: Any, mixed: list[Ingested]) -> None:
    for params in ({"to": "9999-12-31"}, {"from": "2026-01-01", "to": "9999-12-31", "group_by": "agent_id"}):
        response = get(client, "/v1/usage/summary", params)
        assert response.status_code == 400, (params, response.body)
        assert (error_of(response)["code"], error_of(response)["field"]) == ("validation_error", "to")
    assert get(client, "/v1/usage/summary", {"from": "2026-05-01", "to": "9999-12-30"}).status_code == 200


def test_from_after_to_is_refused(client: Any, mixed: list[Ingested]) -> None:
    response = get(client, "/v1/usage", {"from": "2026-05-03", "to": "2026-05-01"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "validation_error"


# -- GET /v1/usage: paging ---------------------------------------------------------------

PAGING_CASES: list[tuple[dict[str, str], Any]] = [
    ({}, lambda e: True),
    ({"meter": "talent.hours"}, lambda e: e.meter == "talent.hours"),
    ({"meter": "agent.tokens"}, lambda e: e.meter == "agent.tokens"),
    ({"service_line_id": AGENT}, lambda e: e.line == AGENT),
    ({"service_line_id": TALENT, "meter": "talent.days"}, lambda e: e.meter == "talent.days"),
    ({"from": "2026-05-02", "to": "2026-05-03"}, lambda e: "2026-05-02" <= e.period_date <= "2026-05-03"),
    (
        {"from": "2026-05-04", "meter": "talent.hours"},
        lambda e: e.period_date >= "2026-05-04" and e.meter == "talent.hours",
    ),
    ({"meter": "agent.run_seconds"}, lambda e: False),
]


def test_paging_returns_every_event_exactly_once(client: Any, many: list[Ingested]) -> None:
    """130 events over two lines, 7 per page, with and without filters: no skips, no repeats."""
    by_id = {e.id: e for e in many}
    for params, wanted in PAGING_CASES:
        listed, page_count = list_all(client, {**params, "limit": 7})
        ids = [e["id"] for e in listed]
        expected = [e for e in many if wanted(e)]
        assert len(ids) == len(set(ids)), f"an event is listed twice for {params}"
        assert set(ids) == {e.id for e in expected}, f"events skipped for {params}"
        assert listed == sorted(listed, key=order_key), params
        assert page_count == max(1, -(-len(expected) // 7)), f"full pages of 7 and no empty last page: {params}"
        assert sum((e["quantity"] for e in listed), Decimal(0)) == sum((by_id[i].quantity for i in ids), Decimal(0))


def test_order_is_stable_across_identical_queries(client: Any, many: list[Ingested]) -> None:
    first, _ = list_all(client, {"limit": 7})
    second, _ = list_all(client, {"limit": 13})
    whole = body(get(client, "/v1/usage", {"limit": 100}))["data"]
    assert [e["id"] for e in first] == [e["id"] for e in second]
    assert [e["id"] for e in whole] == [e["id"] for e in first][:100]


def test_page_size_may_change_while_paging(client: Any, many: list[Ingested]) -> None:
    first = body(get(client, "/v1/usage", {"limit": 7, "meter": "talent.days"}))
    rest = body(get(client, "/v1/usage", {"limit": 100, "meter": "talent.days", "cursor": first["meta"]["cursor"]}))
    ids = [e["id"] for e in first["data"] + rest["data"]]
    assert len(ids) == len(set(ids)) == 35
    assert rest["meta"]["has_more"] is False


def test_paging_does_not_skip_events_ingested_on_a_later_page(client: Any, many: list[Ingested]) -> None:
    """An event ingested while paging, sorting after the cursor, is found on a later page."""
    first = body(get(client, "/v1/usage", {"limit": 7, "service_line_id": AGENT}))
    (late,) = ingest(client, [ev(AGENT, "agent.runs", "1", "2026-05-09")])
    rest, _ = list_all(client, {"limit": 7, "service_line_id": AGENT})
    cursor_rest: list[dict[str, Any]] = []
    cursor: str | None = first["meta"]["cursor"]
    while cursor:
        page = body(get(client, "/v1/usage", {"limit": 7, "service_line_id": AGENT, "cursor": cursor}))
        cursor_rest.extend(page["data"])
        cursor = page["meta"]["cursor"]
    ids = [e["id"] for e in first["data"] + cursor_rest]
    assert len(ids) == len(set(ids)) == 61
    assert ids[-1] == late
    assert [e["id"] for e in rest] == ids


# -- GET /v1/usage: cursors ---------------------------------------------------------------


@pytest.fixture
def few(client: Any, clock: Clock) -> list[str]:
    """Twelve events over two lines and two days: enough for several pages of 3."""
    events = [ev(TALENT, "talent.hours", str(n + 1), f"2026-05-0{1 + n % 2}") for n in range(6)]
    events += [ev(AGENT, "agent.runs", str(n + 1), f"2026-05-0{1 + n % 2}") for n in range(6)]
    return ingest(client, events)


def first_cursor(client: Any, params: dict[str, Any], key: str = FULL_KEY) -> str:
    page = body(get(client, "/v1/usage", params, key))
    assert page["meta"]["has_more"] is True
    cursor: str = page["meta"]["cursor"]
    return cursor


def assert_invalid_cursor(response: Any, case: Any = None) -> None:
    assert response.status_code == 400, (case, response.body)
    error = error_of(response)
    assert error["code"] == "invalid_cursor", case
    assert error["field"] == "cursor", case
    assert "data" not in body(response)


def _flip(token: str, index: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = alphabet.index(token[index])
    return token[:index] + alphabet[value ^ 0b100000] + token[index + 1 :]


def test_cursor_with_a_flipped_character_is_refused(client: Any, few: list[str]) -> None:
    cursor = first_cursor(client, {"limit": 3})
    assert get(client, "/v1/usage", {"limit": 3, "cursor": cursor}).status_code == 200
    for index in (0, 10, 21, 30, len(cursor) // 2, len(cursor) - 3):
        assert_invalid_cursor(get(client, "/v1/usage", {"limit": 3, "cursor": _flip(cursor, index)}), index)


FORGERIES: list[tuple[str, Any]] = [
    ("truncated", lambda c: c[:-6]),
    ("half", lambda c: c[: len(c) // 2]),
    ("short", lambda c: c[:20]),
    ("appended", lambda c: c + "AAAA"),
    ("prefix-cut", lambda c: c[4:]),
    ("random", lambda c: base64.urlsafe_b64encode(os.urandom(len(c))).decode().rstrip("=")),
    ("unsigned-json", lambda c: base64.urlsafe_b64encode(b'{"b":"x","p":{"l":"LIN-26-100201","k":{}}}').decode()),
    ("garbage", lambda c: "not a cursor!!"),
    ("empty", lambda c: ""),
]


def test_tampered_or_forged_cursor_is_refused(client: Any, few: list[str]) -> None:
    cursor = first_cursor(client, {"limit": 3})
    for name, mangle in FORGERIES:
        assert_invalid_cursor(get(client, "/v1/usage", {"limit": 3, "cursor": mangle(cursor)}), name)


def test_oversized_cursor_is_refused_naming_the_cursor(client: Any, few: list[str]) -> None:
    response = get(client, "/v1/usage", {"limit": 3, "cursor": first_cursor(client, {"limit": 3}) * 40})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] in ("invalid_cursor", "validation_error")
    assert error["field"] == "cursor"
    assert "data" not in body(response)


OTHER_QUERIES: list[tuple[dict[str, str], dict[str, str]]] = [
    ({"meter": "talent.hours"}, {}),
    ({}, {"meter": "talent.hours"}),
    ({"meter": "talent.hours"}, {"meter": "agent.runs"}),
    ({"service_line_id": TALENT}, {"service_line_id": AGENT}),
    ({"service_line_id": TALENT}, {}),
    ({"from": "2026-05-01"}, {"from": "2026-04-30"}),
    ({"to": "2026-05-04"}, {"to": "2026-05-03"}),
    ({"workspace_id": WORKSPACE}, {}),
]


def test_cursor_from_another_query_is_refused(client: Any, few: list[str]) -> None:
    for minted, used in OTHER_QUERIES:
        cursor = first_cursor(client, {**minted, "limit": 2})
        assert_invalid_cursor(get(client, "/v1/usage", {**used, "limit": 2, "cursor": cursor}), (minted, used))


def test_cursor_minted_for_another_organization_is_refused(client: Any, few: list[str]) -> None:
    ingest(client, [ev(OTHER_ORG_LINE, "talent.hours", str(n), "2026-05-02") for n in range(1, 4)], key=OTHER_ORG_KEY)
    for params in ({"limit": 1}, {"limit": 1, "meter": "talent.hours"}):
        cursor = first_cursor(client, params, key=OTHER_ORG_KEY)
        assert_invalid_cursor(get(client, "/v1/usage", {**params, "cursor": cursor}, key=FULL_KEY), params)
        # and the other way round: the demo organization's cursor is no key to the other's data
        own = first_cursor(client, params, key=FULL_KEY)
        assert_invalid_cursor(get(client, "/v1/usage", {**params, "cursor": own}, key=OTHER_ORG_KEY), params)


def test_cursor_works_for_another_key_of_the_same_organization(client: Any, few: list[str]) -> None:
    cursor = first_cursor(client, {"limit": 3})
    response = get(client, "/v1/usage", {"limit": 3, "cursor": cursor}, key=READ_KEY)
    assert response.status_code == 200
    assert len(body(response)["data"]) == 3


# -- GET /v1/usage and /summary: who may read what ----------------------------------------------

READ_PATHS = ["/v1/usage", "/v1/usage/summary"]


@pytest.mark.parametrize("path", READ_PATHS)
def test_another_organization_id_is_forbidden(client: Any, mixed: list[Ingested], path: str) -> None:
    response = get(client, path, {"organization_id": OTHER_ORG})
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "forbidden"
    assert error["field"] == "organization_id"
    assert "data" not in body(response)


NOT_FOUND_SCOPES: list[tuple[dict[str, str], str]] = [
    ({"service_line_id": OTHER_ORG_LINE}, "service_line_id"),
    ({"workspace_id": OTHER_WORKSPACE}, "workspace_id"),
    ({"service_line_id": "LIN-26-999999"}, "service_line_id"),
    ({"workspace_id": "WS-26-999999"}, "workspace_id"),
    ({"service_line_id": SECOND_WS_LINE, "workspace_id": WORKSPACE}, "service_line_id"),
    ({"service_line_id": OTHER_ORG_LINE, "organization_id": ORG}, "service_line_id"),
]


@pytest.mark.parametrize("path", READ_PATHS)
def test_another_organizations_line_or_workspace_is_not_found(client: Any, mixed: list[Ingested], path: str) -> None:
    for params, field in NOT_FOUND_SCOPES:
        response = get(client, path, params)
        assert response.status_code == 404, (params, response.body)
        assert error_of(response)["field"] == field, params
        assert "data" not in body(response)


@pytest.mark.parametrize("path", READ_PATHS)
def test_read_only_key_can_read(client: Any, mixed: list[Ingested], path: str) -> None:
    full = get(client, path, {"from": "2026-05-01", "to": "2026-05-31"})
    read = get(client, path, {"from": "2026-05-01", "to": "2026-05-31"}, key=READ_KEY)
    assert read.status_code == 200
    assert body(read)["data"] == body(full)["data"]


def test_key_without_usage_read_is_refused(client: Any, container: Container, mixed: list[Ingested]) -> None:
    for scopes in (frozenset({METERING_WRITE}), frozenset({CATALOG_READ}), frozenset()):
        key = issue(container, scopes)
        for path in READ_PATHS:
            response = get(client, path, key=key)
            assert response.status_code == 403, (scopes, path)
            assert error_of(response)["code"] == "insufficient_scope"
            assert "data" not in body(response)


def test_reading_without_a_valid_key_is_unauthorized(client: Any, clock: Clock) -> None:
    for path in READ_PATHS:
        assert client.http.get(path).status_code == 401
        assert client.http.get(path, headers=auth("mk_not_a_real_key")).status_code == 401


# -- GET /v1/usage/summary --------------------------------------------------------------------


def test_summary_has_the_documented_shape(client: Any, container: Container, clock: Clock) -> None:
    ingest(
        client,
        [
            ev(TALENT, "talent.hours", "8", "2026-05-04"),
            ev(TALENT, "talent.hours", "2.5", "2026-05-05"),
            ev(TALENT, "talent.days", "1", "2026-05-05"),
            ev(AGENT, "agent.runs", "10", "2026-05-05"),
            ev(AGENT, "agent.tokens", "20000", "2026-05-06"),
        ],
    )
    run_aggregator(client, container)
    data = summary(client, {"organization_id": ORG, "from": "2026-05-01", "to": "2026-05-31"})
    assert data["period"] == {"from": "2026-05-01", "to": "2026-05-31"}
    assert data["organization_id"] == ORG
    assert data["currency"] == "USD"
    talent = line_of(data, TALENT)
    assert talent["name"] == "Backend Engineering - Q2 2026"
    assert talent["product_line"] == "talent"
    assert talent["meters"] == [
        {"meter": "talent.days", "quantity": 1, "unit": "days", "aggregation": "sum"},
        {"meter": "talent.hours", "quantity": Decimal("10.5"), "unit": "hours", "aggregation": "sum"},
    ]
    assert talent["cost_estimate"] == Decimal("1757.50")  # 10.5 x 95 + 1 x 760
    agent = line_of(data, AGENT)
    assert agent["name"] == "Agent Gateway - Production"
    assert agent["product_line"] == "agent_gateway"
    assert {m["meter"]: (m["quantity"], m["unit"]) for m in agent["meters"]} == {
        "agent.runs": (10, "runs"),
        "agent.tokens": (20000, "tokens"),
    }
    assert agent["cost_estimate"] == Decimal("14.00")  # 10 x 0.40 + 20000 x 0.0005
    assert data["total_cost_estimate"] == Decimal("1771.50")
    assert {entry["service_line_id"] for entry in data["by_service_line"]} == {TALENT, AGENT}


def test_summary_reads_rollups_so_usage_appears_once_the_aggregator_has_run(
    client: Any, container: Container, clock: Clock
) -> None:
    ingest(client, [ev(AGENT, "agent.runs", "5", "2026-05-09")])
    params = {"service_line_id": AGENT}
    before = line_of(summary(client, params), AGENT)
    assert meters_of(before) == {}
    assert before["cost_estimate"] == 0
    assert run_aggregator(client, container) == 1
    after = line_of(summary(client, params), AGENT)
    assert meters_of(after) == {"agent.runs": Decimal(5)}
    assert after["cost_estimate"] == Decimal("2.00")
    ingest(client, [ev(AGENT, "agent.runs", "1", "2026-05-09")])
    assert meters_of(line_of(summary(client, params), AGENT)) == {"agent.runs": Decimal(5)}
    run_aggregator(client, container)
    assert meters_of(line_of(summary(client, params), AGENT)) == {"agent.runs": Decimal(6)}


def test_summary_counts_a_replayed_event_once(client: Any, container: Container, clock: Clock) -> None:
    for _ in range(3):
        response = client.http.post(
            "/v1/metering/events",
            headers=auth(),
            body=json.dumps(
                {
                    "service_line_id": AGENT,
                    "meter": "agent.runs",
                    "quantity": 7,
                    "period_date": "2026-05-08",
                    "idempotency_key": "replayed-1",
                }
            ),
        )
        assert response.status_code in (200, 201)
    run_aggregator(client, container)
    assert meters_of(line_of(summary(client, {"service_line_id": AGENT}), AGENT)) == {"agent.runs": Decimal(7)}


def test_summary_quantities_are_exact_decimals(client: Any, container: Container, clock: Clock) -> None:
    ingest(
        client,
        [
            ev(TALENT, "talent.hours", "0.1", "2026-05-02"),
            ev(TALENT, "talent.hours", "0.2", "2026-05-03"),
            ev(TALENT, "talent.hours", "0.100000001", "2026-05-03"),
            *[ev(AGENT, "agent.run_seconds", "0.1", "2026-05-04") for _ in range(10)],
            ev(AGENT, "agent.tokens", "999999999999.999999999", "2026-05-04"),
            ev(AGENT, "agent.tokens", "0.000000001", "2026-05-04"),
        ],
    )
    run_aggregator(client, container)
    data = summary(client, {"from": "2026-05-01", "to": "2026-05-31"})
    assert meters_of(line_of(data, TALENT)) == {"talent.hours": Decimal("0.400000001")}
    assert meters_of(line_of(data, AGENT)) == {"agent.run_seconds": Decimal(1), "agent.tokens": Decimal(10) ** 12}
    # 0.400000001 x 95 = 38.000000095
    assert line_of(data, TALENT)["cost_estimate"] == Decimal("38.00")
    # 1 x 0.002 + 10^12 x 0.0005 = 500000000.002
    assert line_of(data, AGENT)["cost_estimate"] == Decimal("500000000.00")
    # 38.000000095 + 500000000.002 = 500000038.002000095
    assert data["total_cost_estimate"] == Decimal("500000038.00")


@pytest.mark.parametrize("literal", ["0.0000001", "2.5E-7", "1E+2"])
def test_summary_counts_any_valid_quantity_spelling(
    client: Any, container: Container, clock: Clock, literal: str
) -> None:
    """Quantities under a millionth, or written with an exponent, are valid (at most 9 decimals) and roll up."""
    payload = (
        f'{{"service_line_id": "{AGENT}", "meter": "agent.tokens", "quantity": {literal}, "period_date": "2026-05-06"}}'
    )
    response = client.http.post("/v1/metering/events", headers=auth(), body=payload)
    assert response.status_code == 201, response.body
    run_aggregator(client, container)
    line = line_of(summary(client, {"service_line_id": AGENT}), AGENT)
    assert meters_of(line) == {"agent.tokens": Decimal(literal)}
    assert line["cost_estimate"] == (Decimal(literal) * Decimal("0.0005")).quantize(Decimal("0.01"))


ROUNDING_CASES: list[tuple[dict[str, str], str]] = [
    ({"agent.tokens": "1050"}, "0.52"),  # 0.525 -> half-even down
    ({"agent.tokens": "1070"}, "0.54"),  # 0.535 -> half-even up
    ({"agent.tokens": "1030"}, "0.52"),  # 0.515 -> half-even up
    ({"agent.tokens": "10"}, "0.00"),  # 0.005 -> 0.00
    ({"agent.tokens": "30"}, "0.02"),  # 0.015 -> 0.02
    ({"agent.tokens": "1051"}, "0.53"),  # 0.5255 is past the half
    # rounded once, at the edge: 0.0035 + 0.004 = 0.0075 -> 0.01 (per meter it would be 0.00 + 0.00)
    ({"agent.tokens": "7", "agent.run_seconds": "2"}, "0.01"),
    # 0.40 + 0.0025 + 0.0025 = 0.405 -> 0.40 (rounding each meter half-up would give 0.41)
    ({"agent.runs": "1", "agent.tokens": "5", "agent.run_seconds": "1.25"}, "0.40"),
]


def test_cost_is_rate_times_quantity_rounded_half_even_to_cents(
    client: Any, container: Container, clock: Clock
) -> None:
    """agent.tokens at 0.0005, agent.runs at 0.40, agent.run_seconds at 0.002 (demo rates); each case on its own day."""
    days = [(date(2026, 5, 1) + timedelta(days=n)).isoformat() for n in range(len(ROUNDING_CASES))]
    ingest(
        client,
        [
            ev(AGENT, meter, q, day)
            for (quantities, _), day in zip(ROUNDING_CASES, days, strict=True)
            for meter, q in quantities.items()
        ],
    )
    run_aggregator(client, container)
    for (quantities, cost), day in zip(ROUNDING_CASES, days, strict=True):
        data = summary(client, {"service_line_id": AGENT, "from": day, "to": day})
        line = line_of(data, AGENT)
        assert meters_of(line) == {meter: Decimal(q) for meter, q in quantities.items()}, quantities
        assert line["cost_estimate"] == Decimal(cost), quantities
        assert data["total_cost_estimate"] == Decimal(cost), quantities


def test_total_is_rounded_once_from_the_exact_line_costs(client: Any, container: Container, clock: Clock) -> None:
    # talent: 0.3 x 95 = 28.5; agent: 1050 x 0.0005 = 0.525; exact total 29.025 -> 29.02 (half-even)
    ingest(
        client,
        [
            ev(TALENT, "talent.hours", "0.1", "2026-05-02"),
            ev(TALENT, "talent.hours", "0.2", "2026-05-02"),
            ev(AGENT, "agent.tokens", "1050", "2026-05-02"),
        ],
    )
    run_aggregator(client, container)
    data = summary(client)
    assert line_of(data, TALENT)["cost_estimate"] == Decimal("28.50")
    assert line_of(data, AGENT)["cost_estimate"] == Decimal("0.52")
    assert data["total_cost_estimate"] == Decimal("29.02")


def test_summary_period_defaults_to_the_current_month_to_date(client: Any, container: Container, clock: Clock) -> None:
    ingest(
        client,
        [
            ev(AGENT, "agent.runs", "1", "2026-04-30"),
            ev(AGENT, "agent.runs", "10", "2026-05-01"),
            ev(AGENT, "agent.runs", "100", "2026-05-10"),
            ev(AGENT, "agent.runs", "1000", "2026-05-11"),
        ],
    )
    run_aggregator(client, container)
    data = summary(client)
    assert data["period"] == {"from": "2026-05-01", "to": "2026-05-10"}
    assert meters_of(line_of(data, AGENT)) == {"agent.runs": Decimal(110)}
    assert line_of(data, AGENT)["cost_estimate"] == Decimal("44.00")


PERIOD_CASES: list[tuple[dict[str, str], tuple[str, str], int]] = [
    ({}, ("2026-05-01", "2026-05-10"), 110),
    ({"from": "2026-04-30", "to": "2026-05-11"}, ("2026-04-30", "2026-05-11"), 1111),
    ({"from": "2026-05-01", "to": "2026-05-01"}, ("2026-05-01", "2026-05-01"), 10),
    ({"from": "2026-04-30", "to": "2026-04-30"}, ("2026-04-30", "2026-04-30"), 1),
    ({"from": "2026-05-02", "to": "2026-05-09"}, ("2026-05-02", "2026-05-09"), 0),
    ({"from": "2026-04-15"}, ("2026-04-15", "2026-05-10"), 111),
    ({"to": "2026-04-30"}, ("2026-04-01", "2026-04-30"), 1),
    ({"to": "2026-05-11"}, ("2026-05-01", "2026-05-11"), 1110),
]


def test_summary_period_bounds_are_inclusive(client: Any, container: Container, clock: Clock) -> None:
    ingest(
        client,
        [
            ev(AGENT, "agent.runs", "1", "2026-04-30"),
            ev(AGENT, "agent.runs", "10", "2026-05-01"),
            ev(AGENT, "agent.runs", "100", "2026-05-10"),
            ev(AGENT, "agent.runs", "1000", "2026-05-11"),
        ],
    )
    run_aggregator(client, container)
    for params, period, runs in PERIOD_CASES:
        data = summary(client, params)
        assert data["period"] == {"from": period[0], "to": period[1]}, params
        assert meters_of(line_of(data, AGENT)).get("agent.runs", Decimal(0)) == runs, params


def test_summary_never_reports_usage_before_the_requested_from(client: Any, container: Container, clock: Clock) -> None:
    """`from` is the period start (inclusive): a start after today must not report earlier usage."""
    ingest(client, [ev(AGENT, "agent.runs", "10", "2026-05-01")])
    run_aggregator(client, container)
    response = get(client, "/v1/usage/summary", {"from": "2026-06-01"})
    if response.status_code == 200:
        data = body(response)["data"]
        assert data["period"]["from"] >= "2026-06-01"
        assert meters_of(line_of(data, AGENT)) == {}
    else:
        assert response.status_code == 400
        assert error_of(response)["code"] == "validation_error"


SUMMARY_SCOPES: list[tuple[dict[str, str], set[str]]] = [
    ({}, {TALENT, AGENT, SECOND_WS_LINE}),
    ({"organization_id": ORG}, {TALENT, AGENT, SECOND_WS_LINE}),
    ({"workspace_id": WORKSPACE}, {TALENT, AGENT}),
    ({"workspace_id": SECOND_WORKSPACE}, {SECOND_WS_LINE}),
    ({"service_line_id": AGENT}, {AGENT}),
    ({"service_line_id": TALENT, "workspace_id": WORKSPACE}, {TALENT}),
]


def test_summary_scoping_filters(client: Any, container: Container, mixed: list[Ingested]) -> None:
    run_aggregator(client, container)
    for params, lines in SUMMARY_SCOPES:
        data = summary(client, params)
        assert {entry["service_line_id"] for entry in data["by_service_line"]} == lines, params
        expected_total = Decimal(0)
        for line_id in lines:
            entry = line_of(data, line_id)
            quantities: dict[str, Decimal] = {}
            for e in mixed:
                if e.line == line_id:
                    quantities[e.meter] = quantities.get(e.meter, Decimal(0)) + e.quantity
            assert meters_of(entry) == quantities, (params, line_id)
            line = container.catalog.get_service_line(ORG, line_id)
            assert line is not None
            exact = sum((line.rates[m] * q for m, q in quantities.items()), Decimal(0))
            assert entry["cost_estimate"] == exact.quantize(Decimal("0.01")), (params, line_id)
            expected_total += exact
        assert data["total_cost_estimate"] == expected_total.quantize(Decimal("0.01")), params


def test_summary_of_another_organization_key_shows_only_its_own_lines(
    client: Any, container: Container, mixed: list[Ingested]
) -> None:
    run_aggregator(client, container)
    data = summary(client, key=OTHER_ORG_KEY)
    assert data["organization_id"] == OTHER_ORG
    assert [entry["service_line_id"] for entry in data["by_service_line"]] == [OTHER_ORG_LINE]
    other = line_of(data, OTHER_ORG_LINE)
    assert meters_of(other) == {"talent.hours": Decimal(6)}
    assert other["cost_estimate"] == Decimal("360.00")
    assert data["total_cost_estimate"] == Decimal("360.00")


def test_summary_splits_a_day_across_meters_and_lines(client: Any, container: Container, clock: Clock) -> None:
    """Rollups of the same day but different meters or lines never mix."""
    ingest(
        client,
        [
            ev(TALENT, "talent.hours", "1", "2026-05-05"),
            ev(TALENT, "talent.days", "2", "2026-05-05"),
            ev(AGENT, "agent.runs", "3", "2026-05-05"),
        ],
    )
    run_aggregator(client, container)
    data = summary(client, {"from": "2026-05-05", "to": "2026-05-05"})
    assert meters_of(line_of(data, TALENT)) == {"talent.hours": Decimal(1), "talent.days": Decimal(2)}
    assert meters_of(line_of(data, AGENT)) == {"agent.runs": Decimal(3)}


def test_summary_date_validation(client: Any, clock: Clock) -> None:
    for params, field in (({"from": "2026-5-1"}, "from"), ({"to": "not-a-date"}, "to")):
        response = get(client, "/v1/usage/summary", params)
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "validation_error"
        assert error["field"] == field
    response = get(client, "/v1/usage/summary", {"from": "2026-05-05", "to": "2026-05-04"})
    assert response.status_code == 400


def test_summary_handles_a_day_boundary_at_midnight(client: Any, container: Container, clock: Clock) -> None:
    """The default period follows the injected clock's UTC date."""
    clock.now = datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)
    ingest(client, [ev(AGENT, "agent.runs", "2", "2026-05-31"), ev(AGENT, "agent.runs", "3", "2026-06-01")])
    run_aggregator(client, container)
    data = summary(client)
    assert data["period"] == {"from": "2026-06-01", "to": "2026-06-01"}
    assert meters_of(line_of(data, AGENT)) == {"agent.runs": Decimal(3)}
    clock.now = clock.now - timedelta(minutes=1)
    data = summary(client)
    assert data["period"] == {"from": "2026-05-01", "to": "2026-05-31"}
    assert meters_of(line_of(data, AGENT)) == {"agent.runs": Decimal(2)}
    assert date.fromisoformat(data["period"]["to"]) == clock.now.date()


def test_a_paused_lines_usage_stays_readable(client: Any, container: Container, clock: Clock) -> None:
    """Pausing stops new usage, not the history: the period's events and totals remain."""
    ids = ingest(client, [ev(AGENT, "agent.runs", "4", "2026-05-03"), ev(AGENT, "agent.tokens", "100", "2026-05-03")])
    run_aggregator(client, container)
    assert client.http.post(f"/v1/service-lines/{AGENT}/pause", headers=auth()).status_code == 200
    listed, _ = list_all(client, {"service_line_id": AGENT})
    assert sorted(e["id"] for e in listed) == sorted(ids)
    line = line_of(summary(client), AGENT)
    assert meters_of(line) == {"agent.runs": Decimal(4), "agent.tokens": Decimal(100)}
    assert line["cost_estimate"] == Decimal("1.65")


def test_total_never_adds_amounts_of_different_currencies(client: Any, container: Container, clock: Clock) -> None:
    """A line billed in EUR next to lines billed in USD: the total, stated in one currency, must not
    be the sum of euros and dollars."""
    container.catalog.put_service_line(
        ServiceLine(
            id="LIN-26-000001",
            organization_id=ORG,
            workspace_id=WORKSPACE,
            name="Berlin Squad",
            product_line="talent",
            currency="EUR",
            rates={"talent.hours": Decimal("100")},
            created_at=datetime(2026, 4, 1, tzinfo=UTC),
        )
    )
    ingest(
        client,
        [ev("LIN-26-000001", "talent.hours", "10", "2026-05-04"), ev(TALENT, "talent.hours", "10", "2026-05-04")],
    )
    run_aggregator(client, container)
    data = summary(client)
    assert line_of(data, "LIN-26-000001")["cost_estimate"] == Decimal("1000.00")  # EUR
    assert line_of(data, TALENT)["cost_estimate"] == Decimal("950.00")  # USD
    currency_of = {"LIN-26-000001": "EUR", TALENT: "USD", AGENT: "USD"}
    same_currency = sum(
        (e["cost_estimate"] for e in data["by_service_line"] if currency_of[e["service_line_id"]] == data["currency"]),
        Decimal(0),
    )
    assert data["total_cost_estimate"] == same_currency, (
        f"total {data['total_cost_estimate']} {data['currency']} mixes currencies"
    )
