"""The meter API dialect (document 002) over the real app: meter subscriptions and report usage.

Subscriptions are the organization's service lines whose billing model rates the meter;
reported usage lands in the same event store the native API reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import simplejson

from chalicelib.container import Container
from chalicelib.domain.auth import ALL_SCOPES, METER_REPORT, USAGE_READ
from chalicelib.domain.models import ServiceLine
from chalicelib.services import catalog_admin
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY, auth
from tests.support import Clock, body, in_memory_container, run_aggregator

ORG = "ORG-26-090500"
OTHER_ORG = "ORG-26-100200"
WORKSPACE = "WS-26-000101"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
OTHER_ORG_LINE = "LIN-26-100201"
SECOND_TALENT = "LIN-26-300001"
INTELLIGENCE = "LIN-26-300002"
T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
REPORT = "/v1/meter-usage"


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


def get(client: Any, path: str, params: dict[str, Any] | None = None, key: str = FULL_KEY) -> Any:
    url = f"{path}?{urlencode(params)}" if params is not None else path
    return client.http.get(url, headers=auth(key))


def report(
    client: Any,
    payload: dict[str, Any] | str,
    idempotency_key: str | None = None,
    header: str = "Idempotency-Key",
    key: str = FULL_KEY,
) -> Any:
    headers = auth(key)
    if idempotency_key is not None:
        headers[header] = idempotency_key
    raw = payload if isinstance(payload, str) else simplejson.dumps(payload, use_decimal=True)
    return client.http.post(REPORT, headers=headers, body=raw)


def usage_body(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"value": 42, "customerId": ORG, "meterName": "agent.runs"}
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


def meter_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """Check a refusal in document 002's shape: a flat {code, message}, no native envelope."""
    assert response.status_code == status, response.body
    error: dict[str, Any] = body(response)
    assert "error" not in error
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "subscriptions" not in error
    assert "status" not in error
    return error


def meter_uuids(client: Any) -> dict[str, str]:
    response = get(client, "/v1/meters", {"include_archived": "true"})
    assert response.status_code == 200, response.body
    return {m["id"]: m["uuid"] for m in body(response)["data"]}


def listed(client: Any, params: dict[str, Any] | None = None, key: str = FULL_KEY) -> list[dict[str, Any]]:
    """Every event GET /v1/usage lists for the params."""
    found: list[dict[str, Any]] = []
    query = {**(params or {}), "limit": 100}
    while True:
        response = get(client, "/v1/usage", query, key)
        assert response.status_code == 200, response.body
        page = body(response)
        found.extend(page["data"])
        if not page["meta"]["has_more"]:
            return found
        query["cursor"] = page["meta"]["cursor"]


def summary_quantities(client: Any, line_id: str, params: dict[str, str] | None = None) -> dict[str, Decimal]:
    response = get(client, "/v1/usage/summary", {"service_line_id": line_id, **(params or {})})
    assert response.status_code == 200, response.body
    (line,) = body(response)["data"]["by_service_line"]
    return {m["meter"]: Decimal(m["quantity"]) for m in line["meters"]}


def put_line(container: Container, line_id: str, product_line: str, rates: dict[str, str]) -> None:
    container.catalog.put_service_line(
        ServiceLine(
            id=line_id,
            organization_id=ORG,
            workspace_id=WORKSPACE,
            name=f"Line {line_id}",
            product_line=product_line,  # type: ignore[arg-type]
            rates={k: Decimal(v) for k, v in rates.items()},
            created_at=datetime(2026, 4, 1, tzinfo=UTC),
        )
    )


def issue(container: Container, scopes: frozenset[str], organization_id: str = ORG) -> str:
    return catalog_admin.issue_key(container.catalog, organization_id, scopes, "test key").secret


def by_id(client: Any, meter: str, key: str = FULL_KEY) -> Any:
    return get(client, f"/v1/meters/{meter_uuids(client)[meter]}/subscriptions", key=key)


def by_name(client: Any, meter: str, key: str = FULL_KEY) -> Any:
    return get(client, "/v1/meter-subscriptions", {"meterName": meter}, key=key)


# -- listing subscriptions ------------------------------------------------------------


