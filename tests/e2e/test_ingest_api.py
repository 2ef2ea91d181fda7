"""Ingesting usage through the HTTP API (chalice.test.Client over the real app, on the in-memory stores)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.container import Container
from chalicelib.domain.models import ServiceLine
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY, auth
from tests.support import in_memory_container, pending_records, stored_events, take_queued_messages

EVENTS = "/v1/metering/events"
BATCH = "/v1/metering/events/batch"
ORG = "ORG-26-090500"
OTHER_ORG = "ORG-26-100200"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
OTHER_ORG_LINE = "LIN-26-100201"
T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The app over the in-memory stores: what ingest stores, refuses and queues is the service's, on any store."""
    yield from in_memory_container(monkeypatch)


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock(container: Container) -> Clock:
    """The container's clock, fixed at T0 and moved by hand."""
    fixed = Clock(T0)
    container.clock = fixed
    return fixed


def body(response: Any) -> Any:
    """A response body with numbers as Decimal (quantities are compared as numbers)."""
    return json.loads(response.body, parse_float=Decimal)


def post(
    client: Any, payload: Any, key: str | None = FULL_KEY, path: str = EVENTS, idempotency_key: str | None = None
) -> Any:
    headers = auth(key) if key is not None else {"Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    raw = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    return client.http.post(path, headers=headers, body=raw)


def event(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"service_line_id": TALENT, "meter": "talent.hours", "quantity": 2.5}
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


def raw_event(quantity: str, extra: str = "") -> str:
    """An event body as JSON text, with the quantity spelled exactly as given."""
    return '{"service_line_id": "' + TALENT + '", "meter": "talent.hours", "quantity": ' + quantity + extra + "}"


def snapshot(container: Container) -> tuple[int, int]:
    return len(stored_events(container)), len(pending_records(container))


def error_of(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = body(response)["error"]
    assert error["request_id"]
    return error


def assert_refused(
    client: Any, container: Container, payload: Any, status: int, code: str, key: str | None = FULL_KEY
) -> dict[str, Any]:
    """Post and check the refusal: its status and code, and that nothing was stored or queued."""
    before = snapshot(container)
    response = post(client, payload, key)
    assert response.status_code == status, response.body
    error = error_of(response)
    assert error["code"] == code
    assert snapshot(container) == before
    assert take_queued_messages(container) == []
    return error


def refusal_problems(
    client: Any,
    container: Container,
    payload: Any,
    status: int,
    code: str,
    *,
    field: str | None = None,
    field_prefix: str | None = None,
    key: str | None = FULL_KEY,
    path: str = EVENTS,
) -> list[str]:
    """What is wrong with the refusal of one payload (empty when it is refused as it should be)."""
    label = repr(payload)[:100]
    before = snapshot(container)
    response = post(client, payload, key, path)
    problems: list[str] = []
    if response.status_code != status:
        problems.append(f"{label}: status {response.status_code}, expected {status}: {response.body[:200]!r}")
    else:
        error = error_of(response)
        if error["code"] != code:
            problems.append(f"{label}: code {error['code']}, expected {code}")
        if field is not None and error.get("field") != field:
            problems.append(f"{label}: field {error.get('field')}, expected {field}")
        if field_prefix is not None and not str(error.get("field")).startswith(field_prefix):
            problems.append(f"{label}: field {error.get('field')}, expected {field_prefix}...")
    after = snapshot(container)
    if after != before:
        problems.append(f"{label}: (events, pending) went from {before} to {after}")
    if take_queued_messages(container):
        problems.append(f"{label}: a message was queued")
    return problems


def put_line(container: Container, line_id: str, rates: dict[str, str], status: str = "active", **kw: Any) -> None:
    values: dict[str, Any] = {
        "id": line_id,
        "organization_id": ORG,
        "workspace_id": "WS-26-000101",
        "name": f"test line {line_id}",
        "product_line": "talent",
        "status": status,
        "rates": {k: Decimal(v) for k, v in rates.items()},
        "created_at": datetime(2026, 4, 1, tzinfo=UTC),
    }
    values.update(kw)
    container.catalog.put_service_line(ServiceLine(**values))


# -- acceptance --------------------------------------------------------------------


def test_accepted_event_answers_201_with_exactly_the_record(client: Any, container: Container, clock: Clock) -> None:
    response = post(client, event(quantity=2.5, idempotency_key="shape-1"))
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    record = body(response)["data"]
    assert set(record) == {"id", "status", "service_line_id", "meter", "quantity", "recorded_at"}
    assert record["id"].startswith("USAGE-26-")
    assert record["status"] == "accepted"
    assert record["service_line_id"] == TALENT
    assert record["meter"] == "talent.hours"
    assert record["quantity"] == Decimal("2.5")
    assert record["recorded_at"] == "2026-05-10T12:00:00.000Z"


def test_accepted_event_is_stored_with_defaults_and_queued(client: Any, container: Container, clock: Clock) -> None:
    response = post(client, event(quantity=3, metadata={"talent_id": "T-7", "billable": True}))
    assert response.status_code == 201
    event_id = body(response)["data"]["id"]
    (item,) = stored_events(container)
    assert item["id"] == event_id
    assert item["organization_id"] == ORG
    assert item["workspace_id"] == "WS-26-000101"
    assert item["unit"] == "hours"
    assert item["quantity"] == 3
    assert item["period_date"] == "2026-05-10"  # the UTC date of receipt
    assert item["source"] == "api"
    assert item["metadata"] == {"talent_id": "T-7", "billable": True}
    (message,) = take_queued_messages(container)
    assert [pair[1] for pair in message["events"]] == [event_id]
    assert message["org"] == ORG


def accepted_quantity_problems(client: Any, container: Container, cases: list[tuple[str, Decimal]]) -> list[str]:
    problems: list[str] = []
    for raw_quantity, expected in cases:
        before = {e["id"] for e in stored_events(container)}
        response = post(client, raw_event(raw_quantity))
        if response.status_code != 201:
            problems.append(f"{raw_quantity}: status {response.status_code}: {response.body[:200]!r}")
            continue
        record = body(response)["data"]
        if record["quantity"] != expected:
            problems.append(f"{raw_quantity}: answered quantity {record['quantity']}, expected {expected}")
        new = [e for e in stored_events(container) if e["id"] not in before]
        if [e["id"] for e in new] != [record["id"]] or new[0]["quantity"] != expected:
            problems.append(f"{raw_quantity}: stored {new}, expected one event of {expected}")
    return problems


def test_quantity_edges_are_accepted_as_numbers(client: Any, container: Container, clock: Clock) -> None:
    cases = [
        ("0", Decimal(0)),
        ("1000000000000", Decimal(10) ** 12),
        ("1000000000000.000000000", Decimal(10) ** 12),
        ("999999999999.999999999", Decimal("999999999999.999999999")),
        ("0.000000001", Decimal("0.000000001")),
        ("2.50000000000000", Decimal("2.5")),
        ("1e3", Decimal(1000)),
        ("1E+12", Decimal(10) ** 12),
        ("25e-1", Decimal("2.5")),
    ]
    assert accepted_quantity_problems(client, container, cases) == []


def test_quantity_spelled_with_trailing_zeros_or_exponent_is_accepted(
    client: Any, container: Container, clock: Clock
) -> None:
    cases = [
        ("0.00000000000", Decimal(0)),  # zero with more than 9 trailing zeros
        ("0e200", Decimal(0)),  # zero with an exponent beyond DynamoDB's number range
        ("1.0000000000000000000000000000000000000000", Decimal(1)),  # trailing zeros beyond 38 digits
    ]
    assert accepted_quantity_problems(client, container, cases) == []


def test_explicit_period_date_and_source_are_kept(client: Any, container: Container, clock: Clock) -> None:
    response = post(client, event(period_date="2026-05-09", source="timesheets.v2"))
    assert response.status_code == 201
    (item,) = stored_events(container)
    assert item["period_date"] == "2026-05-09" and item["source"] == "timesheets.v2"


# -- refusals: each with its own code, nothing written ----------------------------------


def test_unknown_service_line_is_404(client: Any, container: Container, clock: Clock) -> None:
    error = assert_refused(client, container, event(service_line_id="LIN-26-999999"), 404, "service_line_not_found")
    assert error["field"] == "service_line_id"


def test_another_organizations_service_line_is_404(client: Any, container: Container, clock: Clock) -> None:
    assert_refused(client, container, event(service_line_id=OTHER_ORG_LINE), 404, "service_line_not_found")
    assert_refused(client, container, event(), 404, "service_line_not_found", key=OTHER_ORG_KEY)


def test_paused_service_line_is_409(client: Any, container: Container, clock: Clock) -> None:
    put_line(container, "LIN-26-555001", {"talent.hours": "95"}, status="paused")
    error = assert_refused(client, container, event(service_line_id="LIN-26-555001"), 409, "service_line_inactive")
    assert error["field"] == "service_line_id"


def test_unknown_meter_is_404(client: Any, container: Container, clock: Clock) -> None:
    error = assert_refused(client, container, event(meter="talent.minutes"), 404, "meter_not_found")
    assert error["field"] == "meter"


def test_archived_meter_is_422_even_when_the_line_has_a_rate_for_it(
    client: Any, container: Container, clock: Clock
) -> None:
    put_line(
        container,
        "LIN-26-555002",
        {"intelligence.legacy_reports": "5", "intelligence.queries": "1"},
        product_line="intelligence",
    )
    error = assert_refused(
        client,
        container,
        event(service_line_id="LIN-26-555002", meter="intelligence.legacy_reports"),
        422,
        "meter_archived",
    )
    assert error["field"] == "meter"
    # the same line takes its active meter
    assert post(client, event(service_line_id="LIN-26-555002", meter="intelligence.queries")).status_code == 201


def test_meter_not_permitted_by_the_line_is_422(client: Any, container: Container, clock: Clock) -> None:
    error = assert_refused(
        client, container, event(service_line_id=AGENT, meter="talent.days"), 422, "meter_not_permitted"
    )
    assert error["field"] == "meter"
    assert_refused(client, container, event(meter="agent.runs"), 422, "meter_not_permitted")


def test_key_without_metering_write_scope_is_403(client: Any, container: Container, clock: Clock) -> None:
    assert_refused(client, container, event(), 403, "insufficient_scope", key=READ_KEY)
    before = snapshot(container)
    response = post(client, {"events": [event()]}, key=READ_KEY, path=BATCH)
    assert response.status_code == 403 and error_of(response)["code"] == "insufficient_scope"
    assert snapshot(container) == before


def test_missing_or_unknown_key_is_401(client: Any, container: Container, clock: Clock) -> None:
    problems: list[str] = []
    for key in (None, "mk_not_a_real_key", ""):
        problems += refusal_problems(client, container, event(), 401, "unauthorized", key=key)
        problems += refusal_problems(client, container, {"events": [event()]}, 401, "unauthorized", key=key, path=BATCH)
    assert problems == []


def test_body_that_is_not_json_is_400_invalid_json(client: Any, container: Container, clock: Clock) -> None:
    bodies: list[Any] = [
        "",
        "   ",
        "{",
        '{"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": 1,}',
        "{'service_line_id': 'LIN-26-084729'}",
        raw_event("NaN"),
        raw_event("Infinity"),
        raw_event("-Infinity"),
        raw_event("1", extra=', "metadata": {"n": NaN}'),
        b"\xff\xfe",
        "[" * 5000,
    ]
    problems: list[str] = []
    for raw in bodies:
        problems += refusal_problems(client, container, raw, 400, "invalid_json")
    assert problems == []


def test_body_that_is_not_an_object_is_400(client: Any, container: Container, clock: Clock) -> None:
    problems: list[str] = []
    for raw in ("[]", '[{"quantity": 1}]', '"event"', "5", "null", "true"):
        problems += refusal_problems(client, container, raw, 400, "validation_error", field="body")
    assert problems == []


def test_unknown_field_is_400_naming_it(client: Any, container: Container, clock: Clock) -> None:
    error = assert_refused(client, container, event(colour="blue"), 400, "validation_error")
    assert error["field"] == "colour"
    assert "unknown field" in error["message"]


def test_invalid_field_is_400_naming_it(client: Any, container: Container, clock: Clock) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"quantity": "1.5"}, "quantity"),
        ({"quantity": "2"}, "quantity"),
        ({"quantity": "1e3"}, "quantity"),
        ({"quantity": "NaN"}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"quantity": False}, "quantity"),
        ({"quantity": None}, "quantity"),
        ({"quantity": [1]}, "quantity"),
        ({"quantity": {"value": 1}}, "quantity"),
        ({"quantity": -1}, "quantity"),
        ({"quantity": -0.5}, "quantity"),
        ({"quantity": 10**12 + 1}, "quantity"),
        ({"quantity": 1e13}, "quantity"),
        ({"quantity": 0.0000000001}, "quantity"),
        ({"quantity": 1.0000000001}, "quantity"),
        ({"quantity": ...}, "quantity"),
        ({"service_line_id": ...}, "service_line_id"),
        ({"service_line_id": 84729}, "service_line_id"),
        ({"service_line_id": ""}, "service_line_id"),
        ({"service_line_id": None}, "service_line_id"),
        ({"meter": ...}, "meter"),
        ({"meter": ["talent.hours"]}, "meter"),
        ({"period_date": "2026-13-01"}, "period_date"),
        ({"period_date": "2026-02-29"}, "period_date"),
        ({"period_date": "10/05/2026"}, "period_date"),
        ({"period_date": "2025-05-08"}, "period_date"),  # 367 days back: past the 366-day late window
        ({"period_date": "2026-05-12"}, "period_date"),
        ({"period_date": 20260510}, "period_date"),
        ({"source": "Upper Case"}, "source"),
        ({"source": ""}, "source"),
        ({"source": 7}, "source"),
    ]
    problems: list[str] = []
    for changes, field in cases:
        problems += refusal_problems(client, container, event(**changes), 400, "validation_error", field=field)
    assert problems == []


