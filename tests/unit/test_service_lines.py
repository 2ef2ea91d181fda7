"""Service lines and plan gating (document 001) over the real app on the in-memory stores: create, list,
read, pause, resume, `403 plan_limit_exceeded`, and the monthly API-call limit (`429 rate_limited`)."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import simplejson

from chalicelib.container import Container
from chalicelib.domain.auth import ALL_SCOPES, CATALOG_READ, USAGE_READ
from chalicelib.domain.models import Organization, Plan, Workspace
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services import catalog_admin, service_lines
from chalicelib.services.rate_limit import ApiCallLimiter
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY, auth
from tests.support import Clock, body

ORG = "ORG-26-090500"
OTHER_ORG = "ORG-26-100200"
WORKSPACE = "WS-26-000101"
OTHER_WORKSPACE = "WS-26-000201"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
OTHER_ORG_LINE = "LIN-26-100201"
RATED_ORG = "ORG-26-777001"
RATED_WORKSPACE = "WS-26-777001"
T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
LINES = "/v1/service-lines"
LINE_ID = re.compile(r"^LIN-\d{2}-\d{6}$")


# -- helpers -----------------------------------------------------------------------


@pytest.fixture
def clock(container: Container) -> Clock:
    fixed = Clock(T0)
    container.clock = fixed
    return fixed


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    """A refusal in the native envelope with its status and code."""
    assert response.status_code == status, response.body
    error: dict[str, Any] = body(response)["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"]
    assert "data" not in body(response)
    return error


def line_body(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "workspace_id": OTHER_WORKSPACE,
        "name": "Design Squad",
        "product_line": "talent",
        "rates": {"talent.hours": Decimal("55")},
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


def create(client: Any, payload: dict[str, Any] | None = None, key: str = OTHER_ORG_KEY) -> Any:
    raw = simplejson.dumps(payload if payload is not None else line_body(), use_decimal=True)
    return client.http.post(LINES, headers=auth(key), body=raw)


def created_id(response: Any) -> str:
    assert response.status_code == 201, response.body
    line_id: str = body(response)["data"]["id"]
    return line_id


def action(client: Any, line_id: str, verb: str, key: str = OTHER_ORG_KEY) -> Any:
    return client.http.post(f"{LINES}/{line_id}/{verb}", headers=auth(key))


def lines_of(client: Any, key: str = OTHER_ORG_KEY, query: str = "") -> list[dict[str, Any]]:
    response = client.http.get(f"{LINES}{query}", headers=auth(key))
    assert response.status_code == 200, response.body
    data: list[dict[str, Any]] = body(response)["data"]
    return data


def active_count(container: Container, organization_id: str = OTHER_ORG) -> int:
    return sum(1 for line in container.catalog.list_service_lines(organization_id) if line.status == "active")


def put_custom_org(container: Container, api_calls_monthly: int | None, base_plan: str = "plan_growth_monthly") -> str:
    """An organization on a copy of a demo plan with its own monthly API-call limit; returns a key."""
    plan = container.catalog.get_plan(base_plan)
    assert plan is not None
    custom: Plan = plan.model_copy(
        update={
            "id": f"plan_test_calls_{api_calls_monthly}",
            "limits": plan.limits.model_copy(update={"api_calls_monthly": api_calls_monthly}),
        }
    )
    container.catalog.put_plan(custom)
    container.catalog.put_organization(
        Organization(id=RATED_ORG, name="Rate Test Co", plan_id=custom.id, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    )
    container.catalog.put_workspace(Workspace(id=RATED_WORKSPACE, organization_id=RATED_ORG, name="Main"))
    return catalog_admin.issue_key(container.catalog, RATED_ORG, ALL_SCOPES, "rate test").secret


class CallCounterWrites:
    """Counts the writes to an organization's monthly API-call counter (the catalog's add_api_calls)."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self._lock = threading.Lock()

    def of(self, organization_id: str) -> int:
        return sum(1 for org in self.writes if org == organization_id)