@pytest.mark.parametrize("lookup", [by_id, by_name], ids=["by-id", "by-name"])
def test_subscriptions_of_a_meter_list_the_lines_that_can_report_to_it(client: Any, clock: Clock, lookup: Any) -> None:
    tokens_uuid = meter_uuids(client)["agent.tokens"]
    response = lookup(client, "agent.tokens")
    assert response.status_code == 200, response.body
    data = body(response)
    assert data["meterId"] == tokens_uuid
    assert data["meterName"] == "agent.tokens"
    (subscription,) = data["subscriptions"]
    assert subscription["subscriptionId"] == AGENT
    assert subscription["customerId"] == ORG
    (product,) = subscription["products"]
    assert product["productId"] == "agent_gateway"
    assert product["price"]["meterId"] == tokens_uuid
    assert product["price"]["unitAmount"] == Decimal("0.0005")
    assert product["price"]["currency"] == "USD"


def test_lookup_by_id_and_by_name_agree(client: Any, clock: Clock) -> None:
    for meter in ("talent.hours", "talent.days", "agent.runs", "agent.run_seconds", "ods.cycles"):
        first, second = by_id(client, meter), by_name(client, meter)
        assert first.status_code == second.status_code == 200
        assert body(first) == body(second)


def test_meter_uuid_is_matched_case_insensitively(client: Any, clock: Clock) -> None:
    upper = meter_uuids(client)["talent.hours"].upper()
    response = get(client, f"/v1/meters/{upper}/subscriptions")
    assert response.status_code == 200
    assert [s["subscriptionId"] for s in body(response)["subscriptions"]] == [TALENT]


def test_only_the_organizations_own_lines_are_subscriptions(client: Any, container: Container, clock: Clock) -> None:
    """The other organization also rates talent.hours; its line is never listed to this one."""
    data = body(by_name(client, "talent.hours"))
    assert [s["subscriptionId"] for s in data["subscriptions"]] == [TALENT]
    assert {s["customerId"] for s in data["subscriptions"]} == {ORG}


def test_paused_line_is_excluded_and_returns_when_resumed(client: Any, container: Container, clock: Clock) -> None:
    put_line(container, SECOND_TALENT, "talent", {"talent.hours": "70"})
    assert {s["subscriptionId"] for s in body(by_name(client, "talent.hours"))["subscriptions"]} == {
        TALENT,
        SECOND_TALENT,
    }
    response = client.http.post(f"/v1/service-lines/{TALENT}/pause", headers=auth())
    assert response.status_code == 200, response.body
    for lookup in (by_id, by_name):
        assert [s["subscriptionId"] for s in body(lookup(client, "talent.hours"))["subscriptions"]] == [SECOND_TALENT]
    # talent.days is rated only by the paused line: no subscription left, still a 200
    days = by_name(client, "talent.days")
    assert days.status_code == 200
    assert body(days)["subscriptions"] == []
    response = client.http.post(f"/v1/service-lines/{TALENT}/resume", headers=auth())
    assert response.status_code == 200, response.body
    assert {s["subscriptionId"] for s in body(by_name(client, "talent.hours"))["subscriptions"]} == {
        TALENT,
        SECOND_TALENT,
    }


@pytest.mark.parametrize("lookup", [by_id, by_name], ids=["by-id", "by-name"])
def test_meter_without_subscriptions_gives_an_empty_array(client: Any, clock: Clock, lookup: Any) -> None:
    for meter in ("ods.cycles", "compute.vcpu_hours", "intelligence.queries"):
        response = lookup(client, meter)
        assert response.status_code == 200
        data = body(response)
        assert data["meterName"] == meter
        assert data["subscriptions"] == []


def test_unknown_meter_is_not_found(client: Any, clock: Clock) -> None:
    for path in (
        f"/v1/meters/{uuid.uuid4()}/subscriptions",
        "/v1/meters/not-a-uuid/subscriptions",
        "/v1/meters/talent.hours/subscriptions",
        "/v1/meter-subscriptions?meterName=no.such.meter",
        "/v1/meter-subscriptions?meterName=" + quote("talent.hours' OR '1'='1"),
    ):
        meter_error(client.http.get(path, headers=auth()), 404, "METER_NOT_FOUND")


def test_lookup_by_name_requires_the_name(client: Any, clock: Clock) -> None:
    for path in (
        "/v1/meter-subscriptions",
        "/v1/meter-subscriptions?meterName=",
        "/v1/meter-subscriptions?meterName=%20",
    ):
        meter_error(client.http.get(path, headers=auth()), 400, "METER_IDENTIFIER_REQUIRED")


