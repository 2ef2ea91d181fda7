"""Corrections over the in-memory stores: voids and adjustments through the real routes and aggregator.

A timesheet of 80 hours that should have been 8 is fixed either by voiding it (and reporting 8) or
by an adjustment of -72 hours; either way the summary ends at the exact total, once, however often
the pipeline's messages are delivered, and both show in the listing (with their links and marks)
and in the CSV export. Voids of max, min, latest and unique_count meters restate those rollups
without the voided events.
"""

from __future__ import annotations

import csv
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import simplejson

from chalicelib import backfill, cli
from chalicelib.container import Container
from chalicelib.domain.aggregation import value
from chalicelib.domain.auth import METERING_ADJUST, METERING_WRITE, USAGE_READ
from chalicelib.domain.models import ServiceLine
from chalicelib.local.runtime import sqs_event
from chalicelib.services import catalog_admin
from chalicelib.storage.memory import MemoryQueue
from tests.conftest import READ_KEY, auth
from tests.support import MEMORY_QUEUE_ARN, Clock, body, memory_messages, run_aggregator, stored_events

ORG = "ORG-26-090500"
TALENT = "LIN-26-084729"  # talent.hours (sum, group_by talent_id), talent.days
AGENT = "LIN-26-091100"
GAUGES = "LIN-26-777001"  # made here: the non-additive meters
T0 = datetime(2026, 5, 14, 15, 30, tzinfo=UTC)
TODAY = T0.date().isoformat()
EVENTS = "/v1/metering/events"
ADJUSTMENTS = "/v1/metering/adjustments"


@pytest.fixture
def clock(container: Container) -> Clock:
    fixed = Clock(T0)
    container.clock = fixed
    return fixed


def post(client: Any, path: str, payload: Any, key: str | None = None, api_key: str | None = None) -> Any:
    headers = auth(api_key) if api_key else auth()
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.http.post(path, headers=headers, body=simplejson.dumps(payload, use_decimal=True))


def ingest(client: Any, quantity: Any, key: str, meter: str = "talent.hours", line: str = TALENT, **extra: Any) -> str:
    payload = {"service_line_id": line, "meter": meter, "quantity": quantity, "period_date": TODAY, **extra}
    response = post(client, EVENTS, payload, key)
    assert response.status_code == 201, response.body
    return str(body(response)["data"]["id"])


def void(client: Any, event_id: str, reason: str = "80 hours entered for 8", key: str | None = None) -> Any:
    return post(client, f"{EVENTS}/{event_id}/void", {"reason": reason}, key)


def summary_meter(client: Any, line: str = TALENT, meter: str = "talent.hours") -> dict[str, Any]:
    response = client.http.get(f"/v1/usage/summary?from={TODAY}&to={TODAY}&service_line_id={line}", headers=auth())
    assert response.status_code == 200, response.body
    (entry,) = body(response)["data"]["by_service_line"]
    found = [m for m in entry["meters"] if m["meter"] == meter]
    assert len(found) == 1, entry
    return {**found[0], "line_restated_at": entry.get("restated_at")}


def listing(client: Any, **params: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in {"from": TODAY, "to": TODAY, "limit": "100", **params}.items())
    response = client.http.get(f"/v1/usage?{query}", headers=auth())
    assert response.status_code == 200, response.body
    return list(body(response)["data"])


def deliver_twice(client: Any, container: Container) -> None:
    """Every waiting message delivered, then the same messages delivered again (SQS redelivery)."""
    assert isinstance(container.queue, MemoryQueue)
    messages = memory_messages(container.queue)
    assert messages
    for _ in range(2):
        result = client.lambda_.invoke("aggregate_usage", sqs_event(messages, MEMORY_QUEUE_ARN, "us-east-1"))
        assert result.payload == {"batchItemFailures": []}
    run_aggregator(client, container)


# -- the issue's cases -------------------------------------------------------------------------------