def test_bad_idempotency_key_is_400(client: Any, container: Container, clock: Clock) -> None:
    problems: list[str] = []
    for key in ("k" * 129, "", "has space", "ключ", 42, True, "tab\tkey", "nul\u0000"):
        payload = event(idempotency_key=key)
        problems += refusal_problems(client, container, payload, 400, "validation_error", field="idempotency_key")
    assert problems == []


def test_idempotency_key_of_128_characters_is_accepted(client: Any, container: Container, clock: Clock) -> None:
    assert post(client, event(idempotency_key="k" * 128)).status_code == 201


def test_trailing_newline_is_refused_in_keys_and_source(client: Any, container: Container, clock: Clock) -> None:
    # "abc" and "abc\n" must not become two idempotency keys, nor "a\n" a metadata key.
    problems: list[str] = []
    for changes, field in (
        ({"idempotency_key": "abc\n"}, "idempotency_key"),
        ({"source": "api\n"}, "source"),
        ({"metadata": {"talent_id\n": "T-1"}}, None),
    ):
        problems += refusal_problems(
            client, container, event(**changes), 400, "validation_error", field=field, field_prefix=field or "metadata"
        )
    assert problems == []


def test_bad_metadata_is_400(client: Any, container: Container, clock: Clock) -> None:
    cases: list[Any] = [
        [],
        "talent=T-1",
        {"nested": {"a": 1}},
        {"list": [1, 2]},
        {"nothing": None},
        {"bad key": 1},
        {"": 1},
        {"k" * 65: 1},
        {f"k{i}": i for i in range(17)},
        {"a": "x" * 200, "b": "x" * 200, "c": "x" * 200},
        {"long": "x" * 257},
        {"huge": 10**18},
        {"precise": 0.0000000001},
    ]
    problems: list[str] = []
    for metadata in cases:
        payload = event(metadata=metadata)
        problems += refusal_problems(client, container, payload, 400, "validation_error", field_prefix="metadata")
    assert problems == []


