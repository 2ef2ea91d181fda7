"""Errors the framework used to answer: unknown paths, other methods, bodies without a JSON Content-Type.

Each is answered in the envelope of the dialect that owns the path, with a stable code, and never
quotes a credential; JSON bodies are read whatever their Content-Type, or none.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from app import PATH_OWNERS, app
from chalicelib.api.http import ROUTES, owner_of
from chalicelib.container import Container
from chalicelib.dialects.meter_api import METER_API
from chalicelib.dialects.metronome import METRONOME
from chalicelib.dialects.scalr import SCALR
from chalicelib.domain.auth import ALL_SCOPES
from chalicelib.domain.models import Organization, Plan, Workspace
from chalicelib.services import catalog_admin
from tests.conftest import FULL_KEY
from tests.e2e.localstack import running_stack
from tests.support import Clock, in_memory_container
from tools.deploy_template import merge_template

BEARER = {"Authorization": f"Bearer {FULL_KEY}"}
EVENT = {"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": 2}


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The app over the in-memory stores (the emulator is for the stores' own tests)."""
    yield from in_memory_container(monkeypatch)


def parsed(response: Any) -> Any:
    return json.loads(response.body)


def assert_native(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.body
    assert response.headers["Content-Type"] == "application/json"
    error: dict[str, Any] = parsed(response)["error"]
    assert error["code"] == code and error["message"]
    assert error["request_id"] == response.headers["X-Request-Id"]
    return error


def assert_no_credential(response: Any) -> None:
    text = response.body.decode() if isinstance(response.body, bytes) else str(response.body)
    assert FULL_KEY not in text and "Bearer" not in text and "Authorization" not in text


# -- unknown paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/nope", "/v1", "/v1/nope", "/v1/metering", "/v1/meters/abc", "/v1/plans/x/y", "/v1/usage/nope"],
)
def test_an_unknown_native_path_is_a_404_in_the_native_envelope(client: Any, path: str) -> None:
    for method in ("GET", "POST", "DELETE"):
        response = client.http.request(method, path, headers=BEARER, body=b"{}")
        assert_native(response, 404, "not_found")
        assert_no_credential(response)


def test_unknown_paths_under_a_dialect_answer_in_its_envelope(client: Any) -> None:
    meter_api = client.http.get("/v1/meter-usage/nope", headers=BEARER)
    assert meter_api.status_code == 404
    body = parsed(meter_api)
    assert body["code"] == "NOT_FOUND" and body["message"] and body["requestId"] == meter_api.headers["X-Request-Id"]
    assert "error" not in body
    subscriptions = client.http.get("/v1/meters/abc/subscriptions/nope", headers=BEARER)
    assert subscriptions.status_code == 404 and parsed(subscriptions)["code"] == "NOT_FOUND"

    metronome = client.http.post("/v1/ingest/nope", headers=BEARER, body=b"[]")
    assert metronome.status_code == 404
    assert parsed(metronome) == {"message": "No resource exists at this path.", "code": "not_found"}

    # Metronome's SDK calls under a catch-all with no route of their own: the path asked for decides the envelope
    for method, path in (("GET", "/v1/customers"), ("POST", "/v1/contracts"), ("POST", "/v1/billable-metrics")):
        response = client.http.request(method, path, headers=BEARER, body=b"{}")
        assert response.status_code == 404, (path, response.body)
        assert parsed(response) == {"message": "No resource exists at this path.", "code": "not_found"}
        assert_no_credential(response)

    # deeper than one segment under a catch-all: API Gateway's greedy {proxy+}, and the local router now too
    deep = client.http.get("/v1/customers/abc/billing-config", headers=BEARER)
    assert deep.status_code == 404 and parsed(deep) == {
        "message": "No resource exists at this path.",
        "code": "not_found",
    }
    assert_native(client.http.get("/v1/nope/deeper/still", headers=BEARER), 404, "not_found")

    scalr = client.http.get("/usage-statistics/nope", headers=BEARER)
    assert scalr.status_code == 404
    assert scalr.headers["Content-Type"] == "application/vnd.api+json"
    (item,) = parsed(scalr)["errors"]
    assert item["status"] == "404" and item["code"] == "not_found" and item["detail"]
    for response in (meter_api, subscriptions, metronome, scalr):
        assert_no_credential(response)


# -- other methods ---------------------------------------------------------------------------


def test_a_method_a_path_does_not_serve_is_a_405_with_allow(client: Any) -> None:
    error = assert_native(client.http.request("DELETE", "/v1/meters", headers=BEARER), 405, "method_not_allowed")
    assert "DELETE" in error["message"]
    assert client.http.request("DELETE", "/v1/meters", headers=BEARER).headers["Allow"] == "GET, OPTIONS"
    both = client.http.request("PUT", "/v1/usage", headers=BEARER)  # GET is native, POST is Metronome's
    assert_native(both, 405, "method_not_allowed")
    assert both.headers["Allow"] == "GET, POST, OPTIONS"
    line = client.http.request("PATCH", "/v1/service-lines/LIN-26-084729", headers=BEARER)
    assert_native(line, 405, "method_not_allowed")


