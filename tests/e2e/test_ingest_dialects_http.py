"""The ingest dialects over the real app (chalice.test.Client, in-memory stores): what each answers.

Metronome `POST /v1/ingest`, CloudEvents `POST /api/v1/events` and Stripe
`POST /v1/billing/meter_events`: their validation, duplicates, partial refusals, scopes,
plan quota and errors, each in the dialect's own shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from chalicelib.container import Container
from chalicelib.services.rate_limit import ApiCallLimiter
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY
from tests.support import Clock, body, in_memory_container

ORG = "ORG-26-090500"
ORG_UUID = "a6b50534-cbd6-59e4-ad5e-053883b86cc2"
OTHER_ORG = "ORG-26-100200"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
STAMP = (T0 - timedelta(hours=1)).isoformat()
FORM = "application/x-www-form-urlencoded"
HOUR_AGO = str(int((T0 - timedelta(hours=1)).timestamp()))


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    yield from in_memory_container(monkeypatch)


@pytest.fixture
def clock(container: Container) -> Clock:
    fixed = Clock(T0)
    container.clock = fixed
    return fixed


def post(client: Any, path: str, data: Any, content_type: str = "application/json", key: str | None = FULL_KEY,
         headers: dict[str, str] | None = None) -> Any:  # fmt: skip
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    payload = data if isinstance(data, str) else json.dumps(data)
    return client.http.post(path, headers=all_headers, body=payload)


def metronome_event(transaction_id: str, value: Any = 1, **overrides: Any) -> dict[str, Any]:
    event = {
        "transaction_id": transaction_id,
        "customer_id": ORG,
        "event_type": "agent.runs",
        "timestamp": STAMP,
        "properties": {"value": value},
    }
    return {**event, **overrides}


def cloud_event(event_id: str, value: Any = 1, **overrides: Any) -> dict[str, Any]:
    event = {"specversion": "1.0", "id": event_id, "source": "gw", "type": "agent.runs", "subject": ORG}
    return {**event, "time": STAMP, "data": {"value": value}, **overrides}


def form(**params: str) -> str:
    return urlencode(params)


def stripe_form(identifier: str | None = None, value: str = "1", **extra: str) -> str:
    params = {"event_name": "agent.runs", "payload[stripe_customer_id]": ORG, "payload[value]": value, **extra}
    if identifier is not None:
        params["identifier"] = identifier
    return urlencode(params)


def listed(client: Any, key: str = FULL_KEY) -> list[dict[str, Any]]:
    response = client.http.get("/v1/usage?limit=100", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.body
    return list(body(response)["data"])


# -- Metronome: POST /v1/ingest ----------------------------------------------------------------


def test_metronome_answers_200_with_no_body_and_stores_each_event(client: Any, clock: Clock) -> None:
    response = post(client, "/v1/ingest", [metronome_event("t1", 2), metronome_event("t2", 3, customer_id=ORG_UUID)])
    assert (response.status_code, response.body) == (200, b"")
    events = listed(client)
    assert sorted(e["quantity"] for e in events) == [2, 3]
    assert {(e["source"], e["service_line_id"], e["period_date"]) for e in events} == {
        ("metronome", AGENT, "2026-05-10")
    }


@pytest.mark.parametrize(
    "data,field",
    [
        ({"transaction_id": "t1"}, "usage"),
        ([], "usage"),
        ([metronome_event(f"t{i}") for i in range(101)], "usage"),
    ],
)
def test_metronome_body_must_be_an_array_of_1_to_100_events(client: Any, clock: Clock, data: Any, field: str) -> None:
    response = post(client, "/v1/ingest", data)
    assert response.status_code == 400
    assert body(response) == {
        "message": "The body must be a JSON array of 1 to 100 usage events.",
        "code": "validation_error",
    }
    assert listed(client) == []


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"timestamp": None}, "usage[1].timestamp: is required (RFC 3339, with a zone)"),
        ({"timestamp": "2026-05-10T10:00:00"}, "usage[1].timestamp: must carry a time zone (for example Z)"),
        ({"transaction_id": ""}, "usage[1].transaction_id: is required and must be a non-empty string"),
        ({"event_type": "no.such"}, "usage[1].event_type: no meter is named 'no.such'"),
        ({"properties": {"value": "many"}}, "usage[1].properties.value: must be a number (or a string holding one)"),
        ({"properties": {"value": 1, "nested": {"a": 1}}}, "usage[1].properties.nested: values must be strings"),
        ({"customer": ORG}, "usage[1].customer: unknown field"),
    ],
)
def test_metronome_a_bad_event_stores_nothing_of_the_request_and_is_named(
    client: Any, clock: Clock, bad: dict[str, Any], message: str
) -> None:
    response = post(client, "/v1/ingest", [metronome_event("good"), {**metronome_event("bad"), **bad}])
    assert response.status_code == 400
    answer = body(response)
    assert answer["message"].startswith(message) and answer["message"].endswith("Nothing was stored.")
    assert set(answer) == {"message", "code"}
    assert listed(client) == []


def test_metronome_ignores_a_known_transaction_id_whatever_its_payload(client: Any, clock: Clock) -> None:
    assert post(client, "/v1/ingest", [metronome_event("t1", 2)]).status_code == 200
    again = post(client, "/v1/ingest", [metronome_event("t1", 2), metronome_event("t1", 9)])
    assert (again.status_code, again.body) == (200, b"")
    assert [e["quantity"] for e in listed(client)] == [2]  # duplicates are ignored, as Metronome does


def test_metronome_an_event_the_catalog_refuses_is_named_and_the_others_stay_stored_once(
    client: Any, container: Container, clock: Clock
) -> None:
    container.catalog.set_service_line_status(ORG, TALENT, "paused", None)
    timesheet = metronome_event("ts-1", event_type="timesheet", properties={"hours": 8})  # pinned to TALENT
    request = [metronome_event("run-1", 4), timesheet]
    for _ in range(2):  # the same request again stores the first event no second time
        response = post(client, "/v1/ingest", request)
        assert response.status_code == 400
        assert body(response) == {
            "message": f"usage[1]: Service line '{TALENT}' is paused and accepts no usage. The other event of "
            "this request is stored; sending the request again stores each at most once.",
            "code": "service_line_inactive",
        }
    assert [(e["meter"], e["quantity"]) for e in listed(client)] == [("agent.runs", 4)]
    container.catalog.set_service_line_status(ORG, TALENT, "active", None)
    assert post(client, "/v1/ingest", request).status_code == 200
    assert sorted((e["meter"], e["quantity"]) for e in listed(client)) == [("agent.runs", 4), ("talent.hours", 8)]


# -- CloudEvents: POST /api/v1/events -------------------------------------------------------------


def test_cloudevents_single_batch_and_plain_json_are_taken_and_answered_204(client: Any, clock: Clock) -> None:
    single = post(client, "/api/v1/events", cloud_event("e1", 1), "application/cloudevents+json")
    assert (single.status_code, single.body) == (204, b"")
    batch = [cloud_event("e2", 2), cloud_event("e3", 3, time=None)]
    assert post(client, "/api/v1/events", batch, "application/cloudevents-batch+json").status_code == 204
    assert post(client, "/api/v1/events", [cloud_event("e4", 4)]).status_code == 204  # application/json array
    events = {e["quantity"]: e for e in listed(client)}
    assert sorted(events) == [1, 2, 3, 4]
    assert events[3]["recorded_at"] == "2026-05-10T12:00:00.000Z"  # no time: the time it arrived


def test_cloudevents_duplicates_are_by_source_and_id_and_dropped_whatever_their_payload(
    client: Any, clock: Clock
) -> None:
    for event in (cloud_event("e1", 1), cloud_event("e1", 5), cloud_event("e1", 2, source="other")):
        assert post(client, "/api/v1/events", event, "application/cloudevents+json").status_code == 204
    assert sorted(e["quantity"] for e in listed(client)) == [1, 2]


@pytest.mark.parametrize(
    "data,content_type,detail",
    [
        (cloud_event("e1"), "application/cloudevents-batch+json", "must be a JSON array of CloudEvents"),
        ([cloud_event("e1")], "application/cloudevents+json", "must be one CloudEvent"),
        (cloud_event("e1", specversion="0.3"), "application/cloudevents+json", 'event.specversion: must be "1.0"'),
        (cloud_event("e1", data="3"), "application/cloudevents+json", "event.data: must be a JSON object"),
        (cloud_event("e1", Tenant="x"), "application/cloudevents+json", "event.Tenant: is not a CloudEvents attr"),
        (cloud_event("e1", subject=OTHER_ORG), "application/cloudevents+json", "event.subject: no customer"),
        ([cloud_event("e1"), cloud_event("e2", "x")], "application/cloudevents-batch+json", "events[1].data.value"),
    ],
)
def test_cloudevents_a_malformed_request_is_a_problem_and_stores_nothing(
    client: Any, clock: Clock, data: Any, content_type: str, detail: str
) -> None:
    response = post(client, "/api/v1/events", data, content_type)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = body(response)
    assert (problem["type"], problem["title"], problem["status"]) == ("about:blank", "Bad Request", 400)
    assert detail in problem["detail"]
    assert problem["instance"] == f"urn:request:{response.headers['X-Request-Id']}"
    assert listed(client) == []


# -- Stripe: POST /v1/billing/meter_events ----------------------------------------------------------


def test_stripe_answers_the_meter_event_object_and_the_same_identifier_the_same_object(
    client: Any, clock: Clock
) -> None:
    first = post(client, "/v1/billing/meter_events", stripe_form("id-1", "2", timestamp=HOUR_AGO), FORM)
    assert first.status_code == 200, first.body
    assert body(first) == {
        "object": "billing.meter_event",
        "created": int(T0.timestamp()),
        "event_name": "agent.runs",
        "identifier": "id-1",
        "livemode": False,
        "payload": {"stripe_customer_id": ORG, "value": "2"},
        "timestamp": int(HOUR_AGO),
    }
    clock.now = T0 + timedelta(minutes=5)
    replay = post(client, "/v1/billing/meter_events", stripe_form("id-1", "2", timestamp=HOUR_AGO), FORM)
    assert replay.body == first.body
    conflict = post(client, "/v1/billing/meter_events", stripe_form("id-1", "3", timestamp=HOUR_AGO), FORM)
    assert conflict.status_code == 400
    assert body(conflict)["error"]["type"] == "idempotency_error"
    assert body(conflict)["error"]["param"] == "identifier"
    assert [e["quantity"] for e in listed(client)] == [2]


def test_stripe_without_identifier_each_request_is_an_event_unless_an_idempotency_key_names_it(
    client: Any, clock: Clock
) -> None:
    one, two = (post(client, "/v1/billing/meter_events", stripe_form(), FORM) for _ in range(2))
    assert body(one)["identifier"] != body(two)["identifier"]
    assert body(one)["identifier"].startswith("USAGE-")
    keyed = [post(client, "/v1/billing/meter_events", stripe_form(), FORM, headers={"Idempotency-Key": "k-1"})]
    keyed.append(post(client, "/v1/billing/meter_events", stripe_form(), FORM, headers={"Idempotency-Key": "k-1"}))
    assert body(keyed[0]) == body(keyed[1]) and body(keyed[0])["identifier"] == "k-1"
    assert len(listed(client)) == 3


def test_stripe_takes_a_form_not_json(client: Any, clock: Clock) -> None:
    response = post(client, "/v1/billing/meter_events", {"event_name": "agent.runs", "payload": {"value": "1"}})
    assert response.status_code == 400
    error = body(response)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request")
    assert "form-encoded" in error["message"]


@pytest.mark.parametrize(
    "data,param,code",
    [
        (stripe_form(colour="red"), "colour", "parameter_unknown"),
        (form(**{"payload[stripe_customer_id]": ORG, "payload[value]": "1"}), "event_name", "parameter_missing"),
        (form(event_name="agent.runs"), "payload", "parameter_missing"),
        (stripe_form(value="ten"), "payload[value]", "validation_error"),
        (form(event_name="agent.runs", **{"payload[value]": "1"}), "payload[stripe_customer_id]", "validation_error"),
        (stripe_form(timestamp="1000"), "timestamp", "validation_error"),
        (stripe_form(timestamp=str(int((T0 + timedelta(hours=1)).timestamp()))), "timestamp", "validation_error"),
        (stripe_form(identifier="x" * 101), "identifier", "validation_error"),
        (stripe_form(**{"payload[stripe_customer_id]": OTHER_ORG}), "payload[stripe_customer_id]",
         "customer_not_found"),
        (stripe_form(value="2.5"), "payload[value]", "validation_error"),  # agent.runs counts whole runs
        (form(event_name="no.such", **{"payload[stripe_customer_id]": ORG, "payload[value]": "1"}), "event_name",
         "meter_not_found"),
    ],
)  # fmt: skip
def test_stripe_refusals_are_400_invalid_request_errors_naming_the_param(
    client: Any, clock: Clock, data: str, param: str, code: str
) -> None:
    response = post(client, "/v1/billing/meter_events", data, FORM)
    assert response.status_code == 400, response.body
    error = body(response)["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert listed(client) == []


# -- what every dialect shares: scopes, authentication, the plan's quota, unknown paths -----------------

REQUESTS = [
    ("/v1/ingest", "application/json", [metronome_event("t-1")]),
    ("/api/v1/events", "application/cloudevents+json", cloud_event("e-1")),
    ("/v1/billing/meter_events", FORM, stripe_form("s-1")),
]


def shape(response: Any) -> str:
    answer = body(response)
    if "error" in answer and "type" in answer["error"]:
        return "stripe"
    if "detail" in answer and response.headers["Content-Type"] == "application/problem+json":
        return "problem"
    assert set(answer) == {"message", "code"}, answer
    return "metronome"


def test_each_dialect_needs_the_metering_write_scope_and_a_valid_key_and_answers_in_its_shape(
    client: Any, clock: Clock
) -> None:
    shapes = ["metronome", "problem", "stripe"]
    for (path, content_type, data), expected in zip(REQUESTS, shapes, strict=True):
        refused = post(client, path, data, content_type, key=READ_KEY)
        assert (refused.status_code, shape(refused)) == (403, expected)
        assert "metering:write" in refused.body.decode()
        unknown = post(client, path, data, content_type, key="mk_wrong")
        assert (unknown.status_code, shape(unknown)) == (401, expected)
        assert post(client, path, data, content_type, key=None).status_code == 401
    assert listed(client) == []


def test_every_call_counts_against_the_plan_and_a_used_up_month_is_429_in_each_shape(
    client: Any, container: Container, clock: Clock
) -> None:
    requests = [
        ("/v1/ingest", "application/json", [metronome_event("t-1", customer_id=OTHER_ORG, event_type="talent.hours")]),
        ("/api/v1/events", "application/cloudevents+json", cloud_event("e-1", subject=OTHER_ORG, type="talent.hours")),
        ("/v1/billing/meter_events", FORM, form(event_name="talent.hours",
                                                **{"payload[stripe_customer_id]": OTHER_ORG, "payload[value]": "1"})),
    ]  # fmt: skip
    remaining = []
    for path, content_type, data in requests:
        response = post(client, path, data, content_type, key=OTHER_ORG_KEY)
        assert response.status_code in (200, 204), response.body
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [remaining[0], remaining[0] - 1, remaining[0] - 2]
    assert len(listed(client, OTHER_ORG_KEY)) == 3

    container.catalog.add_api_calls(OTHER_ORG, "2026-05", 50_000)
    container.limiter = ApiCallLimiter(container.catalog)  # a fresh process reads the month's count
    for (path, content_type, data), expected in zip(requests, ["metronome", "problem", "stripe"], strict=True):
        response = post(client, path, data, content_type, key=OTHER_ORG_KEY)
        assert (response.status_code, shape(response)) == (429, expected)
        assert response.headers["Retry-After"]


def test_unknown_paths_and_methods_under_each_dialect_answer_in_its_shape(client: Any, clock: Clock) -> None:
    auth = {"Authorization": f"Bearer {FULL_KEY}"}
    assert shape(client.http.get("/api/v1/events", headers=auth)) == "problem"
    assert client.http.get("/api/v1/events", headers=auth).status_code == 405
    assert shape(client.http.post("/api/v1/meters", headers=auth, body="{}")) == "problem"
    assert shape(client.http.post("/v1/billing/meters", headers=auth, body="")) == "stripe"
    assert shape(client.http.get("/v1/ingest", headers=auth)) == "metronome"
