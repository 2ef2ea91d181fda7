"""Metronome's `POST /v1/usage` (document 003) through chalice.test.Client, over rollups of ingested events."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from chalicelib import cli, jsonutil
from chalicelib.container import Container
from chalicelib.domain.auth import METERING_WRITE
from chalicelib.domain.models import Organization, organization_uuid
from chalicelib.services import catalog_admin
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY, auth
from tests.support import in_memory_container, run_aggregator

ORG = "ORG-26-090500"
OTHER_ORG = "ORG-26-100200"
ORG_UUID = "a6b50534-cbd6-59e4-ad5e-053883b86cc2"  # organization_uuid(ORG), as demo.json states it
OTHER_UUID = "83c1c060-95b4-564d-bddd-eaf03aa90599"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
OTHER_LINE = "LIN-26-100201"
HOURS = "aa206334-df7a-5953-b483-6c3179ad0b08"  # talent.hours
DAYS = "9e780c07-3a00-5401-9bcf-542a26b5a822"  # talent.days
RUNS = "ade9d848-54a8-568b-81f1-13f650ffbbf0"  # agent.runs
TOKENS = "4605a6c6-7bf4-525a-8ccd-b53bda05eb40"  # agent.tokens
RUN_SECONDS = "bee3ccb5-81c8-5b0d-8d39-04dc481c449f"  # agent.run_seconds
DEFAULT_METRICS = [RUN_SECONDS, RUNS, TOKENS, DAYS, HOURS]  # active meters the org's lines rate, by meter id
ROW_FIELDS = {"customer_id", "billable_metric_id", "billable_metric_name", "start_timestamp", "end_timestamp", "value"}

# (event time, service line, meter, quantity, period_date or None, metadata, key)
EVENTS: list[tuple[str, str, str, str, str | None, dict[str, Any] | None, str]] = [
    ("2026-04-14T09:10:00Z", TALENT, "talent.hours", "2.5", None, {"talent_id": "T1"}, FULL_KEY),
    ("2026-04-14T09:40:00Z", TALENT, "talent.hours", "1.25", None, {"talent_id": "T2"}, FULL_KEY),
    ("2026-04-14T15:05:00Z", TALENT, "talent.hours", "3", None, {"talent_id": "T1"}, FULL_KEY),
    # logged on the 15th at 08:xx for the 13th: hour windows see the 15th, day windows the 13th
    ("2026-04-15T08:00:00Z", TALENT, "talent.hours", "4", "2026-04-13", {"talent_id": "T2"}, FULL_KEY),
    ("2026-04-15T10:00:00Z", TALENT, "talent.days", "1", None, None, FULL_KEY),
    ("2026-04-14T10:20:00Z", AGENT, "agent.runs", "7", None, {"agent_id": "a1", "model": "m1"}, FULL_KEY),
    ("2026-04-14T10:21:00Z", AGENT, "agent.tokens", "0.1", None, {"agent_id": "a1", "model": "m1"}, FULL_KEY),
    ("2026-04-14T10:22:00Z", AGENT, "agent.tokens", "0.2", None, {"agent_id": "a2", "model": "m1"}, FULL_KEY),
    ("2026-04-14T09:15:00Z", OTHER_LINE, "talent.hours", "100", None, {"talent_id": "T1"}, OTHER_ORG_KEY),
]


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The app over the in-memory stores (the emulator is for the stores' own tests)."""
    yield from in_memory_container(monkeypatch)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def parsed(response: Any) -> Any:
    """A response body with every number exact (Decimal or int)."""
    return jsonutil.loads(response.body)