def test_metadata_with_a_lone_surrogate_is_a_client_error_not_a_500(
    client: Any, container: Container, clock: Clock
) -> None:
    # Valid JSON ("\ud800" is a legal escape) that no UTF-8 store can hold: refuse it, do not crash.
    raw = raw_event("1", extra=', "metadata": {"a": "\\ud800"}')
    before = snapshot(container)
    response = post(client, raw)
    assert response.status_code == 400, response.body
    assert error_of(response)["code"] in ("validation_error", "invalid_json")
    assert snapshot(container) == before


def test_refusal_naming_a_field_with_a_lone_surrogate_can_still_be_sent(
    client: Any, container: Container, clock: Clock
) -> None:
    # The 400 names the offending field; its name must not make the answer unencodable as UTF-8.
    for raw in (raw_event("1", extra=', "\\udc00": 1'), raw_event("1", extra=', "metadata": {"\\udc00": 1}')):
        before = snapshot(container)
        try:
            response = post(client, raw)
        except UnicodeEncodeError as exc:
            raise AssertionError(f"the answer to {raw!r} cannot be sent as UTF-8: {exc}") from None
        assert response.status_code == 400
        assert error_of(response)["code"] == "validation_error"
        assert snapshot(container) == before


def test_oversized_body_is_413(client: Any, container: Container, clock: Clock) -> None:
    padded = event(metadata={"note": "x"}, padding=" " * (16 * 1024))
    assert_refused(client, container, padded, 413, "payload_too_large")