@pytest.mark.parametrize("lookup", [by_id, by_name], ids=["by-id", "by-name"])
def test_plan_without_metered_usage_needs_a_license(client: Any, clock: Clock, lookup: Any) -> None:
    """The other demo organization is on the starter plan, which lacks the metered_usage feature."""
    meter_error(lookup(client, "talent.hours", key=OTHER_ORG_KEY), 403, "LICENSE.REQUIRED")


@pytest.mark.parametrize("lookup", [by_id, by_name], ids=["by-id", "by-name"])
def test_subscriptions_need_the_meter_report_scope(
    client: Any, container: Container, clock: Clock, lookup: Any
) -> None:
    meter_error(lookup(client, "talent.hours", key=READ_KEY), 403, "INSUFFICIENT_SCOPE")
    everything_else = issue(container, ALL_SCOPES - {METER_REPORT})
    meter_error(lookup(client, "talent.hours", key=everything_else), 403, "INSUFFICIENT_SCOPE")
    only_meter_report = issue(container, frozenset({METER_REPORT}))
    assert lookup(client, "talent.hours", key=only_meter_report).status_code == 200


def test_meter_api_without_a_key_is_unauthorized_in_its_own_shape(client: Any, clock: Clock) -> None:
    response = client.http.get("/v1/meter-subscriptions?meterName=talent.hours")
    assert response.status_code == 401
    error = body(response)
    assert "error" not in error
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)


# -- reporting usage ---------------------------------------------------------------


def test_report_is_queued_with_a_request_id(client: Any, clock: Clock) -> None:
    for n, header in enumerate(
        ("Idempotency-Key", "x-api-idempotency-key", "IDEMPOTENCY-KEY", "X-Api-Idempotency-Key")
    ):
        response = report(client, usage_body(value=n + 1), f"run-{n}", header=header)
        assert response.status_code == 202, (header, response.body)
        data = body(response)
        assert set(data) == {"status", "requestId"}
        assert data["status"] == "queued"
        assert isinstance(data["requestId"], str)
        assert data["requestId"]
        events = listed(client, {"service_line_id": AGENT})
        assert len(events) == n + 1, header
        assert sorted(e["quantity"] for e in events) == list(range(1, n + 2))
        assert {e["meter"] for e in events} == {"agent.runs"}


def test_report_without_an_idempotency_key_is_refused_and_writes_nothing(
    client: Any, container: Container, clock: Clock
) -> None:
    meter_error(report(client, usage_body()), 400, "IDEMPOTENCY_KEY_REQUIRED")
    meter_error(report(client, usage_body(), ""), 400, "IDEMPOTENCY_KEY_REQUIRED")
    assert listed(client) == []
    assert run_aggregator(client, container) == 0


def test_replay_is_a_duplicate_and_is_ingested_once(client: Any, container: Container, clock: Clock) -> None:
    payload = usage_body(value=Decimal("2.5"), meterName="agent.tokens")
    first = report(client, payload, "tokens-1")
    assert first.status_code == 202
    request_id = body(first)["requestId"]
    for header in ("Idempotency-Key", "x-api-idempotency-key", "Idempotency-Key"):
        clock.now += timedelta(minutes=7)
        again = report(client, payload, "tokens-1", header=header)
        assert again.status_code == 200, again.body
        # the replay names the same request as the first answer did
        assert body(again) == {"status": "duplicate", "idempotencyKey": "tokens-1", "requestId": request_id}
    (event,) = listed(client, {"service_line_id": AGENT})
    assert event["quantity"] == Decimal("2.5")
    run_aggregator(client, container)
    assert summary_quantities(client, AGENT) == {"agent.tokens": Decimal("2.5")}


def test_replay_after_midnight_without_a_timestamp_is_still_a_duplicate(
    client: Any, container: Container, clock: Clock
) -> None:
    """Retries are always safe (002): a retry of a report that relied on the default timestamp is a
    duplicate even when the retry arrives after midnight UTC."""
    clock.now = datetime(2026, 5, 10, 23, 59, 50, tzinfo=UTC)
    payload = usage_body(value=5)
    first = report(client, payload, "late-night")
    assert first.status_code == 202
    clock.now = datetime(2026, 5, 11, 0, 0, 20, tzinfo=UTC)
    again = report(client, payload, "late-night")
    assert again.status_code == 200, again.body
    assert body(again) == {"status": "duplicate", "idempotencyKey": "late-night", "requestId": body(first)["requestId"]}
    assert len(listed(client, {"service_line_id": AGENT})) == 1