@pytest.fixture
def usage(client: Any, container: Container) -> Any:
    """The events above ingested over HTTP at their event times, and rolled up."""
    for index, (moment, line, meter, quantity, period_date, metadata, key) in enumerate(EVENTS):
        container.clock = lambda moment=moment: at(moment)  # type: ignore[misc]
        event: dict[str, Any] = {"service_line_id": line, "meter": meter, "quantity": Decimal(quantity)}
        if period_date:
            event["period_date"] = period_date
        if metadata:
            event["metadata"] = metadata
        event["idempotency_key"] = f"metronome-{index}"
        response = client.http.post("/v1/metering/events", headers=auth(key), body=jsonutil.dumps(event))
        assert response.status_code == 201, response.body
    container.clock = lambda: at("2026-04-15T12:00:00Z")
    assert run_aggregator(client, container) == len(EVENTS)
    return client


def post(client: Any, body: Any, key: str | None = FULL_KEY, next_page: str | None = None) -> Any:
    path = "/v1/usage" + (f"?next_page={next_page}" if next_page is not None else "")
    headers = auth(key) if key else {"Content-Type": "application/json"}
    return client.http.post(path, headers=headers, body=json.dumps(body))


def query(window: str, start: str, end: str, metrics: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"window_size": window, "starting_on": start, "ending_before": end, **extra}
    if metrics is not None:
        body["billable_metrics"] = [{"id": m} for m in metrics]
    return body


def ok(client: Any, body: Any, key: str = FULL_KEY) -> list[dict[str, Any]]:
    response = post(client, body, key)
    assert response.status_code == 200, response.body
    page = parsed(response)
    assert set(page) == {"data", "next_page"}
    assert page["next_page"] is None
    rows: list[dict[str, Any]] = page["data"]
    return rows


def refused(client: Any, body: Any, status: int, code: str, key: str | None = FULL_KEY, **kw: Any) -> str:
    response = post(client, body, key, **kw)
    assert response.status_code == status, response.body
    error = json.loads(response.body)
    assert set(error) == {"message", "code"} and error["code"] == code
    message: str = error["message"]
    assert message
    return message


def values(rows: list[dict[str, Any]]) -> list[tuple[str, str, Decimal]]:
    return [(r["billable_metric_id"], r["start_timestamp"], r["value"]) for r in rows]


# -- windows ---------------------------------------------------------------------


def test_day_windows_read_day_rollups_by_period_date(usage: Any) -> None:
    rows = ok(usage, query("day", "2026-04-13T00:00:00Z", "2026-04-16T00:00:00Z", [HOURS]))
    assert rows[0] == {
        "customer_id": ORG_UUID,
        "billable_metric_id": HOURS,
        "billable_metric_name": "Talent Hours",
        "start_timestamp": "2026-04-13T00:00:00Z",
        "end_timestamp": "2026-04-14T00:00:00Z",
        "value": 4,
    }
    assert [(r["start_timestamp"], r["end_timestamp"], r["value"]) for r in rows] == [
        ("2026-04-13T00:00:00Z", "2026-04-14T00:00:00Z", Decimal(4)),
        ("2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", Decimal("6.75")),
        ("2026-04-15T00:00:00Z", "2026-04-16T00:00:00Z", Decimal(0)),
    ]
    assert all(set(r) == ROW_FIELDS for r in rows)


def test_hour_windows_read_hour_rollups_by_event_time(usage: Any) -> None:
    rows = ok(usage, query("hour", "2026-04-14T08:00:00Z", "2026-04-14T17:00:00Z", [HOURS]))
    assert len(rows) == 9
    by_hour = {r["start_timestamp"]: r["value"] for r in rows}
    assert by_hour["2026-04-14T09:00:00Z"] == Decimal("3.75")
    assert by_hour["2026-04-14T15:00:00Z"] == Decimal(3)
    assert sum(by_hour.values()) == Decimal("6.75")
    assert rows[1]["end_timestamp"] == "2026-04-14T10:00:00Z"
    # the event of period_date 2026-04-13 was logged at 08:00 on the 15th
    late = ok(usage, query("hour", "2026-04-15T08:00:00Z", "2026-04-15T09:00:00Z", [HOURS]))
    assert values(late) == [(HOURS, "2026-04-15T08:00:00Z", Decimal(4))]


