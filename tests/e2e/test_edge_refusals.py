"""Edge inputs that used to answer 500 or be read wrongly: each is now a clear 400 (or is accepted
as documented), and a refused call costs the caller nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.api.schemas import UsageQuery
from chalicelib.container import Container
from chalicelib.domain import cursors
from chalicelib.domain.auth import CATALOG_READ
from chalicelib.services import catalog_admin
from tests.conftest import FULL_KEY, auth
from tests.support import Clock, body, in_memory_container, stored_events
from tests.unit.test_service_lines import RATED_ORG, put_custom_org

ORG = "ORG-26-090500"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
AGENT_METER_ID = "agent.tokens"


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The app over the in-memory stores: these refusals are the app's own, whatever it stores in."""
    yield from in_memory_container(monkeypatch)


@pytest.fixture
def clock(container: Container) -> Clock:
    fixed = Clock(NOW)
    container.clock = fixed
    return fixed


def report(client: Any, timestamp: str, key: str) -> Any:
    payload = {"meterName": AGENT_METER_ID, "customerId": ORG, "value": 5, "timestamp": timestamp}
    headers = {**auth(FULL_KEY), "Idempotency-Key": key}
    return client.http.post("/v1/meter-usage", headers=headers, body=json.dumps(payload))


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_timestamp_with_no_utc_instant_is_a_400_and_writes_nothing(
    client: Any, container: Container, clock: Clock, timestamp: str
) -> None:
    response = report(client, timestamp, "edge-1")
    assert response.status_code == 400, response.body
    assert "timestamp" in response.body.decode()
    assert stored_events(container) == []


def test_a_date_only_timestamp_is_that_days_start_in_utc(client: Any, container: Container, clock: Clock) -> None:
    response = report(client, "2026-11-28", "edge-2")
    assert response.status_code == 202, response.body
    (event,) = stored_events(container)
    assert event["event_time"].startswith("2026-11-28T00:00:00")


def forged(position: dict[str, Any], container: Container, query: dict[str, Any]) -> str:
    """A cursor signed with the service's secret (as someone who knew it could) around a crafted position."""
    filters = UsageQuery.model_validate(query).model_dump(mode="json", exclude={"cursor", "limit"})
    bound = cursors.binding(ORG, "usage", filters)
    return cursors.encode(position, bound, container.settings.cursor_secret)


@pytest.mark.parametrize(
    "inner",
    [
        {"pk": "EV#ORG-26-100200#K#x", "sk": "EV", "gsi1pk": "ORG-26-100200#LIN-26-100201", "gsi1sk": "2026-11-01#"},
        {"pk": 5, "sk": "EV", "gsi1pk": "x", "gsi1sk": "y"},
        {"pk": "EV#ORG-26-090500#K#x"},
        {"pk": "EV#ORG-26-090500#K#x", "sk": "EV", "gsi1pk": "ORG-26-090500#LIN-26-084729", "extra": "1"},
        "not a key",
    ],
)
def test_a_forged_cursor_whose_start_key_is_not_the_listings_is_refused(
    client: Any, container: Container, clock: Clock, inner: Any
) -> None:
    token = forged({"l": "LIN-26-084729", "k": inner}, container, {})
    response = client.http.get(f"/v1/usage?cursor={token}", headers=auth())
    assert response.status_code == 400, response.body
    assert body(response)["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize("value", ["0", "20261128", "1700000000", "2026-11-28T00:00:00Z"])
def test_a_period_bound_that_is_not_a_date_is_refused(client: Any, clock: Clock, value: str) -> None:
    for path in ("/v1/usage", "/v1/usage/summary"):
        response = client.http.get(f"{path}?to={value}", headers=auth())
        assert response.status_code == 400, response.body
        assert body(response)["error"]["field"] == "to"


def test_from_after_to_names_from(client: Any, clock: Clock) -> None:
    for path in ("/v1/usage", "/v1/usage/summary"):
        response = client.http.get(f"{path}?from=2026-11-20&to=2026-11-10", headers=auth())
        assert response.status_code == 400, response.body
        assert body(response)["error"]["field"] == "from"


def test_a_call_refused_for_its_scope_is_not_charged(client: Any, container: Container, clock: Clock) -> None:
    full_key = put_custom_org(container, api_calls_monthly=5)
    catalog_only = catalog_admin.issue_key(container.catalog, RATED_ORG, frozenset({CATALOG_READ}), "catalog").secret
    for _ in range(12):  # more refusals than the month allows calls
        response = client.http.get("/v1/usage", headers=auth(catalog_only))
        assert response.status_code == 403, response.body
        assert body(response)["error"]["code"] == "insufficient_scope"
    for _ in range(5):
        assert client.http.get("/v1/usage", headers=auth(full_key)).status_code == 200
    response = client.http.get("/v1/usage", headers=auth(full_key))
    assert response.status_code == 429, response.body


def test_the_documents_own_example_date_is_within_the_stages_late_window(
    client: Any, container: Container, clock: Clock
) -> None:
    assert container.settings.period_days_back == 366
    event = {"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": 8, "period_date": "2026-04-14"}
    response = client.http.post("/v1/metering/events", headers=auth(), body=json.dumps(event))
    assert response.status_code == 201, response.body
    assert report(client, "2026-04-14T09:00:00Z", "edge-late").status_code == 202
    event["period_date"] = "2025-11-26"  # 367 days back
    response = client.http.post("/v1/metering/events", headers=auth(), body=json.dumps(event))
    assert response.status_code == 400, response.body
    assert "366 days back" in body(response)["error"]["message"]
    assert report(client, "2025-11-26T09:00:00Z", "edge-later").status_code == 400