def test_same_key_with_a_different_value_is_a_conflict_and_writes_nothing(
    client: Any, container: Container, clock: Clock
) -> None:
    assert report(client, usage_body(value=1), "conflict-1").status_code == 202
    meter_error(report(client, usage_body(value=2), "conflict-1"), 409, "IDEMPOTENCY_KEY_CONFLICT")
    meter_error(
        report(client, usage_body(value=1, metadata={"x": "y"}), "conflict-1", header="x-api-idempotency-key"),
        409,
        "IDEMPOTENCY_KEY_CONFLICT",
    )
    (event,) = listed(client)
    assert event["quantity"] == 1
    run_aggregator(client, container)
    assert summary_quantities(client, AGENT) == {"agent.runs": Decimal(1)}


def test_different_keys_are_different_reports(client: Any, clock: Clock) -> None:
    assert report(client, usage_body(value=1), "k-1").status_code == 202
    assert report(client, usage_body(value=1), "k-2").status_code == 202
    assert len(listed(client, {"service_line_id": AGENT})) == 2


def test_report_needs_a_meter_identifier(client: Any, clock: Clock) -> None:
    for changes in ({"meterName": ...}, {"meterName": None}, {"meterName": ""}, {"meterName": ..., "meterId": ""}):
        meter_error(report(client, usage_body(**changes), "no-meter"), 400, "METER_IDENTIFIER_REQUIRED")
    assert listed(client) == []


def test_report_by_meter_id(client: Any, clock: Clock) -> None:
    tokens = meter_uuids(client)["agent.tokens"]
    response = report(client, usage_body(meterName=..., meterId=tokens, value=900), "by-id")
    assert response.status_code == 202, response.body
    (event,) = listed(client)
    assert (event["service_line_id"], event["meter"], event["quantity"]) == (AGENT, "agent.tokens", 900)


def test_report_to_an_unknown_meter_is_not_found(client: Any, clock: Clock) -> None:
    for changes in (
        {"meterName": ..., "meterId": str(uuid.uuid4())},
        {"meterName": ..., "meterId": "not-a-uuid"},
        {"meterName": "no.such.meter"},
    ):
        meter_error(report(client, usage_body(**changes), "unknown-meter"), 404, "METER_NOT_FOUND")
    assert listed(client) == []


def test_archived_meter_is_rejected_even_when_a_line_rates_it(client: Any, container: Container, clock: Clock) -> None:
    put_line(container, INTELLIGENCE, "intelligence", {"intelligence.legacy_reports": "3", "intelligence.queries": "1"})
    legacy_uuid = meter_uuids(client)["intelligence.legacy_reports"]
    for changes in (
        {"meterName": "intelligence.legacy_reports"},
        {"meterName": ..., "meterId": legacy_uuid},
        {"meterName": "intelligence.legacy_reports", "subscriptionId": INTELLIGENCE},
    ):
        response = report(client, usage_body(value=1, **changes), f"legacy-{len(changes)}")
        assert 400 <= response.status_code < 500
        assert response.status_code not in (401, 403, 404, 409)
        error = meter_error(response, response.status_code, "METER_ARCHIVED")
        assert "archived" in error["message"].lower()
    assert listed(client, {"service_line_id": INTELLIGENCE}) == []
    # the same line takes usage for its active meter
    assert report(client, usage_body(value=1, meterName="intelligence.queries"), "queries-1").status_code == 202
    assert [e["meter"] for e in listed(client, {"service_line_id": INTELLIGENCE})] == ["intelligence.queries"]


@pytest.mark.parametrize("customer", [OTHER_ORG, "ORG-26-999999"])
def test_report_for_another_customer_is_refused(client: Any, clock: Clock, customer: str) -> None:
    response = report(client, usage_body(customerId=customer, meterName="talent.hours"), "other-customer")
    assert response.status_code in (403, 404), response.body
    meter_error(response, response.status_code, body(response)["code"])
    assert listed(client) == []
    assert listed(client, key=OTHER_ORG_KEY) == []


def test_report_needs_a_customer_id(client: Any, clock: Clock) -> None:
    for changes in ({"customerId": ""}, {"customerId": ...}, {"customerId": 90500}):
        meter_error(report(client, usage_body(**changes), "no-customer"), 400, "VALIDATION_ERROR")
    assert listed(client) == []