@pytest.fixture
def counter_writes(container: Container, monkeypatch: pytest.MonkeyPatch) -> CallCounterWrites:
    spy = CallCounterWrites()
    add = container.catalog.add_api_calls

    def counted(organization_id: str, month: str, calls: int) -> int:
        with spy._lock:
            spy.writes.append(organization_id)
        return add(organization_id, month, calls)

    monkeypatch.setattr(container.catalog, "add_api_calls", counted)
    return spy


def call_usage(client: Any, key: str) -> Any:
    return client.http.get("/v1/usage", headers=auth(key))


# -- creating ------------------------------------------------------------------------


def test_create_answers_201_with_the_billing_model(client: Any, container: Container, clock: Clock) -> None:
    payload = line_body(
        workspace_id=WORKSPACE,
        name="Agents - Staging",
        product_line="agent_gateway",
        rates={"agent.tokens": Decimal("0.0004"), "agent.runs": Decimal("0.25")},
    )
    response = create(client, payload, key=FULL_KEY)
    assert response.status_code == 201, response.body
    data = body(response)["data"]
    assert LINE_ID.match(data["id"])
    assert data["id"] not in (TALENT, AGENT)
    assert data["organization_id"] == ORG
    assert data["workspace_id"] == WORKSPACE
    assert data["name"] == "Agents - Staging"
    assert data["product_line"] == "agent_gateway"
    assert data["status"] == "active"
    assert data["currency"] == "USD"
    assert data["billing_model"] == {
        "meters": [
            {"meter": "agent.runs", "unit": "runs", "rate": Decimal("0.25")},
            {"meter": "agent.tokens", "unit": "tokens", "rate": Decimal("0.0004")},
        ]
    }
    assert datetime.fromisoformat(data["created_at"].replace("Z", "+00:00")) == T0
    # readable, listed, and able to take usage for its meters
    one = client.http.get(f"{LINES}/{data['id']}", headers=auth(FULL_KEY))
    assert one.status_code == 200
    assert body(one)["data"] == data
    assert data in lines_of(client, key=FULL_KEY)
    event = {"service_line_id": data["id"], "meter": "agent.tokens", "quantity": 100}
    assert client.http.post("/v1/metering/events", headers=auth(FULL_KEY), body=json.dumps(event)).status_code == 201
    event["meter"] = "talent.hours"
    assert client.http.post("/v1/metering/events", headers=auth(FULL_KEY), body=json.dumps(event)).status_code == 422


def test_create_keeps_the_currency_given(client: Any, clock: Clock) -> None:
    response = create(client, line_body(currency="EUR", rates={"talent.hours": Decimal("49.90")}))
    assert response.status_code == 201
    data = body(response)["data"]
    assert data["currency"] == "EUR"
    assert data["billing_model"]["meters"] == [{"meter": "talent.hours", "unit": "hours", "rate": Decimal("49.90")}]


def test_create_needs_the_service_lines_write_scope(client: Any, container: Container, clock: Clock) -> None:
    error_of(create(client, line_body(workspace_id=WORKSPACE), key=READ_KEY), 403, "insufficient_scope")
    assert [line["id"] for line in lines_of(client, key=READ_KEY)] == [TALENT, AGENT]
    for verb in ("pause", "resume"):
        error_of(action(client, TALENT, verb, key=READ_KEY), 403, "insufficient_scope")
    assert container.catalog.get_service_line(ORG, TALENT) is not None
    line = container.catalog.get_service_line(ORG, TALENT)
    assert line is not None
    assert line.status == "active"


def test_product_line_outside_the_plan_is_refused(client: Any, container: Container, clock: Clock) -> None:
    """The starter plan allows only the talent product line."""
    for product_line, meter in (("agent_gateway", "agent.runs"), ("managed_services", "talent.hours")):
        payload = line_body(product_line=product_line, rates={meter: Decimal("1")})
        error = error_of(create(client, payload), 403, "plan_limit_exceeded")
        assert error["field"] == "product_line"
    assert [line["id"] for line in lines_of(client)] == [OTHER_ORG_LINE]


def test_active_service_lines_are_limited_by_the_plan(client: Any, container: Container, clock: Clock) -> None:
    """Starter allows 3 active lines; the demo starter organization has 1."""
    first = created_id(create(client, line_body(name="Second")))
    second = created_id(create(client, line_body(name="Third")))
    error_of(create(client, line_body(name="Fourth")), 403, "plan_limit_exceeded")
    assert sorted(line["id"] for line in lines_of(client)) == sorted([OTHER_ORG_LINE, first, second])
    assert active_count(container) == 3