def test_a_405_under_a_dialect_answers_in_its_envelope(client: Any) -> None:
    meter_api = client.http.get("/v1/meter-usage", headers=BEARER)
    assert meter_api.status_code == 405 and meter_api.headers["Allow"] == "POST, OPTIONS"
    assert parsed(meter_api)["code"] == "METHOD_NOT_ALLOWED"
    scalr = client.http.post("/usage-statistics", headers=BEARER, body=b"{}")
    assert scalr.status_code == 405
    (item,) = parsed(scalr)["errors"]
    assert item["status"] == "405" and item["code"] == "method_not_allowed"


def test_head_and_options(client: Any) -> None:
    head = client.http.request("HEAD", "/v1/meters", headers=BEARER)
    assert head.status_code == 405 and head.headers["Allow"] == "GET, OPTIONS" and not head.body
    options = client.http.request("OPTIONS", "/v1/metering/events", headers=BEARER)
    assert options.status_code == 204 and options.headers["Allow"] == "POST, OPTIONS"


# -- bodies without a JSON Content-Type ----------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, "application/x-www-form-urlencoded", "text/plain", "application/octet-stream"]
)
def test_a_json_body_is_read_whatever_its_content_type(client: Any, content_type: str | None) -> None:
    headers = dict(BEARER) if content_type is None else {**BEARER, "Content-Type": content_type}
    response = client.http.post("/v1/metering/events", headers=headers, body=json.dumps(EVENT).encode())
    assert response.status_code == 201, response.body
    report = {"value": 1, "customerId": "ORG-26-090500", "meterName": "agent.runs"}
    reported = client.http.post(
        "/v1/meter-usage", headers={**headers, "Idempotency-Key": f"ct-{content_type}"}, body=json.dumps(report)
    )
    assert reported.status_code == 202, reported.body
    listed = client.http.get("/v1/meters", headers=headers)  # a GET that names a Content-Type
    assert listed.status_code == 200, listed.body


def test_a_body_that_is_not_json_is_a_400_in_the_dialects_envelope(client: Any) -> None:
    form = {**BEARER, "Content-Type": "application/x-www-form-urlencoded"}
    assert_native(client.http.post("/v1/metering/events", headers=form, body=b"a=1&b=2"), 400, "invalid_json")
    metronome = client.http.post("/v1/usage", headers=form, body=b"a=1")
    assert metronome.status_code == 400 and parsed(metronome)["code"] == "invalid_json"


# -- 429: when to come back ------------------------------------------------------------------------

LIMITED_ORG = "ORG-26-777002"


def limited_key(container: Container, calls: int) -> str:
    """A key of an organization whose plan allows `calls` API calls a month."""
    base = container.catalog.get_plan("plan_growth_monthly")
    assert base is not None
    plan: Plan = base.model_copy(
        update={"id": "plan_test_429", "limits": base.limits.model_copy(update={"api_calls_monthly": calls})}
    )
    container.catalog.put_plan(plan)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    container.catalog.put_organization(
        Organization(id=LIMITED_ORG, name="Limited", plan_id=plan.id, created_at=created)
    )
    container.catalog.put_workspace(Workspace(id="WS-26-777002", organization_id=LIMITED_ORG, name="Main"))
    return catalog_admin.issue_key(container.catalog, LIMITED_ORG, ALL_SCOPES, "limited").secret


