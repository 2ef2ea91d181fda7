"""Replays are always safe: a retry of a stored event gets the original back, whatever changed since.

The idempotency key is looked up before the catalog is asked: a line paused, a meter archived,
a second subscription rating the meter or another plan refuse NEW events, never a replay of an
event already stored. Same payload: the original record (200 natively, `duplicate` in 002);
another payload: 409; in every case nothing is written. Paths: `POST /v1/metering/events`,
`POST /v1/metering/events/batch` and `POST /v1/meter-usage`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import simplejson

from chalicelib.container import Container
from tests.conftest import auth
from tests.support import Clock, body, pending_records, run_aggregator, stored_events, take_queued_messages

ORG = "ORG-26-090500"
WORKSPACE = "WS-26-000101"
TALENT = "LIN-26-084729"  # talent.hours, talent.days; created 2026-03-28
AGENT = "LIN-26-091100"  # agent.runs, agent.tokens, agent.run_seconds; created 2026-04-01
EVENTS = "/v1/metering/events"
BATCH = "/v1/metering/events/batch"
REPORT = "/v1/meter-usage"
T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)

# Native events over three days, two lines and four meters, each with its key.
NATIVE = [
    {"service_line_id": TALENT, "meter": "talent.hours", "quantity": 8, "period_date": "2026-05-08",
     "idempotency_key": "ts-0508", "metadata": {"talent_id": "SCR-1"}},
    {"service_line_id": TALENT, "meter": "talent.days", "quantity": 1, "period_date": "2026-05-09",
     "idempotency_key": "td-0509"},
    {"service_line_id": AGENT, "meter": "agent.runs", "quantity": 12, "period_date": "2026-05-10",
     "idempotency_key": "runs-0510"},
    {"service_line_id": AGENT, "meter": "agent.tokens", "quantity": 48000, "period_date": "2026-05-09",
     "idempotency_key": "tok-0509", "metadata": {"model": "large"}},
]  # fmt: skip

# 002 reports over three days and four meters (no subscriptionId: the documented body).
REPORTS = [
    ("r-runs", {"value": 3, "meterName": "agent.runs", "timestamp": "2026-05-08T10:00:00Z"}),
    ("r-tokens", {"value": 48000, "meterName": "agent.tokens", "timestamp": "2026-05-09T11:00:00Z",
                  "metadata": {"model": "large"}}),
    ("r-hours", {"value": Decimal("7.5"), "meterName": "talent.hours"}),
    ("r-seconds", {"value": Decimal("340.5"), "meterName": "agent.run_seconds", "timestamp": "2026-05-09"}),
]  # fmt: skip


@pytest.fixture
def clock(container: Container) -> Clock:
    fixed = Clock(T0)
    container.clock = fixed
    return fixed


def post(client: Any, path: str, payload: Any, headers: dict[str, str] | None = None) -> Any:
    return client.http.post(
        path, headers={**auth(), **(headers or {})}, body=simplejson.dumps(payload, use_decimal=True)
    )


def report(client: Any, key: str, fields: dict[str, Any]) -> Any:
    return post(client, REPORT, {"customerId": ORG, **fields}, {"Idempotency-Key": key})


def written(container: Container) -> tuple[Any, Any]:
    """Everything ingest writes: the stored events and the pending batches."""
    events = sorted(stored_events(container), key=lambda e: e["pk"])
    return events, pending_records(container)


def rolled_up(client: Any) -> dict[tuple[str, str], Decimal]:
    """The summary's quantity per (line, meter) with usage: what the rollups hold."""
    response = client.http.get(f"/v1/usage/summary?organization_id={ORG}&from=2026-05-01&to=2026-05-10", headers=auth())
    assert response.status_code == 200, response.body
    return {
        (line["service_line_id"], meter["meter"]): Decimal(meter["quantity"])
        for line in body(response)["data"]["by_service_line"]
        for meter in line["meters"]
    }


# -- the catalog changes -------------------------------------------------------------


def pause_lines(client: Any, container: Container) -> None:
    for line in (TALENT, AGENT):
        response = client.http.post(f"/v1/service-lines/{line}/pause", headers=auth())
        assert response.status_code == 200, response.body