def test_pausing_frees_a_slot_and_resuming_past_the_limit_is_refused(
    client: Any, container: Container, clock: Clock
) -> None:
    first = created_id(create(client, line_body(name="Second")))
    created_id(create(client, line_body(name="Third")))
    paused = action(client, first, "pause")
    assert paused.status_code == 200
    assert body(paused)["data"]["status"] == "paused"
    replacement = created_id(create(client, line_body(name="Replacement")))
    error_of(action(client, first, "resume"), 403, "plan_limit_exceeded")
    assert body(client.http.get(f"{LINES}/{first}", headers=auth(OTHER_ORG_KEY)))["data"]["status"] == "paused"
    assert active_count(container) == 3
    # freeing another slot lets it come back
    assert action(client, replacement, "pause").status_code == 200
    resumed = action(client, first, "resume")
    assert resumed.status_code == 200
    assert body(resumed)["data"]["status"] == "active"
    assert active_count(container) == 3


def test_pause_and_resume_are_idempotent(client: Any, container: Container, clock: Clock) -> None:
    second = created_id(create(client, line_body(name="Second")))
    created_id(create(client, line_body(name="Third")))
    for _ in range(3):
        response = action(client, second, "pause")
        assert response.status_code == 200
        assert body(response)["data"]["status"] == "paused"
    # pausing three times freed exactly one slot
    created_id(create(client, line_body(name="Fourth")))
    error_of(create(client, line_body(name="Fifth")), 403, "plan_limit_exceeded")
    for _ in range(3):
        response = action(client, OTHER_ORG_LINE, "resume")
        assert response.status_code == 200
        assert body(response)["data"]["status"] == "active"
    assert active_count(container) == 3


def test_resume_within_the_limit(client: Any, container: Container, clock: Clock) -> None:
    assert action(client, OTHER_ORG_LINE, "pause").status_code == 200
    resumed = action(client, OTHER_ORG_LINE, "resume")
    assert resumed.status_code == 200
    assert body(resumed)["data"]["status"] == "active"
    created_id(create(client, line_body(name="Second")))
    created_id(create(client, line_body(name="Third")))
    error_of(create(client, line_body(name="Fourth")), 403, "plan_limit_exceeded")


def test_paused_line_takes_no_usage_until_resumed(client: Any, container: Container, clock: Clock) -> None:
    event = json.dumps({"service_line_id": TALENT, "meter": "talent.hours", "quantity": 1})
    assert action(client, TALENT, "pause", key=FULL_KEY).status_code == 200
    refused = client.http.post("/v1/metering/events", headers=auth(FULL_KEY), body=event)
    assert 400 <= refused.status_code < 500
    assert action(client, TALENT, "resume", key=FULL_KEY).status_code == 200
    assert client.http.post("/v1/metering/events", headers=auth(FULL_KEY), body=event).status_code == 201


def test_unlimited_plan_creates_many_lines(client: Any, container: Container, clock: Clock) -> None:
    for n in range(6):
        created_id(create(client, line_body(workspace_id=WORKSPACE, name=f"Squad {n}"), key=FULL_KEY))
    assert len(lines_of(client, key=FULL_KEY)) == 8


# -- reading ---------------------------------------------------------------------------


def test_list_and_get_show_the_organizations_lines(client: Any, container: Container, clock: Clock) -> None:
    listed = lines_of(client, key=FULL_KEY)
    assert [line["id"] for line in listed] == [TALENT, AGENT]
    talent = listed[0]
    assert talent["name"] == "Backend Engineering - Q2 2026"
    assert talent["billing_model"]["meters"] == [
        {"meter": "talent.days", "unit": "days", "rate": Decimal("760")},
        {"meter": "talent.hours", "unit": "hours", "rate": Decimal("95")},
    ]
    one = client.http.get(f"{LINES}/{AGENT}", headers=auth(READ_KEY))
    assert one.status_code == 200
    assert body(one)["data"] == listed[1]
    assert [line["id"] for line in lines_of(client)] == [OTHER_ORG_LINE]