def test_429_says_when_to_come_back_and_every_counted_answer_carries_the_quota(
    client: Any, container: Container
) -> None:
    container.clock = Clock(datetime(2026, 5, 31, 23, 59, 30, tzinfo=UTC))
    key = limited_key(container, 3)
    headers = {"Authorization": f"Bearer {key}"}
    june = str(int(datetime(2026, 6, 1, tzinfo=UTC).timestamp()))
    remaining = []
    for _ in range(3):
        answer = client.http.get("/v1/meters", headers=headers)
        assert answer.status_code == 200
        assert answer.headers["X-RateLimit-Limit"] == "3" and answer.headers["X-RateLimit-Reset"] == june
        remaining.append(answer.headers["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    refused = client.http.get("/v1/usage", headers=headers)
    error = assert_native(refused, 429, "rate_limited")
    assert "2026-06-01T00:00:00Z" in error["message"]
    assert refused.headers["Retry-After"] == "30"  # seconds to the next month, UTC
    assert (refused.headers["X-RateLimit-Limit"], refused.headers["X-RateLimit-Remaining"]) == ("3", "0")
    assert refused.headers["X-RateLimit-Reset"] == june
    # in every dialect
    meter_api = client.http.get("/v1/meter-subscriptions?meterName=agent.runs", headers=headers)
    assert meter_api.status_code == 429 and parsed(meter_api)["code"] == "RATE_LIMITED"
    assert meter_api.headers["Retry-After"] == "30"
    # mid-month, the wait is the rest of the month
    container.clock = Clock(datetime(2026, 5, 31, 12, 0, tzinfo=UTC))
    assert client.http.get("/v1/usage", headers=headers).headers["Retry-After"] == str(12 * 3600)


def test_a_plan_without_a_limit_sends_no_quota_headers(client: Any) -> None:
    answer = client.http.get("/v1/meters", headers=BEARER)  # the enterprise plan: api_calls_monthly null
    assert answer.status_code == 200
    assert not {h for h in answer.headers if h.lower().startswith("x-ratelimit")}


# -- where each answer comes from ------------------------------------------------------------------


def test_every_route_is_owned_by_its_own_dialect() -> None:
    """The path-prefix table names, for every real route, the dialect the route answers in."""
    for route in ROUTES:
        assert owner_of(PATH_OWNERS, route.path, route.method.upper()) is route.dialect, (route.path, route.method)
    assert owner_of(PATH_OWNERS, "/v1/ingest/batch", "POST") is METRONOME
    assert owner_of(PATH_OWNERS, "/v1/meters/{meterId}/subscriptions/{proxy+}", "GET") is METER_API
    assert owner_of(PATH_OWNERS, "/usage-statistics/{proxy+}", "GET") is SCALR


def test_every_route_serves_every_method_and_no_route_is_left_without_a_catch_all() -> None:
    """No method or path falls through to Chalice's or API Gateway's own answer."""
    methods = {"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"}
    for path, views in app.routes.items():
        assert set(views) == methods, path
    for path in app.routes:
        if "{proxy+}" in path:
            continue
        children = {
            p[len(path.rstrip("/")) + 1 :].split("/")[0] for p in app.routes if p.startswith(path.rstrip("/") + "/")
        }
        assert "{proxy+}" in children or any(c.startswith("{") for c in children), path
    for views in app.routes.values():
        assert all(view.content_types == ["*/*"] for view in views.values())


def test_api_gateway_answers_its_own_errors_in_the_native_envelope() -> None:
    responses = merge_template("prod")["Resources"]["RestAPI"]["Properties"]["GatewayResponses"]
    assert {"DEFAULT_4XX", "DEFAULT_5XX", "MISSING_AUTHENTICATION_TOKEN", "THROTTLED"} <= set(responses)
    assert responses["MISSING_AUTHENTICATION_TOKEN"]["StatusCode"] == "404"
    assert responses["THROTTLED"]["ResponseParameters"]["Headers"]["Retry-After"] == "'1'"
    for kind, response in responses.items():
        template = response["ResponseTemplates"]["application/json"]
        assert "$context.error" not in template, kind  # API Gateway's own message can quote the Authorization header
        body = json.loads(template.replace("$context.requestId", "abc"))
        assert set(body) == {"error"} and body["error"]["request_id"] == "abc" and body["error"]["code"], kind
        assert response["ResponseParameters"]["Headers"]["Content-Type"] == "'application/json'"


# -- the same over HTTP, against the real local stack ----------------------------------------------


@pytest.fixture(scope="module")
def stack() -> Iterator[str]:
    with running_stack() as base_url:
        yield base_url


def call(
    url: str, method: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_local_stack_unknown_path_is_a_404_that_quotes_no_credential(stack: str) -> None:
    for path in ("/nope", "/v1/nope", "/v1/meters/abc", "/v1/usage/summary/x", "/v1/nope/deeper/still", "/a/b/c"):
        status, _, raw = call(f"{stack}{path}", "GET", headers=BEARER)
        assert status == 404, (path, raw)
        assert json.loads(raw)["error"]["code"] == "not_found"
        assert FULL_KEY.encode() not in raw and b"Bearer" not in raw
    status, _, raw = call(f"{stack}/v1/ingest/nope", "POST", body=b"[]", headers=BEARER)
    assert status == 404 and json.loads(raw) == {"message": "No resource exists at this path.", "code": "not_found"}


def test_local_stack_405_and_a_curl_style_form_body(stack: str) -> None:
    status, headers, raw = call(f"{stack}/v1/meters", "DELETE", headers=BEARER)
    assert status == 405 and headers["Allow"] == "GET, OPTIONS"
    assert json.loads(raw)["error"]["code"] == "method_not_allowed"
    # `curl -d '{...}'` sends application/x-www-form-urlencoded
    form = {**BEARER, "Content-Type": "application/x-www-form-urlencoded"}
    status, _, raw = call(f"{stack}/v1/metering/events", "POST", json.dumps(EVENT).encode(), form)
    assert status == 201, raw
    status, _, raw = call(f"{stack}/v1/metering/events", "POST", json.dumps(EVENT).encode(), dict(BEARER))
    assert status == 201, raw