def test_report_into_another_organizations_subscription_is_refused(client: Any, clock: Clock) -> None:
    response = report(
        client, usage_body(meterName="talent.hours", subscriptionId=OTHER_ORG_LINE, value=1), "other-subscription"
    )
    assert response.status_code == 404, response.body
    assert listed(client) == []
    assert listed(client, key=OTHER_ORG_KEY) == []


def test_report_needs_a_license_and_the_meter_report_scope(client: Any, container: Container, clock: Clock) -> None:
    meter_error(
        report(client, usage_body(customerId=OTHER_ORG, meterName="talent.hours"), "lic-1", key=OTHER_ORG_KEY),
        403,
        "LICENSE.REQUIRED",
    )
    meter_error(report(client, usage_body(), "scope-1", key=READ_KEY), 403, "INSUFFICIENT_SCOPE")
    meter_error(
        report(client, usage_body(), "scope-2", key=issue(container, frozenset({USAGE_READ}))),
        403,
        "INSUFFICIENT_SCOPE",
    )
    assert listed(client) == []
    assert listed(client, key=OTHER_ORG_KEY) == []
    assert report(client, usage_body(), "scope-3", key=issue(container, frozenset({METER_REPORT}))).status_code == 202


def test_timestamp_defaults_to_now(client: Any, clock: Clock) -> None:
    clock.now = datetime(2026, 5, 9, 23, 30, tzinfo=UTC)
    assert report(client, usage_body(value=4), "no-ts").status_code == 202
    (event,) = listed(client)
    assert event["period_date"] == "2026-05-09"
    assert datetime.fromisoformat(event["recorded_at"].replace("Z", "+00:00")) == clock.now


def test_timestamp_sets_the_utc_period_date(client: Any, clock: Clock) -> None:
    cases = {
        "2026-05-08T23:30:00Z": "2026-05-08",
        "2026-05-09T01:30:00+02:00": "2026-05-08",
        "2026-05-09T22:30:00-04:00": "2026-05-10",
        "2026-05-10T12:03:00Z": "2026-05-10",
    }
    for n, timestamp in enumerate(cases):
        assert report(client, usage_body(value=n + 1, timestamp=timestamp), f"ts-{n}").status_code == 202
    events = listed(client)
    assert {e["quantity"]: e["period_date"] for e in events} == {n + 1: day for n, day in enumerate(cases.values())}


def test_future_or_malformed_timestamp_is_refused(client: Any, clock: Clock) -> None:
    for timestamp in (
        "2026-05-10T13:00:00Z",
        "2026-05-11T12:00:00Z",
        "2027-01-01T00:00:00Z",
        "2026-05-10T12:00:00+00:00x",
    ):
        error = meter_error(report(client, usage_body(timestamp=timestamp), "future"), 400, "VALIDATION_ERROR")
        assert error.get("field", "timestamp") == "timestamp", timestamp
    assert listed(client) == []


def test_timestamp_without_zone_or_too_old_is_refused(client: Any, clock: Clock) -> None:
    for timestamp in ("2026-05-10T12:00:00", "yesterday", "1715342400", "2025-05-01T00:00:00Z", 1715342400):
        meter_error(report(client, usage_body(timestamp=timestamp), "bad-ts"), 400, "VALIDATION_ERROR")
    assert listed(client) == []


def test_metadata_values_may_be_strings_numbers_and_booleans(client: Any, clock: Clock) -> None:
    metadata = {"agent_id": "agt-7", "model": "m-large", "attempt": 2, "ratio": Decimal("0.25"), "cached": False}
    assert report(client, usage_body(metadata=metadata), "meta-ok").status_code == 202
    (event,) = listed(client)
    assert event["metadata"] == metadata
    assert event["source"] == "meter-api"


def test_metadata_of_other_types_is_refused(client: Any, clock: Clock) -> None:
    for metadata in ({"nested": {"a": 1}}, {"list": [1, 2]}, {"nothing": None}, ["not", "an", "object"], "text"):
        meter_error(report(client, usage_body(metadata=metadata), "meta-bad"), 400, "VALIDATION_ERROR")
    assert listed(client) == []


def test_value_must_be_a_valid_number(client: Any, clock: Clock) -> None:
    for value in ("5", None, True, -1, Decimal("0.0000000001"), Decimal("1E+13"), ...):
        meter_error(report(client, usage_body(value=value), "bad-value"), 400, "VALIDATION_ERROR")
    assert listed(client) == []