def test_list_filters_by_status_and_workspace(client: Any, container: Container, clock: Clock) -> None:
    container.catalog.put_workspace(Workspace(id="WS-26-000102", organization_id=ORG, name="Data"))
    new = created_id(create(client, line_body(workspace_id="WS-26-000102", name="Data"), key=FULL_KEY))
    assert action(client, AGENT, "pause", key=FULL_KEY).status_code == 200
    ids = [line["id"] for line in lines_of(client, key=FULL_KEY, query="?status=paused")]
    assert ids == [AGENT]
    ids = [line["id"] for line in lines_of(client, key=FULL_KEY, query="?status=active")]
    assert sorted(ids) == sorted([TALENT, new])
    assert [line["id"] for line in lines_of(client, key=FULL_KEY, query="?workspace_id=WS-26-000102")] == [new]
    response = client.http.get(f"{LINES}?status=archived", headers=auth(FULL_KEY))
    error_of(response, 400, "validation_error")


def test_another_organizations_line_is_not_found(client: Any, container: Container, clock: Clock) -> None:
    for line_id in (OTHER_ORG_LINE, "LIN-26-999999"):
        error_of(client.http.get(f"{LINES}/{line_id}", headers=auth(FULL_KEY)), 404, "service_line_not_found")
        for verb in ("pause", "resume"):
            error_of(action(client, line_id, verb, key=FULL_KEY), 404, "service_line_not_found")
        assert line_id not in [line["id"] for line in lines_of(client, key=FULL_KEY)]
    # the other organization's line is untouched
    mine = container.catalog.get_service_line(OTHER_ORG, OTHER_ORG_LINE)
    assert mine is not None
    assert mine.status == "active"
    assert active_count(container) == 1


# -- validation -------------------------------------------------------------------------


RATE_REFUSALS: list[tuple[dict[str, Any], int, str]] = [
    ({"agent.runs": Decimal("1")}, 422, "meter_not_permitted"),
    ({"talent.hours": Decimal("1"), "compute.vcpu_hours": Decimal("1")}, 422, "meter_not_permitted"),
    ({"no.such.meter": Decimal("1")}, 404, "meter_not_found"),
    ({}, 400, "validation_error"),
    ({"talent.hours": Decimal("-1")}, 400, "validation_error"),
    ({"talent.hours": "55"}, 400, "validation_error"),
    ({"talent.hours": Decimal("0.0000000001")}, 400, "validation_error"),
]


def test_rates_must_be_meters_of_the_product_line(client: Any, container: Container, clock: Clock) -> None:
    for rates, status, code in RATE_REFUSALS:
        error = error_of(create(client, line_body(rates=rates)), status, code)
        if rates and status != 400:
            assert error["field"].startswith("rates."), rates
    assert [line["id"] for line in lines_of(client)] == [OTHER_ORG_LINE]
    assert active_count(container) == 1


def test_archived_meter_cannot_be_rated(client: Any, container: Container, clock: Clock) -> None:
    payload = line_body(
        workspace_id=WORKSPACE, product_line="intelligence", rates={"intelligence.legacy_reports": Decimal("2")}
    )
    error_of(create(client, payload, key=FULL_KEY), 422, "meter_archived")
    assert len(lines_of(client, key=FULL_KEY)) == 2


def test_unknown_or_foreign_workspace_is_not_found(client: Any, container: Container, clock: Clock) -> None:
    for workspace in ("WS-26-999999", WORKSPACE):
        error = error_of(create(client, line_body(workspace_id=workspace)), 404, "not_found")
        assert error["field"] == "workspace_id"
    assert [line["id"] for line in lines_of(client)] == [OTHER_ORG_LINE]
    assert [line["id"] for line in lines_of(client, key=FULL_KEY)] == [TALENT, AGENT]
    assert active_count(container) == 1


INVALID_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"product_line": "quantum"}, "product_line"),
    ({"name": ""}, "name"),
    ({"name": ...}, "name"),
    ({"workspace_id": ...}, "workspace_id"),
    ({"currency": "usd"}, "currency"),
    ({"organization_id": ORG}, "organization_id"),
    ({"status": "paused"}, "status"),
]


