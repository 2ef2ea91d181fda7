"""The dashboard's routes through chalice.test.Client: the page and its files, the series and limits it reads.

What a user relies on: the page and its scripts come with the right types and cache headers, the
page works with no internet (nothing loaded from elsewhere), the key never appears in a URL, an
answer or a log, and the numbers the page charts agree with the summary.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from chalicelib.api.dashboard import ASSETS_DIR
from chalicelib.container import Container
from chalicelib.domain.auth import METERING_WRITE, hash_key, key_id_for
from chalicelib.domain.models import ApiKey
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY, auth
from tests.support import Clock, body, run_aggregator

TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock(container: Container) -> Clock:
    fixed = Clock(T0)
    container.clock = fixed
    return fixed


def get(client: Any, path: str, params: dict[str, str] | None = None, key: str | None = FULL_KEY) -> Any:
    url = f"{path}?{urlencode(params)}" if params else path
    return client.http.get(url, headers=auth(key) if key else {})


def ingest(client: Any, events: list[dict[str, Any]]) -> None:
    answer = client.http.post("/v1/metering/events/batch", headers=auth(), body=json.dumps({"events": events}))
    assert answer.status_code == 200
    assert {item["status"] for item in body(answer)["data"]} == {"accepted"}


# -- the page and its files ------------------------------------------------------------------------


def test_page_is_html_with_a_strict_policy_and_no_key(client: Any) -> None:
    answer = client.http.get("/dashboard")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.headers["Cache-Control"] == "no-cache"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "form-action 'none'" in policy
    page = answer.body.decode()
    assert "mk_" not in page.replace('placeholder="mk_...', "")  # no key is ever part of the page
    # Nothing comes from another origin: every script and style sheet is one of the page's own files.
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs and all(r.startswith("dashboard/") or r.startswith("data:") for r in refs), refs
    # The key field has no name, so no form submission can put the key in a URL or body.
    key_input = re.search(r"<input id=\"api-key\"[^>]*>", page)
    assert key_input is not None and "name=" not in key_input.group(0)


@pytest.mark.parametrize(
    ("name", "content_type", "cache"),
    [
        ("app.js", "text/javascript; charset=utf-8", "no-cache"),
        ("app.css", "text/css; charset=utf-8", "no-cache"),
        ("uPlot-1.6.32.iife.min.js", "text/javascript; charset=utf-8", "public, max-age=86400"),
        ("uPlot-1.6.32.min.css", "text/css; charset=utf-8", "public, max-age=86400"),
        ("uPlot-LICENSE.txt", "text/plain; charset=utf-8", "public, max-age=86400"),
    ],
)
def test_each_file_has_its_type_cache_policy_and_revalidates(
    client: Any, name: str, content_type: str, cache: str
) -> None:
    answer = client.http.get(f"/dashboard/{name}")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == content_type
    assert answer.headers["Cache-Control"] == cache
    assert answer.body == (ASSETS_DIR / name).read_bytes()
    again = client.http.get(f"/dashboard/{name}", headers={"If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304 and not again.body
    other = client.http.get(f"/dashboard/{name}", headers={"If-None-Match": '"stale"'})
    assert other.status_code == 200


def test_every_file_the_page_names_is_served(client: Any) -> None:
    page = client.http.get("/dashboard").body.decode()
    for ref in re.findall(r'(?:src|href)="dashboard/([^"]+)"', page):
        assert client.http.get(f"/dashboard/{ref}").status_code == 200, ref


@pytest.mark.parametrize("name", ["nope.js", "index.html", "..%2Fapi%2Fdashboard.py", "VENDOR.md"])
def test_an_unknown_file_is_a_native_404(client: Any, name: str) -> None:
    answer = client.http.get(f"/dashboard/{name}")
    assert answer.status_code == 404
    assert body(answer)["error"]["code"] == "not_found"


def test_other_methods_on_the_page_are_405(client: Any) -> None:
    answer = client.http.post("/dashboard", body=b"")
    assert answer.status_code == 405 and answer.headers["Allow"].startswith("GET")


def test_script_sends_the_key_only_as_a_header_and_keeps_it_in_the_session() -> None:
    script = (ASSETS_DIR / "app.js").read_text()
    assert 'Authorization: "Bearer " + sessionStorage.getItem(KEY_STORE)' in script
    assert "localStorage" not in script  # the key is forgotten with the tab
    assert "fetch(url" in script and "KEY_STORE)" not in script.split("const url =", 1)[1].split("\n", 1)[0]


# -- the key never leaks ---------------------------------------------------------------------------


def test_no_answer_or_log_line_carries_the_key(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [
        client.http.get("/dashboard", headers=auth()),
        get(client, "/v1/organization/limits"),
        get(client, "/v1/usage/timeseries"),
        get(client, "/v1/organization/limits", key="mk_wrong_key_never_logged"),
        get(client, "/v1/usage/timeseries", {"granularity": "week"}),
    ]
    for answer in answers:
        text = answer.body.decode() + json.dumps(dict(answer.headers))
        assert FULL_KEY not in text and "mk_wrong_key_never_logged" not in text
    logged = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert logged  # the requests were logged...
    assert FULL_KEY not in logged and "mk_wrong_key_never_logged" not in logged  # ...without the key


# -- limits ----------------------------------------------------------------------------------------


def test_limits_of_an_enterprise_organization(client: Any) -> None:
    answer = get(client, "/v1/organization/limits")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    data = body(answer)["data"]
    assert data["organization_id"] == "ORG-26-090500"
    assert data["plan"]["id"] == "plan_enterprise_annual"
    assert data["active_service_lines"] == {"used": 2, "limit": None}
    assert data["api_calls"]["limit"] is None
    assert data["agent_credits"] == {"used": 0, "limit": "custom"}
    assert data["key"]["read_only"] is False and "metering:write" in data["key"]["scopes"]


def test_limits_say_a_read_only_key_is_read_only(client: Any) -> None:
    data = body(get(client, "/v1/organization/limits", key=READ_KEY))["data"]
    assert data["key"]["read_only"] is True
    assert data["key"]["scopes"] == ["accounts:billing", "catalog:read", "usage:read"]


def test_limits_of_a_starter_organization_count_its_api_calls(client: Any, container: Container) -> None:
    first = body(get(client, "/v1/organization/limits", key=OTHER_ORG_KEY))["data"]
    assert first["plan"]["id"] == "plan_starter_monthly"
    assert first["active_service_lines"] == {"used": 1, "limit": 3}
    assert first["workspaces"] == {"used": 1, "limit": 1}
    assert first["agent_credits"] is None  # the starter plan has none
    assert first["api_calls"]["limit"] == 50000
    for _ in range(30):  # past a flush (every 25 calls)
        get(client, "/v1/meters", key=OTHER_ORG_KEY)
    later = body(get(client, "/v1/organization/limits", key=OTHER_ORG_KEY))["data"]
    assert later["api_calls"]["used"] >= first["api_calls"]["used"] + 25


def test_limits_need_a_key(client: Any) -> None:
    assert get(client, "/v1/organization/limits", key=None).status_code == 401
    assert get(client, "/v1/organization/limits", key="mk_revoked_or_unknown").status_code == 401


# -- series ----------------------------------------------------------------------------------------


def test_daily_series_add_up_to_the_summary(client: Any, container: Container, clock: Clock) -> None:
    today = T0.date()
    days = [today - timedelta(days=n) for n in range(3)]
    ingest(
        client,
        [
            {"service_line_id": TALENT, "meter": "talent.hours", "quantity": 7.125, "period_date": d.isoformat()}
            for d in days
        ]
        + [{"service_line_id": AGENT, "meter": "agent.runs", "quantity": 3, "period_date": days[1].isoformat()}],
    )
    run_aggregator(client, container)
    period = {"from": (today - timedelta(days=4)).isoformat(), "to": today.isoformat()}
    answer = get(client, "/v1/usage/timeseries", period)
    assert answer.status_code == 200
    data = body(answer)["data"]
    assert data["granularity"] == "day"
    assert data["buckets"] == [(today - timedelta(days=n)).isoformat() for n in range(4, -1, -1)]
    series = {(s["service_line_id"], s["meter"]): s for s in data["series"]}
    assert set(series) == {(TALENT, "talent.hours"), (AGENT, "agent.runs")}
    assert series[(TALENT, "talent.hours")]["values"] == [0, 0, Decimal("7.125"), Decimal("7.125"), Decimal("7.125")]
    assert series[(TALENT, "talent.hours")]["unit"] == "hours"
    assert series[(TALENT, "talent.hours")]["aggregation"] == "sum"
    summary = body(get(client, "/v1/usage/summary", period))["data"]
    for line in summary["by_service_line"]:
        for meter in line["meters"]:
            assert sum(series[(line["service_line_id"], meter["meter"])]["values"]) == meter["quantity"]


def test_series_of_a_max_meter_give_each_days_maximum(client: Any, container: Container, clock: Clock) -> None:
    line = {"workspace_id": "WS-26-000101", "name": "Peaks", "product_line": "agent_gateway"}
    created = client.http.post(
        "/v1/service-lines", headers=auth(), body=json.dumps({**line, "rates": {"agent.peak_concurrency": 0}})
    )
    assert created.status_code == 201, body(created)
    line_id = body(created)["data"]["id"]
    today, yesterday = T0.date().isoformat(), (T0.date() - timedelta(days=1)).isoformat()
    peaks = [(today, 4), (today, 9), (today, 2), (yesterday, 5)]
    ingest(
        client,
        [
            {"service_line_id": line_id, "meter": "agent.peak_concurrency", "quantity": q, "period_date": d}
            for d, q in peaks
        ],
    )
    run_aggregator(client, container)
    period = {"from": yesterday, "to": today, "service_line_id": line_id}
    (series,) = body(get(client, "/v1/usage/timeseries", period))["data"]["series"]
    assert series["aggregation"] == "max" and series["values"] == [5, 9]
    (summary,) = body(get(client, "/v1/usage/summary", period))["data"]["by_service_line"]
    assert summary["meters"][0]["quantity"] == 9  # the period's maximum, not the sum of the days'


def test_hourly_series_cover_each_utc_hour(client: Any, container: Container, clock: Clock) -> None:
    ingest(client, [{"service_line_id": AGENT, "meter": "agent.runs", "quantity": 2}])
    run_aggregator(client, container)
    day = T0.date().isoformat()
    data = body(get(client, "/v1/usage/timeseries", {"from": day, "to": day, "granularity": "hour"}))["data"]
    assert len(data["buckets"]) == 24 and data["buckets"][12] == f"{day}T12:00:00Z"
    (runs,) = data["series"]
    assert runs["values"][12] == 2 and sum(runs["values"]) == 2


def test_series_reach_the_last_days_of_the_calendar(client: Any, clock: Clock) -> None:
    for granularity in ("day", "hour"):
        params = {"from": "9999-12-30", "to": "9999-12-30", "granularity": granularity}
        answer = get(client, "/v1/usage/timeseries", params)
        assert answer.status_code == 200, body(answer)
        assert body(answer)["data"]["buckets"][-1].startswith("9999-12-30")
        last = get(client, "/v1/usage/timeseries", {**params, "to": "9999-12-31"})
        assert last.status_code == 400 and body(last)["error"]["field"] == "to"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"granularity": "week"}, "granularity"),
        ({"from": "2026-05-10", "to": "2026-05-01"}, "from"),
        ({"from": "2026-05-01", "to": "2026-05-10", "granularity": "hour"}, "to"),
        ({"from": "2024-01-01", "to": "2026-05-10"}, "to"),
        ({"nope": "1"}, "nope"),
    ],
)
def test_series_refuse_bad_periods(client: Any, clock: Clock, params: dict[str, str], field: str) -> None:
    answer = get(client, "/v1/usage/timeseries", params)
    assert answer.status_code == 400
    assert body(answer)["error"]["field"] == field


def test_series_need_usage_read(client: Any, container: Container) -> None:
    secret = "mk_test_write_only_key_000000000001"
    write_only = ApiKey(
        key_id=key_id_for(secret),
        key_hash=hash_key(secret),
        organization_id="ORG-26-090500",
        name="write only",
        scopes=frozenset({METERING_WRITE}),
        created_at=datetime.now(UTC),
    )
    container.catalog.put_api_key(write_only)
    answer = get(client, "/v1/usage/timeseries", key=secret)
    assert answer.status_code == 403 and body(answer)["error"]["code"] == "insufficient_scope"
