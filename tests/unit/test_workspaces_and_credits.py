"""Document 001's other limits: workspaces per plan, and agent credits per month (an entitlement a gateway asks)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import simplejson

from chalicelib.container import Container
from chalicelib.domain.auth import ALL_SCOPES
from chalicelib.domain.models import Organization, Plan, ServiceLine
from chalicelib.services import catalog_admin
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY, auth
from tests.support import Clock, body, run_aggregator

NOW = datetime(2026, 5, 20, 12, 0, tzinfo=UTC)
STARTER_ORG = "ORG-26-100200"
CREDIT_ORG = "ORG-26-555777"


@pytest.fixture
def clock(container: Container) -> Clock:
    fixed = Clock(NOW)
    container.clock = fixed
    return fixed


def create(client: Any, name: str, key: str) -> Any:
    return client.http.post("/v1/workspaces", headers=auth(key), body=json.dumps({"name": name}))


def test_the_starter_plans_single_workspace_is_its_limit(client: Any, container: Container, clock: Clock) -> None:
    listed = body(client.http.get("/v1/workspaces", headers=auth(OTHER_ORG_KEY)))["data"]
    assert [w["id"] for w in listed] == ["WS-26-000201"]
    response = create(client, "Second studio", OTHER_ORG_KEY)
    assert response.status_code == 403, response.body
    error = body(response)["error"]
    assert error["code"] == "plan_limit_exceeded"
    assert error["message"] == "Plan 'plan_starter_monthly' allows 1 workspace."
    assert [w.id for w in container.catalog.list_workspaces(STARTER_ORG)] == ["WS-26-000201"]


def test_an_unlimited_plan_creates_workspaces_with_globally_unique_ids(
    client: Any, container: Container, clock: Clock
) -> None:
    created = [body(create(client, f"Team {i}", FULL_KEY))["data"] for i in range(3)]
    assert all(w["id"].startswith("WS-26-") and w["organization_id"] == "ORG-26-090500" for w in created)
    assert len({w["id"] for w in created}) == 3
    for w in created:
        assert container.catalog.get_id_owner(w["id"]) == "ORG-26-090500"
    listed = {w["id"] for w in body(client.http.get("/v1/workspaces", headers=auth(READ_KEY)))["data"]}
    assert {w["id"] for w in created} <= listed
    # a new workspace takes service lines at once
    line = {"workspace_id": created[0]["id"], "name": "New", "product_line": "talent", "rates": {"talent.hours": 90}}
    assert client.http.post("/v1/service-lines", headers=auth(), body=json.dumps(line)).status_code == 201


def test_creating_workspaces_needs_its_scope_and_a_name(client: Any, clock: Clock) -> None:
    assert create(client, "Nope", READ_KEY).status_code == 403
    response = client.http.post("/v1/workspaces", headers=auth(), body=json.dumps({"name": ""}))
    assert response.status_code == 400 and body(response)["error"]["field"] == "name"


def credit_org(container: Container, credits: int | str | None) -> str:
    """An organization on a copy of the growth plan with the given monthly agent credits; returns a key."""
    plan = container.catalog.get_plan("plan_scale_monthly")
    assert plan is not None
    custom: Plan = plan.model_copy(
        update={
            "id": f"plan_test_credits_{credits}",
            "limits": plan.limits.model_copy(update={"agent_credits_monthly": credits}),
        }
    )
    container.catalog.put_plan(custom)
    container.catalog.put_organization(
        Organization(id=CREDIT_ORG, name="Credit Co", plan_id=custom.id, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    )
    from chalicelib.domain.models import Workspace

    container.catalog.put_workspace(Workspace(id="WS-26-555777", organization_id=CREDIT_ORG, name="Main"))
    for line_id in ("LIN-26-555771", "LIN-26-555772"):
        container.catalog.put_service_line(
            ServiceLine(
                id=line_id,
                organization_id=CREDIT_ORG,
                workspace_id="WS-26-555777",
                name=line_id,
                product_line="agent_gateway",
                status="active",
                currency="USD",
                rates={"agent.runs": Decimal("0.40")},
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
        )
    return catalog_admin.issue_key(container.catalog, CREDIT_ORG, ALL_SCOPES, "credits").secret


def runs(client: Any, key: str, line: str, quantity: int, day: date) -> None:
    event = {"service_line_id": line, "meter": "agent.runs", "quantity": quantity, "period_date": day.isoformat()}
    response = client.http.post("/v1/metering/events", headers=auth(key), body=simplejson.dumps(event))
    assert response.status_code == 201, response.body


def credits(client: Any, key: str) -> Any:
    return client.http.get("/v1/entitlements/agent-credits", headers=auth(key))


def test_agent_credits_count_this_months_runs_and_refuse_the_next_run_past_the_limit(
    client: Any, container: Container, clock: Clock
) -> None:
    key = credit_org(container, 10)
    runs(client, key, "LIN-26-555771", 4, date(2026, 5, 2))
    runs(client, key, "LIN-26-555772", 5, date(2026, 5, 19))
    runs(client, key, "LIN-26-555771", 50, date(2026, 4, 30))  # last month's runs do not count
    run_aggregator(client, container)
    answer = body(credits(client, key))["data"]
    assert answer == {
        "organization_id": CREDIT_ORG,
        "month": "2026-05",
        "limit": 10,
        "used": 9,
        "remaining": 1,
        "allowed": True,
        "resets_at": "2026-06-01T00:00:00Z",
    }
    runs(client, key, "LIN-26-555772", 3, date(2026, 5, 20))  # usage past the limit is still recorded
    run_aggregator(client, container)
    response = credits(client, key)
    assert response.status_code == 429, response.body
    error = body(response)["error"]
    assert error["code"] == "rate_limited"
    assert error["message"] == "The organization has used its 10 agent credits for 2026-05."
    listed = body(client.http.get("/v1/usage?from=2026-05-01&to=2026-05-31", headers=auth(key)))["data"]
    assert sum(e["quantity"] for e in listed) == 12
    clock.now = datetime(2026, 6, 1, 0, 0, 1, tzinfo=UTC)  # a new month
    assert body(credits(client, key))["data"]["used"] == 0


def test_a_plan_without_agent_credits_refuses_and_uncapped_plans_allow(
    client: Any, container: Container, clock: Clock
) -> None:
    key = credit_org(container, 0)
    assert credits(client, key).status_code == 429
    clock.now = NOW + timedelta(seconds=1)
    for cap in (None, "custom"):
        key = credit_org(container, cap)
        container.catalog.clear_cache()
        answer = body(credits(client, key))["data"]
        assert answer["limit"] == cap and answer["remaining"] is None and answer["allowed"] is True


def test_a_retried_create_with_its_idempotency_key_makes_one_workspace_and_one_line(
    client: Any, container: Container, clock: Clock
) -> None:
    def workspace(name: str, key: str) -> Any:
        headers = {**auth(FULL_KEY), "Idempotency-Key": key}
        return client.http.post("/v1/workspaces", headers=headers, body=json.dumps({"name": name}))

    first = workspace("Data", "ws-create-1")
    assert first.status_code == 201, first.body
    again = workspace("Data", "ws-create-1")
    assert again.status_code == 200 and body(again) == body(first)
    conflict = workspace("Other name", "ws-create-1")
    assert conflict.status_code == 409 and body(conflict)["error"]["code"] == "idempotency_conflict"
    named = [w for w in container.catalog.list_workspaces("ORG-26-090500") if w.name == "Data"]
    assert len(named) == 1

    line = {
        "workspace_id": body(first)["data"]["id"],
        "name": "L",
        "product_line": "talent",
        "rates": {"talent.hours": 90},
    }

    def create_line(payload: dict[str, Any], key: str) -> Any:
        headers = {**auth(FULL_KEY), "Idempotency-Key": key}
        return client.http.post("/v1/service-lines", headers=headers, body=json.dumps(payload))

    made = create_line(line, "line-create-1")
    assert made.status_code == 201, made.body
    before = len(container.catalog.list_service_lines("ORG-26-090500"))
    retry = create_line(line, "line-create-1")
    assert retry.status_code == 200 and body(retry) == body(made)
    assert create_line({**line, "name": "M"}, "line-create-1").status_code == 409
    assert len(container.catalog.list_service_lines("ORG-26-090500")) == before
    assert create_line(line, "line-create-2").status_code == 201  # another key: another line
    bad = client.http.post(
        "/v1/service-lines", headers={**auth(FULL_KEY), "Idempotency-Key": "has space"}, body=json.dumps(line)
    )
    assert bad.status_code == 400 and body(bad)["error"]["field"] == "Idempotency-Key"