def archive_meters(client: Any, container: Container) -> None:
    for meter_id in ("talent.hours", "talent.days", "agent.runs", "agent.tokens", "agent.run_seconds"):
        meter = container.catalog.get_meter(meter_id)
        assert meter is not None
        container.catalog.put_meter(meter.model_copy(update={"status": "ARCHIVED"}))


def add_second_subscriptions(client: Any, container: Container) -> None:
    """A second active line rating each meter, created through the API."""
    for product_line, rates in (
        ("talent", {"talent.hours": 70, "talent.days": 500}),
        ("agent_gateway", {"agent.runs": 1, "agent.tokens": Decimal("0.0004"), "agent.run_seconds": Decimal("0.01")}),
    ):
        response = post(
            client,
            "/v1/service-lines",
            {"workspace_id": WORKSPACE, "name": f"second {product_line}", "product_line": product_line, "rates": rates},
        )
        assert response.status_code == 201, response.body


def change_plan(client: Any, container: Container) -> None:
    """Down to the starter plan: talent only, no metered usage (the 002 license)."""
    org = container.catalog.get_organization(ORG)
    assert org is not None
    container.catalog.put_organization(org.model_copy(update={"plan_id": "plan_starter_monthly"}))


Change = Callable[[Any, Container], None]
CHANGES: dict[str, Change] = {
    "pause": pause_lines,
    "archive": archive_meters,
    "second-subscription": add_second_subscriptions,
    "plan-change": change_plan,
}


# -- POST /v1/metering/events ------------------------------------------------------------


def replay_single_problems(client: Any, container: Container, originals: list[Any], step: str) -> list[str]:
    problems: list[str] = []
    before = written(container)
    for payload, original in zip(NATIVE, originals, strict=True):
        response = post(client, EVENTS, payload)
        if response.status_code != 200 or response.headers.get("Idempotent-Replayed") != "true":
            problems.append(f"{step} {payload['idempotency_key']}: {response.status_code} {response.body[:160]!r}")
        elif body(response)["data"] != original:
            problems.append(f"{step} {payload['idempotency_key']}: {body(response)['data']} != {original}")
    if written(container) != before:
        problems.append(f"{step}: a replay wrote to the events table")
    if take_queued_messages(container):
        problems.append(f"{step}: a replay queued a message")
    return problems


@pytest.mark.parametrize("change", ["pause", "archive"])
def test_single_replay_after_a_refusing_change_returns_the_original(
    client: Any, container: Container, clock: Clock, change: str
) -> None:
    originals = [body(post(client, EVENTS, payload))["data"] for payload in NATIVE]
    take_queued_messages(container)
    clock.now += timedelta(hours=5)
    CHANGES[change](client, container)
    assert replay_single_problems(client, container, originals, change) == []
    # the change still refuses a new event, and another payload under a stored key is still a conflict
    new = post(client, EVENTS, {**NATIVE[0], "idempotency_key": "brand-new"})
    assert new.status_code == {"pause": 409, "archive": 422}[change], new.body
    assert body(new)["error"]["code"] == {"pause": "service_line_inactive", "archive": "meter_archived"}[change]
    conflict = post(client, EVENTS, {**NATIVE[2], "quantity": 13})
    assert conflict.status_code == 409, conflict.body
    assert body(conflict)["error"]["code"] == "idempotency_conflict"
    assert originals[2]["id"] in body(conflict)["error"]["message"]
    assert len(stored_events(container)) == len(NATIVE)


def test_single_replays_survive_every_change_in_turn(client: Any, container: Container, clock: Clock) -> None:
    originals = [body(post(client, EVENTS, payload))["data"] for payload in NATIVE]
    run_aggregator(client, container)
    totals = rolled_up(client)
    assert len(totals) == len(NATIVE)
    problems: list[str] = []
    for step in ("second-subscription", "plan-change", "pause", "archive"):
        clock.now += timedelta(hours=6)
        CHANGES[step](client, container)
        problems += replay_single_problems(client, container, originals, step)
    assert problems == []
    assert run_aggregator(client, container) == 0
    assert rolled_up(client) == totals