def test_body_just_under_the_limit_is_parsed(client: Any, container: Container, clock: Clock) -> None:
    raw = json.dumps(event())
    raw = raw + " " * (16 * 1024 - len(raw))
    assert len(raw.encode()) == 16 * 1024
    assert post(client, raw).status_code == 201


# -- idempotency -----------------------------------------------------------------


def test_replay_returns_the_original_record_with_200(client: Any, container: Container, clock: Clock) -> None:
    first = post(client, event(quantity=8, idempotency_key="replay-1", metadata={"talent_id": "T-1"}))
    assert first.status_code == 201
    clock.advance(timedelta(minutes=5))
    replay = post(client, event(quantity=8.0, idempotency_key="replay-1", metadata={"talent_id": "T-1"}))
    assert replay.status_code == 200
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert body(replay)["data"] == body(first)["data"]  # same id, same recorded_at
    assert len(stored_events(container)) == 1
    assert len(take_queued_messages(container)) == 1  # only the first acceptance is rolled up


def test_idempotency_window_is_48_hours(client: Any, container: Container, clock: Clock) -> None:
    payload = event(quantity=4, period_date="2026-05-10", idempotency_key="window-1")
    first = body(post(client, payload))["data"]

    clock.advance(timedelta(hours=47, minutes=59))
    replay = post(client, payload)
    assert replay.status_code == 200
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert body(replay)["data"]["id"] == first["id"]
    assert body(replay)["data"]["recorded_at"] == first["recorded_at"]
    assert len(stored_events(container)) == 1

    clock.now = T0 + timedelta(hours=48, minutes=1)
    reused = post(client, payload)
    assert reused.status_code == 201
    assert "Idempotent-Replayed" not in reused.headers
    second = body(reused)["data"]
    assert second["id"] != first["id"]
    assert second["recorded_at"] == "2026-05-12T12:01:00.000Z"
    events = stored_events(container)
    assert sorted(e["id"] for e in events) == sorted([first["id"], second["id"]])
    assert all(e["quantity"] == 4 for e in events)

    # the key now answers with the new event
    clock.advance(timedelta(minutes=1))
    again = post(client, payload)
    assert again.status_code == 200 and body(again)["data"]["id"] == second["id"]
    assert len(stored_events(container)) == 2