def test_voided_80_hour_timesheet_leaves_the_summary_exact_once(
    client: Any, container: Container, clock: Clock
) -> None:
    wrong = ingest(client, 80, "ts-wrong", metadata={"talent_id": "SCR-1"})
    ingest(client, 8, "ts-right", metadata={"talent_id": "SCR-1"})
    run_aggregator(client, container)
    before = summary_meter(client)
    assert before["quantity"] == Decimal(88)
    assert "adjusted" not in before and "restated_at" not in before  # never corrected: the shape as before
    assert before["line_restated_at"] is None

    clock.now = T0 + timedelta(hours=1)
    response = void(client, wrong, key="void-1")
    assert response.status_code == 201, response.body
    record = body(response)["data"]
    assert record["kind"] == "void" and record["corrects"] == wrong
    assert record["quantity"] == Decimal(-80) and record["reason"] == "80 hours entered for 8"
    assert record["created_by"].startswith("key_") and record["id"].startswith("VOID-")
    replay = void(client, wrong, key="void-1")
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert body(replay)["data"] == record
    again = void(client, wrong, reason="voided twice by another clerk", key="void-2")  # another key: the same void
    assert again.status_code == 200 and body(again)["data"] == record

    deliver_twice(client, container)
    after = summary_meter(client)
    assert after["quantity"] == Decimal(8)
    assert after["adjusted"] == Decimal(-80)
    assert after["restated_at"] == after["line_restated_at"] == "2026-05-14T16:30:00.000Z"

    rows = {row["id"]: row for row in listing(client, service_line_id=TALENT)}
    assert rows[wrong]["voided_by"] == record["id"] and rows[wrong]["quantity"] == Decimal(80)
    assert "kind" not in rows[wrong]
    assert rows[record["id"]]["kind"] == "void" and rows[record["id"]]["corrects"] == wrong
    assert rows[record["id"]]["metadata"] == {"talent_id": "SCR-1"}
    assert sum(row["quantity"] for row in rows.values()) == Decimal(8)
    standing = listing(client, service_line_id=TALENT, hide_voided="true")
    assert [row["quantity"] for row in standing] == [Decimal(8)]
    # the group rollups follow: talent SCR-1 has 8 hours
    grouped = client.http.get(f"/v1/usage/summary?from={TODAY}&to={TODAY}&group_by=talent_id", headers=auth())
    (talent,) = [m for m in body(grouped)["data"]["by_service_line"][0]["meters"] if m["meter"] == "talent.hours"]
    assert talent["groups"] == [{"value": "SCR-1", "kind": "value", "quantity": Decimal(8)}]


def test_adjustment_of_minus_72_hours_leaves_the_summary_exact_once(
    client: Any, container: Container, clock: Clock
) -> None:
    wrong = ingest(client, 80, "ts-80")
    run_aggregator(client, container)
    adjustment = {
        "service_line_id": TALENT,
        "meter": "talent.hours",
        "period_date": TODAY,
        "quantity": -72,
        "reason": "timesheet said 80, the talent worked 8",
        "corrects": wrong,
    }
    response = post(client, ADJUSTMENTS, adjustment, "adj-72")
    assert response.status_code == 201, response.body
    record = body(response)["data"]
    assert (record["kind"], record["quantity"], record["corrects"]) == ("adjustment", Decimal(-72), wrong)
    replay = post(client, ADJUSTMENTS, adjustment, "adj-72")
    assert replay.status_code == 200 and body(replay)["data"] == record
    conflict = post(client, ADJUSTMENTS, {**adjustment, "quantity": -70}, "adj-72")
    assert conflict.status_code == 409 and body(conflict)["error"]["code"] == "idempotency_conflict"

    deliver_twice(client, container)
    after = summary_meter(client)
    assert after["quantity"] == Decimal(8) and after["adjusted"] == Decimal(-72)
    assert after["restated_at"] is not None
    rows = {row["id"]: row for row in listing(client, service_line_id=TALENT)}
    assert rows[wrong]["adjusted_by"] == [record["id"]] and "voided_by" not in rows[wrong]
    assert rows[record["id"]]["corrects"] == wrong and rows[record["id"]]["kind"] == "adjustment"
    assert rows[record["id"]]["reason"] == "timesheet said 80, the talent worked 8"