def test_replay_after_the_window_is_refused_by_the_changed_catalog(
    client: Any, container: Container, clock: Clock
) -> None:
    """After 48 hours the key is free again: the retry is a new event, which the paused line refuses."""
    first = post(client, EVENTS, NATIVE[0])
    assert first.status_code == 201
    pause_lines(client, container)
    clock.now += timedelta(hours=47, minutes=59)
    assert post(client, EVENTS, NATIVE[0]).status_code == 200
    clock.now = T0 + timedelta(hours=48, minutes=1)
    late = post(client, EVENTS, NATIVE[0])
    assert late.status_code == 409 and body(late)["error"]["code"] == "service_line_inactive"
    assert len(stored_events(container)) == 1


# -- POST /v1/metering/events/batch --------------------------------------------------------


def replay_batch_problems(client: Any, container: Container, originals: list[Any], step: str) -> list[str]:
    before = written(container)
    response = post(client, BATCH, {"events": NATIVE})
    if response.status_code != 200:
        return [f"{step}: {response.status_code} {response.body[:200]!r}"]
    results = body(response)["data"]
    problems = [
        f"{step} item {r['index']}: {r['status']} {r.get('error')}"
        for r in results
        if r["status"] != "duplicate" or r["data"] != originals[r["index"]]
    ]
    if written(container) != before:
        problems.append(f"{step}: a replay wrote to the events table")
    if take_queued_messages(container):
        problems.append(f"{step}: a replay queued a message")
    return problems


@pytest.mark.parametrize("change", ["pause", "archive"])
def test_batch_replay_after_a_refusing_change_returns_the_originals(
    client: Any, container: Container, clock: Clock, change: str
) -> None:
    first = body(post(client, BATCH, {"events": NATIVE}))["data"]
    assert [r["status"] for r in first] == ["accepted"] * len(NATIVE)
    originals = [r["data"] for r in first]
    take_queued_messages(container)
    clock.now += timedelta(hours=1)
    CHANGES[change](client, container)
    assert replay_batch_problems(client, container, originals, change) == []
    # in one batch: replays answer, a new event is refused, a changed payload conflicts
    mixed = [NATIVE[1], {**NATIVE[0], "idempotency_key": "brand-new"}, {**NATIVE[3], "quantity": 1}, NATIVE[1]]
    results = body(post(client, BATCH, {"events": mixed}))["data"]
    assert [r["status"] for r in results] == ["duplicate", "rejected", "conflict", "duplicate"]
    assert results[0]["data"] == results[3]["data"] == originals[1]
    assert results[1]["error"]["code"] == {"pause": "service_line_inactive", "archive": "meter_archived"}[change]
    assert results[2]["error"]["code"] == "idempotency_conflict"
    assert len(stored_events(container)) == len(NATIVE)


def test_batch_replays_survive_every_change_in_turn(client: Any, container: Container, clock: Clock) -> None:
    originals = [r["data"] for r in body(post(client, BATCH, {"events": NATIVE}))["data"]]
    run_aggregator(client, container)
    totals = rolled_up(client)
    assert len(totals) == len(NATIVE)
    problems: list[str] = []
    for step in ("second-subscription", "plan-change", "pause", "archive"):
        clock.now += timedelta(hours=6)
        CHANGES[step](client, container)
        problems += replay_batch_problems(client, container, originals, step)
    assert problems == []
    assert run_aggregator(client, container) == 0
    assert rolled_up(client) == totals


def test_batch_keyed_by_the_header_replays_after_a_pause(client: Any, container: Container, clock: Clock) -> None:
    unkeyed = [{k: v for k, v in payload.items() if k != "idempotency_key"} for payload in NATIVE]
    first = body(post(client, BATCH, {"events": unkeyed}, {"Idempotency-Key": "nightly-0510"}))["data"]
    assert [r["status"] for r in first] == ["accepted"] * len(NATIVE)
    pause_lines(client, container)
    before = written(container)
    again = body(post(client, BATCH, {"events": unkeyed}, {"Idempotency-Key": "nightly-0510"}))["data"]
    assert [r["status"] for r in again] == ["duplicate"] * len(NATIVE)
    assert [r["data"] for r in again] == [r["data"] for r in first]
    assert written(container) == before


# -- POST /v1/meter-usage (document 002) ---------------------------------------------------


