"""The catalog routes and authentication through chalice.test.Client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib.container import Container
from chalicelib.services import catalog_admin
from tests.conftest import FULL_KEY, READ_KEY, auth
from tests.support import in_memory_container


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The app over the in-memory stores (the emulator is for the stores' own tests)."""
    yield from in_memory_container(monkeypatch)


def body(response: Any) -> Any:
    return json.loads(response.body)


def test_meters_lists_the_active_meters_with_uuid_status_and_aggregation(client: Any) -> None:
    response = client.http.get("/v1/meters", headers=auth())
    assert response.status_code == 200
    meters = body(response)["data"]
    assert len(meters) == 15  # the nine summed platform meters and one per other aggregation
    talent = next(m for m in meters if m["id"] == "talent.hours")
    assert talent["unit"] == "hours"
    assert talent["product_lines"] == ["talent", "managed_services"]
    assert talent["status"] == "ACTIVE" and len(talent["uuid"]) == 36
    assert set(talent) == {
        "id",
        "name",
        "unit",
        "product_lines",
        "description",
        "uuid",
        "status",
        "aggregation",
        "value_property",
        "group_by",
    }
    assert (talent["aggregation"], talent["value_property"], talent["group_by"]) == ("sum", None, ["talent_id"])
    run_seconds = next(m for m in meters if m["id"] == "agent.run_seconds")
    assert run_seconds["unit"] == "seconds" and run_seconds["product_lines"] == ["agent_gateway"]
    aggregations = {m["id"]: m["aggregation"] for m in meters if m["aggregation"] != "sum"}
    assert aggregations == {
        "talent.timesheets": "count",
        "agent.peak_concurrency": "max",
        "compute.min_replicas": "min",
        "compute.storage_gb": "latest",
        "agent.unique_users": "unique_count",
        "agent.latency_ms": "avg",
    }
    users = next(m for m in meters if m["id"] == "agent.unique_users")
    assert users["value_property"] == "user_id" and users["group_by"] == ["agent_id"]
    assert sum(1 for m in meters if m["aggregation"] == "sum") == 9


def test_archived_meters_only_on_request(client: Any) -> None:
    response = client.http.get("/v1/meters?include_archived=true", headers=auth())
    statuses = [m["status"] for m in body(response)["data"]]
    assert statuses.count("ARCHIVED") == 1 and len(statuses) == 16


def test_plans_hide_deprecated_unless_asked(client: Any) -> None:
    listed = body(client.http.get("/v1/plans", headers=auth(READ_KEY)))
    ids = [p["id"] for p in listed["data"]]
    assert len(ids) == 8
    assert {
        f"plan_{t}_{c}" for t in ("starter", "growth", "scale", "enterprise") for c in ("monthly", "annual")
    } == set(ids)
    assert listed["meta"] == {"cursor": None, "has_more": False}
    starter = next(p for p in listed["data"] if p["id"] == "plan_starter_monthly")
    assert starter["price"] == 299.0 and starter["allowed_product_lines"] == ["talent"]
    assert set(starter["limits"]) == {
        "workspaces",
        "active_service_lines",
        "users",
        "api_calls_monthly",
        "agent_credits_monthly",
    }
    with_deprecated = body(client.http.get("/v1/plans?include_deprecated=true", headers=auth()))
    deprecated = [p for p in with_deprecated["data"] if p["status"] == "deprecated"]
    assert [p["id"] for p in deprecated] == ["plan_team_monthly_2024"]


def test_plan_detail_has_features_limits_support_and_sla(client: Any) -> None:
    plan = body(client.http.get("/v1/plans/plan_enterprise_annual", headers=auth()))["data"]
    assert plan["price"] is None
    assert plan["limits"]["workspaces"] is None and plan["limits"]["agent_credits_monthly"] == "custom"
    assert plan["limits"]["webhooks"] is None
    assert "sla_guarantee" in plan["features"]
    assert plan["support_tier"] == "dedicated"
    assert plan["sla"] == {"uptime_percent": 99.9, "response_time_hours": 1}


def test_unknown_plan_is_404_in_the_native_envelope(client: Any) -> None:
    response = client.http.get("/v1/plans/plan_nope", headers=auth())
    assert response.status_code == 404
    error = body(response)["error"]
    assert error["code"] == "plan_not_found" and error["request_id"]


def test_missing_unknown_and_malformed_keys_are_401(client: Any) -> None:
    assert client.http.get("/v1/meters").status_code == 401
    assert client.http.get("/v1/meters", headers={"Authorization": "Bearer mk_nope"}).status_code == 401
    response = client.http.get("/v1/meters", headers={"Authorization": f"Basic {FULL_KEY}"})
    assert response.status_code == 401
    assert body(response)["error"]["code"] == "unauthorized"


def test_revoked_key_is_401(client: Any, container: Container) -> None:
    issued = catalog_admin.issue_key(container.catalog, "ORG-26-090500", frozenset({"catalog:read"}), "t")
    assert client.http.get("/v1/meters", headers=auth(issued.secret)).status_code == 200
    container.catalog.revoke_api_key(issued.key.key_id)
    assert client.http.get("/v1/meters", headers=auth(issued.secret)).status_code == 401


def test_missing_scope_is_403(client: Any, container: Container) -> None:
    issued = catalog_admin.issue_key(container.catalog, "ORG-26-090500", frozenset({"metering:write"}), "writer")
    response = client.http.get("/v1/plans", headers=auth(issued.secret))
    assert response.status_code == 403
    assert body(response)["error"]["code"] == "insufficient_scope"


def test_bad_and_unknown_query_parameters_are_400_naming_the_field(client: Any) -> None:
    response = client.http.get("/v1/plans?include_deprecated=perhaps", headers=auth())
    assert response.status_code == 400
    assert body(response)["error"]["field"] == "include_deprecated"
    response = client.http.get("/v1/meters?colour=blue", headers=auth())
    assert response.status_code == 400
    assert body(response)["error"] == {
        "code": "validation_error",
        "message": "colour: unknown field",
        "field": "colour",
        "request_id": body(response)["error"]["request_id"],
    }


def test_plans_page_with_limit_and_cursor(client: Any) -> None:
    everything = [p["id"] for p in body(client.http.get("/v1/plans?include_deprecated=true", headers=auth()))["data"]]
    assert len(everything) == 9
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "include_deprecated=true&limit=4" + (f"&cursor={cursor}" if cursor else "")
        response = client.http.get(f"/v1/plans?{query}", headers=auth())
        assert response.status_code == 200, response.body
        page = body(response)
        assert len(page["data"]) <= 4
        seen += [p["id"] for p in page["data"]]
        pages += 1
        cursor = page["meta"]["cursor"]
        assert page["meta"]["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(everything) and len(seen) == len(set(seen))


def test_a_plans_cursor_is_bound_to_its_query(client: Any) -> None:
    first = body(client.http.get("/v1/plans?limit=2", headers=auth()))
    cursor = first["meta"]["cursor"]
    assert cursor
    response = client.http.get(f"/v1/plans?include_deprecated=true&limit=2&cursor={cursor}", headers=auth())
    assert response.status_code == 400
    assert body(response)["error"]["code"] == "invalid_cursor"
    assert client.http.get("/v1/plans?limit=0", headers=auth()).status_code == 400