def test_unreadable_body_is_refused(client: Any, clock: Clock) -> None:
    for raw in ("", "{", "[]", '{"value": 1, "customerId": "ORG-26-090500", "meterName": "agent.runs",', "NaN"):
        response = report(client, raw, "bad-json")
        error = meter_error(response, 400, body(response)["code"])
        assert error["code"] in ("INVALID_JSON", "VALIDATION_ERROR"), raw
    assert listed(client) == []


def test_unknown_body_field_is_refused(client: Any, clock: Clock) -> None:
    meter_error(report(client, usage_body(quantity=5), "extra-field"), 400, "VALIDATION_ERROR")
    assert listed(client) == []


def test_reported_usage_is_visible_to_the_native_api(client: Any, container: Container, clock: Clock) -> None:
    """The meter API writes the same events and rollups the native API reads."""
    assert report(client, usage_body(value=Decimal("0.1"), meterName="talent.hours"), "hours-1").status_code == 202
    assert report(client, usage_body(value=Decimal("0.2"), meterName="talent.hours"), "hours-2").status_code == 202
    assert (
        report(
            client,
            usage_body(value=12, meterName="agent.runs", timestamp="2026-05-09T08:00:00Z", metadata={"agent_id": "a1"}),
            "runs-1",
        ).status_code
        == 202
    )
    talent = listed(client, {"service_line_id": TALENT, "meter": "talent.hours"})
    assert sorted(e["quantity"] for e in talent) == [Decimal("0.1"), Decimal("0.2")]
    assert {e["source"] for e in talent} == {"meter-api"}
    assert {e["unit"] for e in talent} == {"hours"}
    (runs,) = listed(client, {"service_line_id": AGENT, "from": "2026-05-09", "to": "2026-05-09"})
    assert (runs["meter"], runs["quantity"], runs["source"], runs["metadata"]) == (
        "agent.runs",
        12,
        "meter-api",
        {"agent_id": "a1"},
    )
    # and, once rolled up, in the summary: exact sums and costs
    run_aggregator(client, container)
    assert summary_quantities(client, TALENT) == {"talent.hours": Decimal("0.3")}
    response = get(client, "/v1/usage/summary", {"service_line_id": TALENT})
    assert body(response)["data"]["by_service_line"][0]["cost_estimate"] == Decimal("28.50")
    assert summary_quantities(client, AGENT) == {"agent.runs": Decimal(12)}


def test_documented_body_goes_to_the_oldest_active_subscription(
    client: Any, container: Container, clock: Clock
) -> None:
    """The document's body has no subscriptionId: with several active subscriptions rating the meter,
    the oldest (created_at, then id) takes the report, and it is listed first."""
    put_line(container, SECOND_TALENT, "talent", {"talent.hours": "70"})  # created 2026-04-01, after TALENT
    created = client.http.post(
        "/v1/service-lines",
        headers=auth(),
        body=simplejson.dumps(
            {"workspace_id": WORKSPACE, "name": "Newest", "product_line": "talent", "rates": {"talent.hours": 90}}
        ),
    )
    assert created.status_code == 201, created.body
    newest = body(created)["data"]["id"]
    listing = [s["subscriptionId"] for s in body(by_name(client, "talent.hours"))["subscriptions"]]
    assert listing == [TALENT, SECOND_TALENT, newest]

    for n, day in enumerate(("2026-05-08", "2026-05-09", "2026-05-10")):
        response = report(
            client, usage_body(meterName="talent.hours", value=n + 1, timestamp=f"{day}T09:00:00Z"), f"h-{n}"
        )
        assert response.status_code == 202, response.body
    assert {e["service_line_id"] for e in listed(client)} == {TALENT}

    # the oldest paused: the next oldest takes new reports, and is listed first
    assert client.http.post(f"/v1/service-lines/{TALENT}/pause", headers=auth()).status_code == 200
    assert [s["subscriptionId"] for s in body(by_name(client, "talent.hours"))["subscriptions"]] == [
        SECOND_TALENT,
        newest,
    ]
    assert report(client, usage_body(meterName="talent.hours", value=10), "h-after-pause").status_code == 202
    empty = report(client, usage_body(meterName="talent.hours", value=11, subscriptionId=""), "h-empty-subscription")
    assert empty.status_code == 202, empty.body  # an empty subscriptionId is no subscriptionId
    # subscriptionId (an extension of the document) still picks one explicitly
    chosen = report(client, usage_body(meterName="talent.hours", value=20, subscriptionId=newest), "h-chosen")
    assert chosen.status_code == 202, chosen.body
    by_line = {(e["service_line_id"], e["quantity"]) for e in listed(client, {"meter": "talent.hours"})}
    assert by_line == {(TALENT, 1), (TALENT, 2), (TALENT, 3), (SECOND_TALENT, 10), (SECOND_TALENT, 11), (newest, 20)}