def test_replay_without_period_date_after_utc_midnight_is_still_a_replay(
    client: Any, container: Container, clock: Clock
) -> None:
    # A client retries the very same body (no period_date) a few minutes later, across midnight UTC.
    clock.now = datetime(2026, 5, 10, 23, 58, tzinfo=UTC)
    payload = event(quantity=1, idempotency_key="midnight-1")
    first = post(client, payload)
    assert first.status_code == 201
    clock.now = datetime(2026, 5, 11, 0, 2, tzinfo=UTC)
    replay = post(client, payload)
    assert replay.status_code == 200, replay.body
    assert body(replay)["data"]["id"] == body(first)["data"]["id"]
    assert len(stored_events(container)) == 1


def test_same_key_different_payload_is_409_and_writes_nothing(client: Any, container: Container, clock: Clock) -> None:
    original = event(quantity=8, idempotency_key="conflict-1", period_date="2026-05-10", metadata={"talent_id": "T-1"})
    first = body(post(client, original))["data"]
    take_queued_messages(container)
    before = stored_events(container), pending_records(container)

    clock.advance(timedelta(hours=1))
    for changes in (
        {"quantity": 9},
        {"quantity": 8.000000001},
        {"meter": "talent.days"},
        {"period_date": "2026-05-09"},
        {"metadata": {"talent_id": "T-2"}},
        {"metadata": ...},
        {"source": "other"},
    ):
        response = post(client, event(**{**original, **changes}))
        assert response.status_code == 409, changes
        error = error_of(response)
        assert error["code"] == "idempotency_conflict"
        assert error["field"] == "idempotency_key"
        assert first["id"] in error["message"]
        assert (stored_events(container), pending_records(container)) == before, changes
        assert take_queued_messages(container) == [], changes
    # the original is untouched and still replayable
    replay = post(client, original)
    assert replay.status_code == 200 and body(replay)["data"] == first


def test_idempotency_keys_are_scoped_to_the_organization(client: Any, container: Container, clock: Clock) -> None:
    mine = post(client, event(quantity=1, idempotency_key="shared-key"))
    assert mine.status_code == 201
    theirs = post(
        client, event(service_line_id=OTHER_ORG_LINE, quantity=7, idempotency_key="shared-key"), OTHER_ORG_KEY
    )
    assert theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert body(theirs)["data"]["id"] != body(mine)["data"]["id"]
    by_org = {e["organization_id"]: e for e in stored_events(container)}
    assert set(by_org) == {ORG, OTHER_ORG}
    assert by_org[OTHER_ORG]["quantity"] == 7 and by_org[ORG]["quantity"] == 1
    # each organization's replay finds its own event
    assert body(post(client, event(quantity=1, idempotency_key="shared-key")))["data"]["id"] == body(mine)["data"]["id"]


def test_events_without_a_key_are_never_deduplicated(client: Any, container: Container, clock: Clock) -> None:
    ids = {body(post(client, event(quantity=1)))["data"]["id"] for _ in range(3)}
    assert len(ids) == 3
    assert len(stored_events(container)) == 3


# -- batch -----------------------------------------------------------------------