def test_adjustments_and_voids_show_in_the_cli_export(
    client: Any, container: Container, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = ingest(client, 80, "ts-a")
    other = ingest(client, 80, "ts-b")
    assert void(client, wrong).status_code == 201
    adjustment = {"service_line_id": TALENT, "meter": "talent.hours", "period_date": TODAY, "quantity": -72}
    response = post(client, ADJUSTMENTS, {**adjustment, "reason": "80 for 8", "corrects": other})
    assert response.status_code == 201, response.body
    monkeypatch.setattr(backfill, "ApiClient", lambda *args, **kwargs: RoutedClient(client))
    exported, standing = tmp_path / "all.csv", tmp_path / "standing.csv"
    window = ["--from", TODAY, "--to", TODAY, "--service-line-id", TALENT, "--api-key", "k"]
    assert cli.run(["export", *window, "--out", str(exported)]) == 0
    assert cli.run(["export", *window, "--out", str(standing), "--hide-voided"]) == 0
    rows = list(csv.DictReader(exported.open(encoding="utf-8")))
    kinds = sorted((row["kind"], row["quantity"], row["corrects"]) for row in rows)
    void_id = next(row["id"] for row in rows if row["kind"] == "void")
    adjustment_id = next(row["id"] for row in rows if row["kind"] == "adjustment")
    assert kinds == [("adjustment", "-72", other), ("usage", "80", ""), ("usage", "80", ""), ("void", "-80", wrong)]
    by_id = {row["id"]: row for row in rows}
    assert by_id[wrong]["voided_by"] == void_id and by_id[other]["adjusted_by"] == adjustment_id
    assert by_id[void_id]["correction_reason"] == "80 hours entered for 8"
    assert by_id[adjustment_id]["created_by"].startswith("key_")
    kept = sorted(row["id"] for row in csv.DictReader(standing.open(encoding="utf-8")))
    assert kept == sorted([other, adjustment_id])


class RoutedClient(backfill.ApiClient):
    """The CLI's HTTP client, sending through chalice.test.Client instead of a socket."""

    def __init__(self, client: Any) -> None:
        super().__init__("http://test", "mk_demo_ORG2609050_full_access_0001", retries=0)
        self.client = client

    def _send(self, method: str, path: str, data: bytes | None) -> Any:
        response = self.client.http.request(method, path, headers=auth(), body=data or b"")
        return response.status_code, _Headers(response.headers), response.body


class _Headers(dict[str, str]):
    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key, default)


# -- rules -------------------------------------------------------------------------------------------


def test_corrections_need_the_adjust_scope(client: Any, container: Container, clock: Clock) -> None:
    event = ingest(client, 5, "ts-scope")
    writer = catalog_admin.issue_key(container.catalog, ORG, frozenset({METERING_WRITE, USAGE_READ}), "w").secret
    adjuster = catalog_admin.issue_key(container.catalog, ORG, frozenset({METERING_ADJUST}), "a").secret
    for key in (READ_KEY, writer):
        refused = post(client, f"{EVENTS}/{event}/void", {"reason": "no"}, api_key=key)
        assert refused.status_code == 403 and body(refused)["error"]["code"] == "insufficient_scope"
    assert post(client, f"{EVENTS}/{event}/void", {"reason": "yes"}, api_key=adjuster).status_code == 201


def test_voiding_a_correction_is_refused_and_a_voided_event_takes_no_adjustment(
    client: Any, container: Container, clock: Clock
) -> None:
    event = ingest(client, 80, "ts-v")
    the_void = body(void(client, event))["data"]["id"]
    adjusted = ingest(client, 10, "ts-w")
    payload = {"service_line_id": TALENT, "meter": "talent.hours", "period_date": TODAY, "quantity": 1}
    adjustment = body(post(client, ADJUSTMENTS, {**payload, "reason": "one more", "corrects": adjusted}))["data"]["id"]
    for record in (the_void, adjustment):
        refused = void(client, record)
        assert refused.status_code == 409, refused.body
        assert body(refused)["error"]["code"] == "correction_not_voidable"
    refused = post(client, ADJUSTMENTS, {**payload, "reason": "too late", "corrects": event})
    assert refused.status_code == 409 and body(refused)["error"]["code"] == "event_voided"
    missing = void(client, "USAGE-26-01JZZZZZZZZZZZZZZZZZZZZZZZ")
    assert missing.status_code == 404 and body(missing)["error"]["field"] == "event_id"
    assert void(client, event, reason="   ").status_code == 400