def test_invalid_body_is_refused_naming_the_field(client: Any, container: Container, clock: Clock) -> None:
    for changes, field in INVALID_BODIES:
        error = error_of(create(client, line_body(**changes)), 400, "validation_error")
        assert error["field"] == field, changes
    assert active_count(container) == 1


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_creates_at_the_limit_never_exceed_it(container: Container, clock: Clock) -> None:
    """Twelve racing creates with two free slots: exactly two lines are made."""
    threads = 12
    barrier = threading.Barrier(threads)

    def attempt(n: int) -> str:
        barrier.wait()
        try:
            line, _ = service_lines.create_line(
                container.catalog,
                OTHER_ORG,
                OTHER_WORKSPACE,
                f"Racer {n}",
                "talent",
                {"talent.hours": Decimal("50")},
                "USD",
                T0,
            )
            return line.id
        except MeteringError as error:
            assert error.error_code is ErrorCode.PLAN_LIMIT_EXCEEDED
            return "refused"

    with ThreadPoolExecutor(max_workers=threads) as pool:
        outcomes = list(pool.map(attempt, range(threads)))
    made = [o for o in outcomes if o != "refused"]
    assert len(made) == 2
    assert outcomes.count("refused") == threads - 2
    stored = container.catalog.list_service_lines(OTHER_ORG)
    assert sorted(line.id for line in stored) == sorted([OTHER_ORG_LINE, *made])
    assert active_count(container) == 3
    # and the counter agrees with the lines: one pause frees exactly one slot
    service_lines.set_status(container.catalog, OTHER_ORG, made[0], "paused")
    service_lines.create_line(
        container.catalog, OTHER_ORG, OTHER_WORKSPACE, "After", "talent", {"talent.hours": Decimal(1)}, "USD", T0
    )
    with pytest.raises(MeteringError) as refused:
        service_lines.create_line(
            container.catalog, OTHER_ORG, OTHER_WORKSPACE, "Over", "talent", {"talent.hours": Decimal(1)}, "USD", T0
        )
    assert refused.value.error_code is ErrorCode.PLAN_LIMIT_EXCEEDED


def test_concurrent_resumes_at_the_limit_never_exceed_it(container: Container, clock: Clock) -> None:
    """Three paused lines race to resume into the one free slot: exactly one wins."""
    paused: list[str] = []
    for n in range(2):
        line, _ = service_lines.create_line(
            container.catalog, OTHER_ORG, OTHER_WORKSPACE, f"L{n}", "talent", {"talent.hours": Decimal(1)}, "USD", T0
        )
        paused.append(line.id)
    for line_id in [*paused, OTHER_ORG_LINE]:
        service_lines.set_status(container.catalog, OTHER_ORG, line_id, "paused")
    service_lines.create_line(
        container.catalog, OTHER_ORG, OTHER_WORKSPACE, "Keep", "talent", {"talent.hours": Decimal(1)}, "USD", T0
    )
    service_lines.create_line(
        container.catalog, OTHER_ORG, OTHER_WORKSPACE, "Keep2", "talent", {"talent.hours": Decimal(1)}, "USD", T0
    )
    assert active_count(container) == 2
    contenders = [*paused, OTHER_ORG_LINE]
    barrier = threading.Barrier(len(contenders))

    def attempt(line_id: str) -> bool:
        barrier.wait()
        try:
            service_lines.set_status(container.catalog, OTHER_ORG, line_id, "active")
            return True
        except MeteringError as error:
            assert error.error_code is ErrorCode.PLAN_LIMIT_EXCEEDED
            return False

    with ThreadPoolExecutor(max_workers=len(contenders)) as pool:
        results = list(pool.map(attempt, contenders))
    assert results.count(True) == 1
    assert active_count(container) == 3