def test_none_window_is_one_aggregate_by_period_date_whatever_its_bounds(usage: Any) -> None:
    whole = ok(usage, query("none", "2026-04-13T00:00:00Z", "2026-04-16T00:00:00Z", [HOURS, TOKENS]))
    assert [(r["billable_metric_id"], r["start_timestamp"], r["end_timestamp"], r["value"]) for r in whole] == [
        (HOURS, "2026-04-13T00:00:00Z", "2026-04-16T00:00:00Z", Decimal("10.75")),
        (TOKENS, "2026-04-13T00:00:00Z", "2026-04-16T00:00:00Z", Decimal("0.3")),
    ]
    # the same basis for any bounds: one hour more at the start adds the 13th's period_date usage
    day = ok(usage, query("none", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", [HOURS]))
    assert [(r["start_timestamp"], r["end_timestamp"], r["value"]) for r in day] == [
        ("2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", Decimal("6.75"))
    ]
    wider = ok(usage, query("none", "2026-04-13T23:00:00Z", "2026-04-15T00:00:00Z", [HOURS]))
    assert [(r["start_timestamp"], r["end_timestamp"], r["value"]) for r in wider] == [
        ("2026-04-13T00:00:00Z", "2026-04-15T00:00:00Z", Decimal("10.75"))
    ]
    # hour-aligned bounds count whole period_dates too; the row says which days it counted
    hours = ok(usage, query("none", "2026-04-14T09:00:00Z", "2026-04-15T09:00:00Z", [HOURS]))
    assert [(r["start_timestamp"], r["end_timestamp"], r["value"]) for r in hours] == [
        ("2026-04-14T00:00:00Z", "2026-04-16T00:00:00Z", Decimal("6.75"))
    ]


def test_a_late_event_counts_on_its_period_date_in_day_and_none_windows_and_when_received_in_hours(
    usage: Any,
) -> None:
    """The 4 talent hours of period_date 2026-04-13 were sent at 08:00 on the 15th."""
    period = ("2026-04-13T00:00:00Z", "2026-04-14T00:00:00Z")
    assert values(ok(usage, query("day", *period, [HOURS]))) == [(HOURS, "2026-04-13T00:00:00Z", Decimal(4))]
    assert values(ok(usage, query("none", *period, [HOURS]))) == [(HOURS, "2026-04-13T00:00:00Z", Decimal(4))]
    assert sum(r["value"] for r in ok(usage, query("hour", *period, [HOURS]))) == 0
    received = ("2026-04-15T00:00:00Z", "2026-04-16T00:00:00Z")
    hours = ok(usage, query("hour", *received, [HOURS]))
    assert [(r["start_timestamp"], r["value"]) for r in hours if r["value"]] == [("2026-04-15T08:00:00Z", 4)]
    assert values(ok(usage, query("day", *received, [HOURS]))) == [(HOURS, "2026-04-15T00:00:00Z", Decimal(0))]
    assert values(ok(usage, query("none", *received, [HOURS]))) == [(HOURS, "2026-04-15T00:00:00Z", Decimal(0))]


@pytest.mark.parametrize("window", ["hour", "day", "none", "HOUR", "DAY", "NONE", "Hour", "Day", "None"])
def test_every_window_size_spelling_is_accepted(usage: Any, window: str) -> None:
    rows = ok(usage, query(window, "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", [HOURS]))
    expected = {"hour": 24, "day": 1, "none": 1}[window.lower()]
    assert len(rows) == expected
    assert sum(r["value"] for r in rows) == Decimal("6.75")


def test_without_billable_metrics_every_rated_active_meter_gets_rows_with_zeros(usage: Any) -> None:
    rows = ok(usage, query("day", "2026-04-14T00:00:00Z", "2026-04-16T00:00:00Z"))
    assert [r["billable_metric_id"] for r in rows] == [m for m in DEFAULT_METRICS for _ in range(2)]
    got = {(r["billable_metric_name"], r["start_timestamp"][:10]): r["value"] for r in rows}
    assert got == {
        ("Agent Run Seconds", "2026-04-14"): 0,
        ("Agent Run Seconds", "2026-04-15"): 0,
        ("Agent Runs", "2026-04-14"): 7,
        ("Agent Runs", "2026-04-15"): 0,
        ("Agent Tokens", "2026-04-14"): Decimal("0.3"),
        ("Agent Tokens", "2026-04-15"): 0,
        ("Talent Days", "2026-04-14"): 0,
        ("Talent Days", "2026-04-15"): 1,
        ("Talent Hours", "2026-04-14"): Decimal("6.75"),
        ("Talent Hours", "2026-04-15"): 0,
    }
    assert {r["customer_id"] for r in rows} == {ORG_UUID}
    exact = post(usage, query("none", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", [TOKENS]))
    assert '"value":0.3' in exact.body.decode()  # an exact JSON number, not 0.30000000000000004


def test_billable_metrics_filter_keeps_request_order_and_other_offsets_are_utc(usage: Any) -> None:
    rows = ok(usage, query("day", "2026-04-14T02:00:00+02:00", "2026-04-15T00:00:00.000Z", [RUNS, HOURS]))
    assert values(rows) == [
        (RUNS, "2026-04-14T00:00:00Z", Decimal(7)),
        (HOURS, "2026-04-14T00:00:00Z", Decimal("6.75")),
    ]


def test_another_organizations_usage_is_never_counted_and_its_key_sees_its_own(usage: Any) -> None:
    mine = ok(usage, query("none", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", [HOURS], customer_ids=[ORG]))
    assert mine[0]["value"] == Decimal("6.75")
    theirs = ok(usage, query("none", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z"), key=OTHER_ORG_KEY)
    assert [(r["customer_id"], r["billable_metric_id"], r["value"]) for r in theirs] == [(OTHER_UUID, HOURS, 100)]
    assert ok(usage, query("day", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", [HOURS]), key=READ_KEY)


def test_customer_ids_of_another_organization_are_refused_like_unknown_ones(usage: Any) -> None:
    body = query("day", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", [HOURS])
    foreign = refused(usage, {**body, "customer_ids": [ORG, OTHER_ORG]}, 404, "customer_not_found")
    unknown = refused(usage, {**body, "customer_ids": ["ORG-00-000000"]}, 404, "customer_not_found")
    # the same answer whether the organization exists or not: nothing about it leaks
    assert foreign == f"customer_ids[1]: no customer '{OTHER_ORG}' is readable with this API key."
    assert unknown == "customer_ids[0]: no customer 'ORG-00-000000' is readable with this API key."
    foreign_uuid = refused(usage, {**body, "customer_ids": [OTHER_UUID]}, 404, "customer_not_found")
    unknown_uuid = refused(usage, {**body, "customer_ids": [str(uuid.uuid4())]}, 404, "customer_not_found")
    assert foreign_uuid.endswith("is readable with this API key.") and unknown_uuid.endswith(
        "is readable with this API key."
    )
    refused(usage, {**body, "customer_ids": []}, 400, "validation_error")


def test_customer_ids_take_the_organizations_uuid_or_its_org_id_and_rows_carry_the_uuid(usage: Any) -> None:
    assert organization_uuid(ORG) == ORG_UUID and organization_uuid(OTHER_ORG) == OTHER_UUID
    body = query("day", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", [HOURS])
    for customer_ids in ([ORG_UUID], [ORG_UUID.upper()], [ORG], [ORG, ORG_UUID]):
        rows = ok(usage, {**body, "customer_ids": customer_ids})
        assert [(r["customer_id"], r["value"]) for r in rows] == [(ORG_UUID, Decimal("6.75"))], customer_ids
    theirs = ok(usage, {**body, "customer_ids": [OTHER_UUID]}, key=OTHER_ORG_KEY)
    assert [(r["customer_id"], r["value"]) for r in theirs] == [(OTHER_UUID, 100)]
    # one query, however its customer is spelled: a cursor of one spelling serves the other
    long_body = query("day", "2026-03-01T00:00:00Z", "2026-04-20T00:00:00Z", customer_ids=[ORG])
    token = parsed(post(usage, long_body))["next_page"]
    assert token and post(usage, {**long_body, "customer_ids": [ORG_UUID]}, next_page=token).status_code == 200


def test_an_organization_created_by_the_cli_has_a_stable_uuid_it_is_read_by(
    usage: Any, container: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    new_org = "ORG-26-000777"
    assert (
        cli.run(["orgs", "create", "--id", new_org, "--name", "Acme", "--plan", "plan_growth_annual"], container) == 0
    )
    created = container.catalog.get_organization(new_org)
    assert created is not None and created.uuid == organization_uuid(new_org)
    assert f"(Metronome customer id {created.uuid})" in capsys.readouterr().out
    # created again (an update): the same UUID
    assert (
        cli.run(["orgs", "create", "--id", new_org, "--name", "Acme Inc", "--plan", "plan_growth_annual"], container)
        == 0
    )
    assert f"(Metronome customer id {created.uuid})" in capsys.readouterr().out
    again = Organization.model_validate(created.model_dump(exclude={"uuid"}))
    assert again.uuid == created.uuid  # an item stored before organizations had a uuid gets the same one
    reader = catalog_admin.issue_key(container.catalog, new_org, frozenset({"usage:read"}), "reader")
    body = query("none", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", customer_ids=[created.uuid])
    assert ok(usage, body, key=reader.secret) == []  # no service line rates a meter: no rows, but no 404
    refused(usage, {**body, "customer_ids": [ORG_UUID]}, 404, "customer_not_found", key=reader.secret)


# -- group_by ----------------------------------------------------------------------


def test_group_by_splits_day_windows_by_a_metadata_key(usage: Any) -> None:
    body = query("day", "2026-04-13T00:00:00Z", "2026-04-16T00:00:00Z")
    body["billable_metrics"] = [{"id": HOURS, "group_by": {"key": "talent_id"}}]
    rows = ok(usage, body)
    assert [(r["value"], r["groups"]) for r in rows] == [
        (Decimal(4), {"T2": Decimal(4)}),
        (Decimal("6.75"), {"T1": Decimal("5.5"), "T2": Decimal("1.25")}),
        (Decimal(0), {}),
    ]
    body["billable_metrics"] = [{"id": HOURS, "group_by": {"key": "talent_id", "values": ["T1", "T9"]}}]
    rows = ok(usage, body)
    assert [r["groups"] for r in rows] == [
        {"T1": None, "T9": None},
        {"T1": Decimal("5.5"), "T9": None},
        {"T1": None, "T9": None},
    ]


def test_group_by_on_a_midnight_aligned_none_window_and_next_to_plain_metrics(usage: Any) -> None:
    body = query("none", "2026-04-13T00:00:00Z", "2026-04-16T00:00:00Z")
    body["billable_metrics"] = [{"id": TOKENS, "group_by": {"key": "agent_id"}}, {"id": RUNS}]
    rows = ok(usage, body)
    assert rows[0]["value"] == Decimal("0.3")
    assert rows[0]["groups"] == {"a1": Decimal("0.1"), "a2": Decimal("0.2")}
    assert rows[1]["value"] == 7 and "groups" not in rows[1]


def test_group_by_over_hour_windows_reads_the_hour_rollups_of_each_group(usage: Any) -> None:
    hourly = query("hour", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z")
    hourly["billable_metrics"] = [{"id": HOURS, "group_by": {"key": "talent_id"}}]
    rows = ok(usage, hourly)
    assert len(rows) == 24
    assert [r["start_timestamp"] for r in rows if r["groups"]] == ["2026-04-14T09:00:00Z", "2026-04-14T15:00:00Z"]
    for row in rows:  # every event of this day carries a talent_id: the groups add up to the hour's value
        assert sum(row["groups"].values(), Decimal(0)) == row["value"]
    by_talent: dict[str, Decimal] = {}
    for row in rows:
        for talent, quantity in row["groups"].items():
            by_talent[talent] = by_talent.get(talent, Decimal(0)) + quantity
    assert by_talent == {"T1": Decimal("5.5"), "T2": Decimal("1.25")}  # the day window's groups


def test_group_by_limits_are_clear_400s(usage: Any) -> None:
    hourly = query("hour", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z")
    hourly["billable_metrics"] = [{"id": HOURS, "group_by": {"key": "talent_id"}}]
    # a none window is by period_date whatever its bounds, so it groups like a day window
    hour_none = {**hourly, "window_size": "none", "starting_on": "2026-04-14T01:00:00Z"}
    (row,) = ok(usage, hour_none)
    assert row["start_timestamp"] == "2026-04-14T00:00:00Z" and row["end_timestamp"] == "2026-04-15T00:00:00Z"
    assert row["value"] == Decimal("6.75") and row["groups"] == {"T1": Decimal("5.5"), "T2": Decimal("1.25")}
    bad_key = query("day", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z")
    bad_key["billable_metrics"] = [{"id": HOURS, "group_by": {"key": "region"}}]
    message = refused(usage, bad_key, 400, "validation_error")
    assert "region" in message and "talent_id" in message


def test_unknown_or_malformed_billable_metric_ids_are_404_with_a_clear_message(usage: Any) -> None:
    body = query("day", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z", ["00000000-0000-0000-0000-000000000000"])
    assert "00000000-0000-0000-0000-000000000000" in refused(usage, body, 404, "meter_not_found")
    assert "talent.hours" in refused(
        usage, {**body, "billable_metrics": [{"id": "talent.hours"}]}, 404, "meter_not_found"
    )
    refused(usage, {**body, "billable_metrics": [{"id": HOURS}, {"id": HOURS}]}, 400, "validation_error")
    refused(usage, {**body, "billable_metrics": [{"id": HOURS, "extra": 1}]}, 400, "validation_error")


# -- bad periods ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "start", "end", "covered"),
    [
        # Metronome does not ask for aligned bounds: the windows are the UTC days or hours that contain them
        ("day", "2026-04-14T01:00:00Z", "2026-04-15T00:00:00Z", [("2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z")]),
        (
            "day",
            "2026-04-13T10:30:00Z",
            "2026-04-15T00:00:00+02:00",  # 04-14T22:00Z: the 14th is the last day
            [("2026-04-13T00:00:00Z", "2026-04-14T00:00:00Z"), ("2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z")],
        ),
        ("day", "2026-04-14T05:00:00Z", "2026-04-14T05:00:00.5Z", [("2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z")]),
        (
            "hour",
            "2026-04-14T09:30:00Z",
            "2026-04-14T10:00:00.5Z",
            [("2026-04-14T09:00:00Z", "2026-04-14T10:00:00Z"), ("2026-04-14T10:00:00Z", "2026-04-14T11:00:00Z")],
        ),
        ("hour", "2026-04-14T15:59:59Z", "2026-04-14T16:00:00Z", [("2026-04-14T15:00:00Z", "2026-04-14T16:00:00Z")]),
        ("none", "2026-04-14T00:00:00Z", "2026-04-14T05:30:00Z", [("2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z")]),
        ("none", "2026-04-13T23:59:59Z", "2026-04-15T00:00:01Z", [("2026-04-13T00:00:00Z", "2026-04-16T00:00:00Z")]),
    ],
)
def test_bounds_off_the_grid_are_widened_to_the_hours_or_days_that_contain_them(
    usage: Any, window: str, start: str, end: str, covered: list[tuple[str, str]]
) -> None:
    rows = ok(usage, query(window, start, end, [HOURS]))
    assert [(r["start_timestamp"], r["end_timestamp"]) for r in rows] == covered
    # each row counts exactly what the same query with its own grid-aligned bounds counts
    for row in rows:
        (aligned,) = ok(usage, query(window, row["start_timestamp"], row["end_timestamp"], [HOURS]))
        assert aligned["value"] == row["value"]


@pytest.mark.parametrize("window", ["day", "hour", "none"])
def test_ending_before_not_after_starting_on_is_400(usage: Any, window: str) -> None:
    for end in ("2026-04-14T00:00:00Z", "2026-04-13T00:00:00Z"):
        message = refused(usage, query(window, "2026-04-14T00:00:00Z", end), 400, "validation_error")
        assert "after starting_on" in message


def test_malformed_bodies_are_400(usage: Any) -> None:
    good = query("day", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z")
    refused(usage, {**good, "window_size": "week"}, 400, "validation_error")
    refused(usage, {**good, "starting_on": "2026-04-14"}, 400, "validation_error")
    refused(usage, {**good, "starting_on": "2026-04-14T00:00:00"}, 400, "validation_error")
    refused(usage, {**good, "starting_on": "2026-02-30T00:00:00Z"}, 400, "validation_error")
    refused(usage, {k: v for k, v in good.items() if k != "ending_before"}, 400, "validation_error")
    refused(usage, {**good, "unknown": True}, 400, "validation_error")
    refused(usage, [good], 400, "validation_error")
    response = usage.http.post("/v1/usage", headers=auth(), body="{not json")
    assert response.status_code == 400 and json.loads(response.body)["code"] == "invalid_json"


def test_more_than_1000_windows_are_paged_not_refused(usage: Any) -> None:
    # 60 days of hours: 1,440 windows, 15 pages
    rows, tokens = all_pages(usage, query("hour", "2026-02-15T00:00:00Z", "2026-04-16T00:00:00Z", [HOURS]))
    assert len(rows) == 1440 and len(tokens) == 14
    assert rows[0]["start_timestamp"] == "2026-02-15T00:00:00Z" and rows[-1]["end_timestamp"] == "2026-04-16T00:00:00Z"
    assert len({r["start_timestamp"] for r in rows}) == 1440
    assert sum(r["value"] for r in rows) == Decimal("10.75")
    # ten years of days for one metric are 3,652 rows; a longer period is a 400 naming the limit
    first = post(usage, query("day", "2016-04-16T00:00:00Z", "2026-04-16T00:00:00Z", [HOURS]))
    assert first.status_code == 200 and parsed(first)["next_page"]
    message = refused(usage, query("hour", "2016-01-01T00:00:00Z", "2026-04-16T00:00:00Z"), 400, "validation_error")
    assert "3,660 days" in message
    assert ok(usage, query("none", "2016-04-16T00:00:00Z", "2026-04-16T00:00:00Z", [HOURS]))[0]["value"] == Decimal(
        "10.75"
    )


# -- pages -----------------------------------------------------------------------------


def all_pages(client: Any, body: dict[str, Any], key: str = FULL_KEY) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    tokens: list[str] = []
    token: str | None = None
    while True:
        response = post(client, body, key, token)
        assert response.status_code == 200, response.body
        page = parsed(response)
        rows.extend(page["data"])
        token = page["next_page"]
        if token is None:
            return rows, tokens
        assert len(page["data"]) == 100
        tokens.append(token)


def test_next_page_walks_every_row_exactly_once(usage: Any) -> None:
    body = query("day", "2026-03-01T00:00:00Z", "2026-04-20T00:00:00Z")  # 50 days x 5 metrics
    rows, tokens = all_pages(usage, body)
    assert len(tokens) == 2 and len(rows) == 250
    keys = [(r["customer_id"], r["billable_metric_id"], r["start_timestamp"]) for r in rows]
    assert len(set(keys)) == 250
    assert keys == sorted(keys, key=lambda k: (DEFAULT_METRICS.index(k[1]), k[2]))
    totals = {m: sum(r["value"] for r in rows if r["billable_metric_id"] == m) for m in DEFAULT_METRICS}
    assert totals == {RUN_SECONDS: 0, RUNS: 7, TOKENS: Decimal("0.3"), DAYS: 1, HOURS: Decimal("10.75")}
    grouped = query("day", "2026-03-01T00:00:00Z", "2026-04-20T00:00:00Z")
    grouped["billable_metrics"] = [{"id": RUNS}, {"id": HOURS, "group_by": {"key": "talent_id"}}]
    rows, tokens = all_pages(usage, grouped)
    assert len(rows) == 100 and tokens == []
    groups = [r["groups"] for r in rows if r["billable_metric_id"] == HOURS and r["groups"]]
    assert groups == [{"T2": 4}, {"T1": Decimal("5.5"), "T2": Decimal("1.25")}]


def test_a_page_straddling_two_metrics_reads_both_runs(usage: Any) -> None:
    body = query("hour", "2026-04-14T00:00:00Z", "2026-04-17T00:00:00Z", [RUNS, HOURS])  # 72 hours x 2
    rows, tokens = all_pages(usage, body)
    assert len(rows) == 144 and len(tokens) == 1
    assert [(r["billable_metric_id"], r["start_timestamp"], r["value"]) for r in rows if r["value"]] == [
        (RUNS, "2026-04-14T10:00:00Z", 7),
        (HOURS, "2026-04-14T09:00:00Z", Decimal("3.75")),
        (HOURS, "2026-04-14T15:00:00Z", 3),
        (HOURS, "2026-04-15T08:00:00Z", 4),
    ]


def test_a_tampered_or_foreign_next_page_is_refused(usage: Any, container: Container) -> None:
    body = query("day", "2026-03-01T00:00:00Z", "2026-04-20T00:00:00Z")
    token = parsed(post(usage, body))["next_page"]
    assert token
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    refused(usage, body, 400, "invalid_cursor", next_page=tampered)
    refused(usage, body, 400, "invalid_cursor", next_page="not-a-cursor")
    other_body = {**body, "ending_before": "2026-04-21T00:00:00Z"}
    refused(usage, other_body, 400, "invalid_cursor", next_page=token)
    refused(usage, {**body, "billable_metrics": [{"id": HOURS}]}, 400, "invalid_cursor", next_page=token)
    # the same body from another organization: its cursor is bound to the organization that got it
    refused(usage, body, 400, "invalid_cursor", key=OTHER_ORG_KEY, next_page=token)
    # the same query spelled differently is the same query
    same = {**body, "window_size": "DAY", "starting_on": "2026-03-01T00:00:00.000Z"}
    assert post(usage, same, next_page=token).status_code == 200
    second_key = catalog_admin.issue_key(container.catalog, ORG, frozenset({"usage:read"}), "second reader")
    assert post(usage, body, key=second_key.secret, next_page=token).status_code == 200


# -- who may ask ---------------------------------------------------------------------------


def test_a_key_without_usage_read_is_403_and_no_key_is_401(usage: Any, container: Container) -> None:
    writer = catalog_admin.issue_key(container.catalog, ORG, frozenset({METERING_WRITE}), "writer only")
    body = query("day", "2026-04-14T00:00:00Z", "2026-04-15T00:00:00Z")
    assert "usage:read" in refused(usage, body, 403, "insufficient_scope", key=writer.secret)
    refused(usage, body, 401, "unauthorized", key=None)
    refused(usage, body, 401, "unauthorized", key="mk_unknown")