def test_batch_partial_success_reports_each_item_in_order(client: Any, container: Container, clock: Clock) -> None:
    earlier = body(post(client, event(quantity=5, idempotency_key="earlier-1")))["data"]
    take_queued_messages(container)
    items = [
        event(quantity=1, idempotency_key="b-0"),  # 0 accepted
        event(service_line_id="LIN-26-999999", quantity=1),  # 1 rejected: unknown line
        event(quantity=5, idempotency_key="earlier-1"),  # 2 duplicate of an earlier request
        event(quantity=1, idempotency_key="b-0"),  # 3 duplicate of item 0 in this batch
        event(quantity=2, idempotency_key="b-0"),  # 4 same key as item 0, other payload: conflict
        event(quantity="x"),  # 5 rejected: validation
        event(service_line_id=AGENT, meter="agent.tokens", quantity=1200),  # 6 accepted, no key
        event(quantity=6, idempotency_key="earlier-1"),  # 7 conflict with the earlier request
        event(meter="intelligence.legacy_reports"),  # 8 rejected: archived meter
    ]
    response = post(client, {"events": items}, path=BATCH)
    assert response.status_code == 200
    results = body(response)["data"]
    assert [r["index"] for r in results] == list(range(len(items)))
    assert [r["status"] for r in results] == [
        "accepted",
        "rejected",
        "duplicate",
        "duplicate",
        "conflict",
        "rejected",
        "accepted",
        "conflict",
        "rejected",
    ]
    accepted0, accepted6 = results[0]["data"], results[6]["data"]
    assert accepted0["quantity"] == 1 and accepted0["status"] == "accepted"
    assert accepted6["quantity"] == 1200 and accepted6["meter"] == "agent.tokens"
    assert set(accepted0) == {"id", "status", "service_line_id", "meter", "quantity", "recorded_at"}
    assert results[1]["error"]["code"] == "service_line_not_found" and "data" not in results[1]
    assert results[2]["data"] == earlier
    assert results[3]["data"]["id"] == accepted0["id"]
    assert results[4]["error"]["code"] == "idempotency_conflict" and "data" not in results[4]
    assert results[5]["error"]["code"] == "validation_error"
    assert results[5]["error"]["field"] == "events[5].quantity"
    assert results[7]["error"]["code"] == "idempotency_conflict"
    assert results[8]["error"]["code"] == "meter_archived"

    stored = stored_events(container)
    assert sorted(e["id"] for e in stored) == sorted([earlier["id"], accepted0["id"], accepted6["id"]])
    b0 = next(e for e in stored if e["id"] == accepted0["id"])
    assert b0["quantity"] == 1  # the conflicting item 4 did not overwrite it
    (message,) = take_queued_messages(container)
    assert sorted(pair[1] for pair in message["events"]) == sorted([accepted0["id"], accepted6["id"]])


def test_batch_replayed_whole_returns_the_same_ids(client: Any, container: Container, clock: Clock) -> None:
    items = [event(quantity=i, idempotency_key=f"whole-{i}") for i in range(1, 6)]
    first = body(post(client, {"events": items}, path=BATCH))["data"]
    clock.advance(timedelta(hours=3))
    again = body(post(client, {"events": items}, path=BATCH))["data"]
    assert [r["status"] for r in first] == ["accepted"] * 5
    assert [r["status"] for r in again] == ["duplicate"] * 5
    assert [r["data"]["id"] for r in again] == [r["data"]["id"] for r in first]
    assert [r["data"]["quantity"] for r in again] == [1, 2, 3, 4, 5]
    assert len(stored_events(container)) == 5


def test_batch_results_follow_request_order(client: Any, container: Container, clock: Clock) -> None:
    quantities = [7, 3, 9, 1, 5, 2, 8]
    items = [event(quantity=q, metadata={"position": i}) for i, q in enumerate(quantities)]
    results = body(post(client, {"events": items}, path=BATCH))["data"]
    assert [r["index"] for r in results] == list(range(7))
    assert [r["data"]["quantity"] for r in results] == quantities
    by_id = {e["id"]: e for e in stored_events(container)}
    assert [by_id[r["data"]["id"]]["metadata"]["position"] for r in results] == list(range(7))


def test_batch_of_100_is_accepted_and_101_refused(client: Any, container: Container, clock: Clock) -> None:
    too_many = {"events": [event(quantity=1, idempotency_key=f"many-{i}") for i in range(101)]}
    before = snapshot(container)
    response = post(client, too_many, path=BATCH)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "validation_error" and error["field"] == "events"
    assert snapshot(container) == before
    assert take_queued_messages(container) == []

    hundred = {"events": too_many["events"][:100]}
    results = body(post(client, hundred, path=BATCH))["data"]
    assert len(results) == 100 and {r["status"] for r in results} == {"accepted"}
    assert len(stored_events(container)) == 100
    (message,) = take_queued_messages(container)
    assert len(message["events"]) == 100