def replay_report_problems(client: Any, container: Container, request_ids: dict[str, str], step: str) -> list[str]:
    problems: list[str] = []
    before = written(container)
    for key, fields in REPORTS:
        response = report(client, key, fields)
        expected = {"status": "duplicate", "idempotencyKey": key, "requestId": request_ids[key]}
        if response.status_code != 200 or json.loads(response.body) != expected:
            problems.append(f"{step} {key}: {response.status_code} {response.body[:160]!r}")
    if written(container) != before:
        problems.append(f"{step}: a replay wrote to the events table")
    if take_queued_messages(container):
        problems.append(f"{step}: a replay queued a message")
    return problems


def first_reports(client: Any) -> dict[str, str]:
    request_ids: dict[str, str] = {}
    for key, fields in REPORTS:
        response = report(client, key, fields)
        assert response.status_code == 202, response.body
        request_ids[key] = body(response)["requestId"]
    return request_ids


NEW_REPORT_REFUSAL = {
    "pause": (409, "SUBSCRIPTION_PAUSED"),
    "archive": (422, "METER_ARCHIVED"),
    "plan-change": (403, "LICENSE.REQUIRED"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_meter_usage_replay_after_a_change_is_a_duplicate(
    client: Any, container: Container, clock: Clock, change: str
) -> None:
    request_ids = first_reports(client)
    events = {e["id"]: e for e in stored_events(container)}
    assert set(events) == set(request_ids.values())
    take_queued_messages(container)
    clock.now += timedelta(hours=3)
    CHANGES[change](client, container)
    assert replay_report_problems(client, container, request_ids, change) == []
    # another value under a stored key is still a conflict
    conflict = report(client, "r-runs", {**REPORTS[0][1], "value": 4})
    assert conflict.status_code == 409, conflict.body
    assert body(conflict)["code"] == "IDEMPOTENCY_KEY_CONFLICT"
    # a new report meets the changed catalog
    new = report(client, "r-new", REPORTS[0][1])
    if change in NEW_REPORT_REFUSAL:
        status, code = NEW_REPORT_REFUSAL[change]
        assert (new.status_code, body(new)["code"]) == (status, code), new.body
        assert len(stored_events(container)) == len(REPORTS)
    else:  # a second subscription: the documented body still works, on the oldest subscription
        assert new.status_code == 202, new.body
        stored = {e["id"]: e for e in stored_events(container)}
        assert stored[body(new)["requestId"]]["service_line_id"] == AGENT


def test_meter_usage_replay_after_the_default_subscription_moved(
    client: Any, container: Container, clock: Clock
) -> None:
    """A report went to the only active subscription; an older one resumed since and is now the default.
    The replay is still a duplicate of the event on the first subscription."""
    pause = client.http.post(f"/v1/service-lines/{TALENT}/pause", headers=auth())
    assert pause.status_code == 200
    created = post(
        client,
        "/v1/service-lines",
        {"workspace_id": WORKSPACE, "name": "Newer", "product_line": "talent", "rates": {"talent.hours": 80}},
    )
    assert created.status_code == 201, created.body
    newer = body(created)["data"]["id"]
    fields = {"value": 6, "meterName": "talent.hours", "timestamp": "2026-05-09T15:00:00Z"}
    first = report(client, "moved-1", fields)
    assert first.status_code == 202, first.body
    assert client.http.post(f"/v1/service-lines/{TALENT}/resume", headers=auth()).status_code == 200

    clock.now += timedelta(hours=1)
    before = written(container)
    again = report(client, "moved-1", fields)
    assert again.status_code == 200, again.body
    assert body(again) == {"status": "duplicate", "idempotencyKey": "moved-1", "requestId": body(first)["requestId"]}
    assert written(container) == before
    # naming the subscription the event went to is the same report; naming another is a conflict
    assert report(client, "moved-1", {**fields, "subscriptionId": newer}).status_code == 200
    other = report(client, "moved-1", {**fields, "subscriptionId": TALENT})
    assert other.status_code == 409 and body(other)["code"] == "IDEMPOTENCY_KEY_CONFLICT"
    # a new report goes to the default subscription, the older line
    new = report(client, "moved-2", fields)
    assert new.status_code == 202
    lines = {e["id"]: e["service_line_id"] for e in stored_events(container)}
    assert lines == {body(first)["requestId"]: newer, body(new)["requestId"]: TALENT}