def test_concurrent_pauses_of_one_line_free_exactly_one_slot(container: Container, clock: Clock) -> None:
    for n in range(2):
        service_lines.create_line(
            container.catalog, OTHER_ORG, OTHER_WORKSPACE, f"L{n}", "talent", {"talent.hours": Decimal(1)}, "USD", T0
        )
    threads = 8
    barrier = threading.Barrier(threads)

    def pause(_: int) -> str:
        barrier.wait()
        return service_lines.set_status(container.catalog, OTHER_ORG, OTHER_ORG_LINE, "paused").status

    with ThreadPoolExecutor(max_workers=threads) as pool:
        assert set(pool.map(pause, range(threads))) == {"paused"}
    assert active_count(container) == 2
    service_lines.create_line(
        container.catalog, OTHER_ORG, OTHER_WORKSPACE, "One", "talent", {"talent.hours": Decimal(1)}, "USD", T0
    )
    with pytest.raises(MeteringError) as refused:
        service_lines.create_line(
            container.catalog, OTHER_ORG, OTHER_WORKSPACE, "Two", "talent", {"talent.hours": Decimal(1)}, "USD", T0
        )
    assert refused.value.error_code is ErrorCode.PLAN_LIMIT_EXCEEDED


# -- the monthly API-call limit -----------------------------------------------------------


def test_calls_past_the_monthly_limit_are_rate_limited(client: Any, container: Container, clock: Clock) -> None:
    key = put_custom_org(container, 30)
    first = client.http.get("/v1/meter-subscriptions?meterName=talent.hours", headers=auth(key))
    assert first.status_code == 200, first.body
    for n in range(2, 31):
        response = call_usage(client, key)
        assert response.status_code == 200, f"call {n}: {response.body!r}"
    refused = call_usage(client, key)
    error = error_of(refused, 429, "rate_limited")
    assert "30" in error["message"]
    # in document 002's own shape on a 002 route
    meter_route = client.http.get("/v1/meter-subscriptions?meterName=talent.hours", headers=auth(key))
    assert meter_route.status_code == 429
    flat = body(meter_route)
    assert "error" not in flat
    assert flat["code"] == "RATE_LIMITED"
    assert flat["message"]
    assert "subscriptions" not in flat
    # every route is counted, writes included: nothing is written once limited
    event = simplejson.dumps({"service_line_id": "LIN-26-777001", "meter": "talent.hours", "quantity": 1})
    error_of(client.http.post("/v1/metering/events", headers=auth(key), body=event), 429, "rate_limited")
    # other organizations are not affected
    assert call_usage(client, FULL_KEY).status_code == 200
    assert call_usage(client, OTHER_ORG_KEY).status_code == 200


def test_refused_calls_stay_refused_for_the_rest_of_the_month(client: Any, container: Container, clock: Clock) -> None:
    key = put_custom_org(container, 30)
    statuses = []
    for _ in range(40):
        statuses.append(call_usage(client, key).status_code)
        clock.now += timedelta(hours=6)  # 40 calls over 10 days, all in May
    assert clock.now.month == 5
    assert statuses == [200] * 30 + [429] * 10


def test_a_new_month_allows_calls_again(client: Any, container: Container, clock: Clock) -> None:
    key = put_custom_org(container, 30)
    clock.now = datetime(2026, 5, 31, 23, 59, 0, tzinfo=UTC)
    for _ in range(30):
        assert call_usage(client, key).status_code == 200
    error_of(call_usage(client, key), 429, "rate_limited")
    clock.now = datetime(2026, 6, 1, 0, 0, 1, tzinfo=UTC)
    statuses = [call_usage(client, key).status_code for _ in range(30)]
    assert statuses == [200] * 30
    error_of(call_usage(client, key), 429, "rate_limited")


def test_a_month_is_a_utc_calendar_month(client: Any, container: Container, clock: Clock) -> None:
    from datetime import timezone

    key = put_custom_org(container, 30)
    clock.now = datetime(2026, 5, 31, 20, 0, tzinfo=UTC)
    for _ in range(30):
        assert call_usage(client, key).status_code == 200
    # 01:00 on June 1st at UTC+3 is still May in UTC
    clock.now = datetime(2026, 6, 1, 1, 0, tzinfo=timezone(timedelta(hours=3)))
    error_of(call_usage(client, key), 429, "rate_limited")