def test_batch_body_refusals(client: Any, container: Container, clock: Clock) -> None:
    cases: list[tuple[Any, int, str]] = [
        ({"events": []}, 400, "validation_error"),
        ({}, 400, "validation_error"),
        ({"events": {"0": {}}}, 400, "validation_error"),
        ({"events": None}, 400, "validation_error"),
        ({"events": [event()], "extra": 1}, 400, "validation_error"),
        ([event()], 400, "validation_error"),
        ('{"events": [', 400, "invalid_json"),
        ('{"events": [' + raw_event("NaN") + "]}", 400, "invalid_json"),
        ({"events": [event(padding="x" * (1024 * 1024))]}, 413, "payload_too_large"),
    ]
    problems: list[str] = []
    for payload, status, code in cases:
        problems += refusal_problems(client, container, payload, status, code, path=BATCH)
    assert problems == []


def test_batch_where_every_item_is_refused_writes_nothing(client: Any, container: Container, clock: Clock) -> None:
    items = [event(service_line_id=OTHER_ORG_LINE), event(quantity=True), 5, event(meter="nope")]
    before = snapshot(container)
    response = post(client, {"events": items}, path=BATCH)
    assert response.status_code == 200
    results = body(response)["data"]
    assert [r["status"] for r in results] == ["rejected"] * 4
    assert [r["error"]["code"] for r in results] == [
        "service_line_not_found",
        "validation_error",
        "validation_error",
        "meter_not_found",
    ]
    assert results[2]["error"]["field"] == "events[2]"
    assert snapshot(container) == before
    assert take_queued_messages(container) == []


def test_batch_item_that_cannot_be_stored_does_not_sink_the_others(
    client: Any, container: Container, clock: Clock
) -> None:
    # Item 1 is a number DynamoDB cannot hold as written (zero times 10^200). The caller must get an
    # answer for every item, and whatever was stored must be reported and handed to the rollups.
    items = [raw_event("1", extra=', "idempotency_key": "s-0"'), raw_event("0e200", extra=', "idempotency_key": "s-1"')]
    raw = '{"events": [' + ", ".join(items) + "]}"
    response = post(client, raw, path=BATCH)
    assert response.status_code == 200, response.body
    results = body(response)["data"]
    assert results[0]["status"] == "accepted"
    accepted = [r["data"]["id"] for r in results if r["status"] == "accepted"]
    assert sorted(e["id"] for e in stored_events(container)) == sorted(accepted)
    (message,) = take_queued_messages(container)
    assert sorted(pair[1] for pair in message["events"]) == sorted(accepted)


def test_batch_keys_are_scoped_to_the_organization(client: Any, container: Container, clock: Clock) -> None:
    mine = body(post(client, {"events": [event(idempotency_key="org-b")]}, path=BATCH))["data"][0]
    theirs = body(
        post(client, {"events": [event(service_line_id=OTHER_ORG_LINE, idempotency_key="org-b")]}, OTHER_ORG_KEY, BATCH)
    )["data"][0]
    assert mine["status"] == theirs["status"] == "accepted"
    assert mine["data"]["id"] != theirs["data"]["id"]
    assert len(stored_events(container)) == 2


# -- the Idempotency-Key header ----------------------------------------------------------


def test_idempotency_key_header_keys_a_single_event(client: Any, container: Container, clock: Clock) -> None:
    """A client following the common convention (the key in a header) gets its retries deduplicated."""
    first = post(client, event(quantity=3, period_date="2026-05-09"), idempotency_key="hdr-1")
    assert first.status_code == 201, first.body
    clock.advance(timedelta(minutes=3))
    retry = post(client, event(quantity=3, period_date="2026-05-09"), idempotency_key="hdr-1")
    assert retry.status_code == 200, retry.body
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert body(retry)["data"] == body(first)["data"]
    # the header's key is the event's key: the body may name it too, or a replay may use either
    both = post(client, event(quantity=3, period_date="2026-05-09", idempotency_key="hdr-1"), idempotency_key="hdr-1")
    body_only = post(client, event(quantity=3, period_date="2026-05-09", idempotency_key="hdr-1"))
    assert both.status_code == body_only.status_code == 200
    assert body(both)["data"]["id"] == body(body_only)["data"]["id"] == body(first)["data"]["id"]
    # another payload under the header's key is a conflict
    conflict = post(client, event(quantity=4, period_date="2026-05-09"), idempotency_key="hdr-1")
    assert conflict.status_code == 409 and error_of(conflict)["code"] == "idempotency_conflict"
    (stored,) = stored_events(container)
    assert stored["idempotency_key"] == "hdr-1" and stored["pk"] == f"EV#{ORG}#K#hdr-1"