def test_an_adjustment_reaches_past_the_ingest_bound_within_retention(
    client: Any, container: Container, clock: Clock
) -> None:
    old = (T0.date() - timedelta(days=400)).isoformat()
    late = post(client, EVENTS, {"service_line_id": TALENT, "meter": "talent.hours", "quantity": 3, "period_date": old})
    assert late.status_code == 400  # ingest's bound: 366 days
    payload = {"service_line_id": TALENT, "meter": "talent.hours", "period_date": old, "quantity": 3, "reason": "x"}
    assert post(client, ADJUSTMENTS, payload).status_code == 201
    too_old = {**payload, "period_date": (T0.date() - timedelta(days=3661)).isoformat()}
    refused = post(client, ADJUSTMENTS, too_old)
    assert refused.status_code == 400 and "retention" in body(refused)["error"]["message"]
    run_aggregator(client, container)
    response = client.http.get(f"/v1/usage/summary?from={old}&to={old}&service_line_id={TALENT}", headers=auth())
    (meter,) = body(response)["data"]["by_service_line"][0]["meters"]
    assert (meter["quantity"], meter["adjusted"]) == (Decimal(3), Decimal(3))


def test_quantity_adjustments_take_sum_meters_only(client: Any, container: Container, clock: Clock) -> None:
    gauges_line(container)
    payload = {"service_line_id": GAUGES, "period_date": TODAY, "quantity": 2, "reason": "x"}
    for meter in ("agent.peak_concurrency", "talent.timesheets", "agent.unique_users"):
        refused = post(client, ADJUSTMENTS, {**payload, "meter": meter})
        assert refused.status_code == 422, refused.body
        assert body(refused)["error"]["code"] == "meter_not_adjustable"
    refused = post(client, ADJUSTMENTS, {**payload, "meter": "talent.hours", "quantity": 0})
    assert refused.status_code == 400 and body(refused)["error"]["field"] == "quantity"


def gauges_line(container: Container) -> None:
    container.catalog.put_service_line(
        ServiceLine(
            id=GAUGES,
            organization_id=ORG,
            workspace_id="WS-26-000101",
            name="gauges",
            product_line="agent_gateway",
            rates={
                "agent.peak_concurrency": Decimal(1),
                "agent.unique_users": Decimal(1),
                "talent.timesheets": Decimal(1),
                "talent.hours": Decimal(1),
            },
            created_at=T0 - timedelta(days=30),
        )
    )