def test_unlimited_plan_is_never_rate_limited(
    client: Any, container: Container, clock: Clock, counter_writes: CallCounterWrites
) -> None:
    """The enterprise plan has api_calls_monthly: null (no cap)."""
    requests = 80
    for n in range(requests):
        assert call_usage(client, FULL_KEY if n % 2 else READ_KEY).status_code == 200
    assert counter_writes.of(ORG) <= requests // 10


def test_call_counter_is_not_written_on_every_request(
    client: Any, container: Container, clock: Clock, counter_writes: CallCounterWrites
) -> None:
    key = put_custom_org(container, 100_000)
    requests = 100
    for _ in range(requests):
        assert call_usage(client, key).status_code == 200
    writes = counter_writes.of(RATED_ORG)
    assert 1 <= writes <= requests // 10
    # what was written is a true count, lagging the calls made by less than one flush
    stored = container.catalog.get_api_calls(RATED_ORG, "2026-05")
    assert requests - 25 < stored <= requests


def test_a_cold_start_does_not_reset_the_months_count(client: Any, container: Container, clock: Clock) -> None:
    """A new process (another Lambda container) starts from the stored count: it may overshoot the
    limit by at most the calls the previous one had not flushed (fewer than 25), never by a month."""
    key = put_custom_org(container, 30)
    for _ in range(30):
        assert call_usage(client, key).status_code == 200
    error_of(call_usage(client, key), 429, "rate_limited")
    container.limiter = ApiCallLimiter(container.catalog)
    allowed = 0
    for _ in range(30):
        if call_usage(client, key).status_code != 200:
            break
        allowed += 1
    assert allowed < 25
    error_of(call_usage(client, key), 429, "rate_limited")


def test_rate_limit_applies_to_every_key_of_the_organization(client: Any, container: Container, clock: Clock) -> None:
    key = put_custom_org(container, 30)
    reader = catalog_admin.issue_key(container.catalog, RATED_ORG, frozenset({USAGE_READ, CATALOG_READ}), "r").secret
    for n in range(30):
        assert call_usage(client, key if n % 2 else reader).status_code == 200
    error_of(call_usage(client, reader), 429, "rate_limited")
    error_of(call_usage(client, key), 429, "rate_limited")


def test_rate_limited_plan_still_gates_service_lines(client: Any, container: Container, clock: Clock) -> None:
    """The custom plan keeps the base plan's other limits and product lines."""
    key = put_custom_org(container, 30, base_plan="plan_starter_monthly")
    payload = line_body(workspace_id=RATED_WORKSPACE)
    for n in range(3):
        created_id(create(client, {**payload, "name": f"Line {n}"}, key=key))
    error_of(create(client, payload, key=key), 403, "plan_limit_exceeded")
    error_of(
        create(client, {**payload, "product_line": "ods", "rates": {"ods.cycles": Decimal(1)}}, key=key),
        403,
        "plan_limit_exceeded",
    )


def test_execution_models_are_gated_by_the_plan(client: Any, container: Container, clock: Clock) -> None:
    response = create(client, line_body(execution_model="dedicated"))  # the starter plan: on_demand only
    assert response.status_code == 403, response.body
    error = body(response)["error"]
    assert (error["code"], error["field"]) == ("plan_limit_exceeded", "execution_model")
    assert active_count(container) == 1
    line = body(create(client, line_body()))["data"]
    assert line["execution_model"] == "on_demand"
    for model in ("on_demand", "dedicated", "managed", "autonomous"):  # the enterprise plan allows them all
        payload = line_body(workspace_id=WORKSPACE, execution_model=model)
        created = create(client, payload, key=FULL_KEY)
        assert created.status_code == 201, created.body
        assert body(created)["data"]["execution_model"] == model
    assert create(client, line_body(execution_model="robotic"), key=FULL_KEY).status_code == 400
    plans = {p["id"]: p for p in body(client.http.get("/v1/plans", headers=auth(FULL_KEY)))["data"]}
    assert plans["plan_starter_monthly"]["allowed_execution_models"] == ["on_demand"]
    assert plans["plan_enterprise_annual"]["allowed_execution_models"] == [
        "on_demand",
        "dedicated",
        "managed",
        "autonomous",
    ]