def test_header_and_body_keys_that_differ_are_400_naming_the_field(
    client: Any, container: Container, clock: Clock
) -> None:
    before = snapshot(container)
    response = post(client, event(idempotency_key="body-key"), idempotency_key="header-key")
    assert response.status_code == 400, response.body
    error = error_of(response)
    assert error["code"] == "validation_error"
    assert error["field"] == "idempotency_key"
    assert "Idempotency-Key" in error["message"]
    assert snapshot(container) == before
    assert take_queued_messages(container) == []
    for bad in ("", "has space", "x" * 129):
        bad_header = post(client, event(), idempotency_key=bad)
        assert bad_header.status_code == 400, bad
        assert error_of(bad_header)["field"] == "Idempotency-Key"
    assert snapshot(container) == before


def test_batch_header_keys_each_event_by_its_position(client: Any, container: Container, clock: Clock) -> None:
    items = [
        event(quantity=1, period_date="2026-05-08"),
        event(service_line_id=AGENT, meter="agent.runs", quantity=12, period_date="2026-05-09"),
        event(quantity=2, period_date="2026-05-10", idempotency_key="own-key"),
        event(service_line_id=AGENT, meter="agent.tokens", quantity=48000, metadata={"model": "large"}),
    ]
    first = post(client, {"events": items}, path=BATCH, idempotency_key="import-7")
    assert [r["status"] for r in body(first)["data"]] == ["accepted"] * 4
    keys = {e["id"]: e["idempotency_key"] for e in stored_events(container)}
    assert [keys[r["data"]["id"]] for r in body(first)["data"]] == ["import-7:0", "import-7:1", "own-key", "import-7:3"]

    clock.advance(timedelta(hours=2))
    retry = post(client, {"events": items}, path=BATCH, idempotency_key="import-7")
    assert [r["status"] for r in body(retry)["data"]] == ["duplicate"] * 4
    assert [r["data"] for r in body(retry)["data"]] == [r["data"] for r in body(first)["data"]]
    # the same header with an event changed: that item conflicts, the others are replays
    changed = [items[0], {**items[1], "quantity": 13}, items[2], items[3]]
    third = body(post(client, {"events": changed}, path=BATCH, idempotency_key="import-7"))["data"]
    assert [r["status"] for r in third] == ["duplicate", "conflict", "duplicate", "duplicate"]
    assert len(stored_events(container)) == 4
    # an event keyed by the header alone can be replayed on its own under its derived key
    alone = post(client, items[1], idempotency_key="import-7:1")
    assert alone.status_code == 200 and body(alone)["data"] == body(first)["data"][1]["data"]


def test_batch_header_leaves_room_for_the_index(client: Any, container: Container, clock: Clock) -> None:
    items = [event(quantity=i) for i in range(100)]
    too_long = post(client, {"events": items}, path=BATCH, idempotency_key="k" * 126)
    assert too_long.status_code == 400
    assert error_of(too_long)["field"] == "Idempotency-Key"
    assert stored_events(container) == []
    longest = body(post(client, {"events": items}, path=BATCH, idempotency_key="k" * 125))["data"]
    assert {r["status"] for r in longest} == {"accepted"}
    assert max(len(e["idempotency_key"]) for e in stored_events(container)) == 128


def test_openapi_documents_the_idempotency_key_header(client: Any, container: Container) -> None:
    document = json.loads(client.http.get("/openapi.json").body)
    for path in (EVENTS, BATCH):
        parameters = document["paths"][path]["post"].get("parameters", [])
        (header,) = [p for p in parameters if p["in"] == "header" and p["name"] == "Idempotency-Key"]
        assert header["description"]


def test_agent_runs_are_whole(client: Any, container: Container, clock: Clock) -> None:
    def runs(meter: str, quantity: str) -> str:
        return '{"service_line_id": "' + AGENT + '", "meter": "' + meter + '", "quantity": ' + quantity + "}"

    for quantity in ("0.5", "100.5", "0.000000001"):
        error = assert_refused(client, container, runs("agent.runs", quantity), 400, "validation_error")
        assert error["field"] == "quantity"
    for quantity in ("3", "4.000", "5E0"):  # a whole number however it is spelled
        assert post(client, runs("agent.runs", quantity)).status_code == 201
    assert post(client, runs("agent.run_seconds", "0.5")).status_code == 201