def test_voids_restate_max_count_and_unique_count_rollups(client: Any, container: Container, clock: Clock) -> None:
    gauges_line(container)
    peak = ingest(client, 9, "p-9", "agent.peak_concurrency", GAUGES, metadata={"agent_id": "a1"})
    ingest(client, 5, "p-5", "agent.peak_concurrency", GAUGES, metadata={"agent_id": "a1"})
    user = ingest(client, 1, "u-2", "agent.unique_users", GAUGES, metadata={"user_id": "u2", "agent_id": "a1"})
    ingest(client, 1, "u-1", "agent.unique_users", GAUGES, metadata={"user_id": "u1", "agent_id": "a1"})
    sheet = ingest(client, 1, "t-1", "talent.timesheets", GAUGES)
    ingest(client, 1, "t-2", "talent.timesheets", GAUGES)
    run_aggregator(client, container)
    assert summary_meter(client, GAUGES, "agent.peak_concurrency")["quantity"] == Decimal(9)
    assert summary_meter(client, GAUGES, "agent.unique_users")["quantity"] == Decimal(2)
    assert summary_meter(client, GAUGES, "talent.timesheets")["quantity"] == Decimal(2)
    for event in (peak, user, sheet):
        assert void(client, event, reason="sensor glitch").status_code == 201
    deliver_twice(client, container)
    peak_after = summary_meter(client, GAUGES, "agent.peak_concurrency")
    assert (peak_after["quantity"], peak_after["adjusted"]) == (Decimal(5), None)
    assert peak_after["restated_at"] is not None
    assert summary_meter(client, GAUGES, "agent.unique_users")["quantity"] == Decimal(1)
    sheets = summary_meter(client, GAUGES, "talent.timesheets")
    assert (sheets["quantity"], sheets["adjusted"]) == (Decimal(1), Decimal(-1))
    # the hour rollups and the group rollups were restated too
    hours = container.rollups.hour_rollups(ORG, GAUGES, "2026-05-14T00", "2026-05-15T00")
    peak_hours = [r.state for r in hours if r.key.meter == "agent.peak_concurrency"]
    assert [value("max", state) for state in peak_hours] == [Decimal(5)]
    grouped = client.http.get(f"/v1/usage/summary?from={TODAY}&to={TODAY}&group_by=agent_id", headers=auth())
    lines = {line["service_line_id"]: line for line in body(grouped)["data"]["by_service_line"]}
    peak_groups = next(m for m in lines[GAUGES]["meters"] if m["meter"] == "agent.peak_concurrency")["groups"]
    assert peak_groups == [{"value": "a1", "kind": "value", "quantity": Decimal(5)}]


def test_a_void_of_an_event_not_yet_rolled_up_waits_for_it(client: Any, container: Container, clock: Clock) -> None:
    """The voided event's own batch applies its max after the void: the void's restatement waits for it."""
    gauges_line(container)
    assert isinstance(container.queue, MemoryQueue)
    peak = ingest(client, 9, "p-9", "agent.peak_concurrency", GAUGES)
    ingest(client, 4, "p-4", "agent.peak_concurrency", GAUGES)
    event_messages = memory_messages(container.queue)  # not delivered yet
    assert void(client, peak, reason="glitch").status_code == 201
    void_messages = memory_messages(container.queue)
    result = client.lambda_.invoke("aggregate_usage", sqs_event(void_messages, MEMORY_QUEUE_ARN, "us-east-1"))
    assert [f["itemIdentifier"] for f in result.payload["batchItemFailures"]] == [void_messages[0]["MessageId"]]
    for messages in (event_messages, void_messages):
        result = client.lambda_.invoke("aggregate_usage", sqs_event(messages, MEMORY_QUEUE_ARN, "us-east-1"))
        assert result.payload == {"batchItemFailures": []}
    assert summary_meter(client, GAUGES, "agent.peak_concurrency")["quantity"] == Decimal(4)


def test_void_finds_the_event_without_hints_and_with_them(client: Any, container: Container, clock: Clock) -> None:
    event = ingest(client, 2, "ts-h", line=AGENT, meter="agent.runs")
    wrong_line = post(client, f"{EVENTS}/{event}/void", {"reason": "x", "service_line_id": TALENT})
    assert wrong_line.status_code == 404
    hinted = post(client, f"{EVENTS}/{event}/void", {"reason": "x", "service_line_id": AGENT, "period_date": TODAY})
    assert hinted.status_code == 201, hinted.body
    assert len([e for e in stored_events(container) if e.get("kind") == "void"]) == 1


def test_an_event_recorded_days_before_its_period_date_is_found(
    client: Any, container: Container, clock: Clock
) -> None:
    backdated = (T0.date() - timedelta(days=40)).isoformat()
    payload = {"service_line_id": TALENT, "meter": "talent.hours", "quantity": 6, "period_date": backdated}
    event = body(post(client, EVENTS, payload))["data"]["id"]
    response = void(client, event, key=str(uuid.uuid4()))
    assert response.status_code == 201, response.body
    assert body(response)["data"]["corrects"] == event
    assert body(response)["data"]["period_date"] == backdated