def test_only_paused_subscriptions_rating_the_meter_is_a_409(client: Any, container: Container, clock: Clock) -> None:
    assert client.http.post(f"/v1/service-lines/{TALENT}/pause", headers=auth()).status_code == 200
    error = meter_error(
        report(client, usage_body(meterName="talent.days", value=1), "days-1"), 409, "SUBSCRIPTION_PAUSED"
    )
    assert TALENT in error["message"]
    assert listed(client) == []


def test_report_to_a_paused_subscription_is_refused(client: Any, container: Container, clock: Clock) -> None:
    assert client.http.post(f"/v1/service-lines/{AGENT}/pause", headers=auth()).status_code == 200
    response = report(client, usage_body(), "paused")
    assert 400 <= response.status_code < 500
    assert listed(client) == []
    assert client.http.post(f"/v1/service-lines/{AGENT}/resume", headers=auth()).status_code == 200
    assert report(client, usage_body(), "paused").status_code == 202


def test_meter_id_and_meter_name_of_different_meters_are_refused(client: Any, clock: Clock) -> None:
    uuids = meter_uuids(client)
    error = meter_error(
        report(client, usage_body(meterId=uuids["agent.tokens"], meterName="agent.runs", value=5), "two-meters"),
        400,
        "VALIDATION_ERROR",
    )
    assert error["field"] == "meterName"
    assert "agent.tokens" in error["message"] and "agent.runs" in error["message"]
    assert listed(client) == []
    # both naming the same meter (by id and by name) is one meter
    same = report(client, usage_body(meterId=uuids["agent.runs"], meterName="agent.runs", value=5), "one-meter")
    assert same.status_code == 202, same.body
    (event,) = listed(client)
    assert (event["meter"], event["quantity"]) == ("agent.runs", 5)


def test_two_idempotency_headers_with_different_keys_are_refused(client: Any, clock: Clock) -> None:
    headers = {**auth(), "Idempotency-Key": "key-a", "x-api-idempotency-key": "key-b"}
    response = client.http.post(REPORT, headers=headers, body=simplejson.dumps(usage_body(value=1)))
    error = meter_error(response, 400, "VALIDATION_ERROR")
    assert error["field"] == "x-api-idempotency-key"
    assert listed(client) == []
    # the same key in both is one key: a replay through either header is a duplicate
    both = {**auth(), "Idempotency-Key": "key-a", "x-api-idempotency-key": "key-a"}
    first = client.http.post(REPORT, headers=both, body=simplejson.dumps(usage_body(value=1)))
    assert first.status_code == 202, first.body
    again = report(client, usage_body(value=1), "key-a", header="x-api-idempotency-key")
    assert again.status_code == 200
    assert body(again)["requestId"] == body(first)["requestId"]
    assert len(listed(client)) == 1


def test_date_only_timestamp_is_the_start_of_that_day_in_utc(client: Any, clock: Clock) -> None:
    for n, day in enumerate(("2026-05-08", "2026-05-09", "2026-05-10")):
        response = report(client, usage_body(value=n + 1, timestamp=day, meterName="agent.run_seconds"), f"day-{n}")
        assert response.status_code == 202, response.body
    events = listed(client, {"from": "2026-05-08", "to": "2026-05-10"})
    assert {e["quantity"]: e["period_date"] for e in events} == {1: "2026-05-08", 2: "2026-05-09", 3: "2026-05-10"}
    # the same instant spelled in full is the same report: a duplicate with the first requestId
    first_id = next(e["id"] for e in events if e["quantity"] == 1)
    again = report(
        client, usage_body(value=1, timestamp="2026-05-08T00:00:00Z", meterName="agent.run_seconds"), "day-0"
    )
    assert again.status_code == 200, again.body
    assert body(again)["requestId"] == first_id
