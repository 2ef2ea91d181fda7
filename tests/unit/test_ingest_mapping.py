"""The one mapping behind the ingest dialects: customer, meter, value, key and line of a foreign event."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.catalog import read
from chalicelib.dialects.ingest_mapping import mapping_for
from chalicelib.domain.ingest_mapping import (
    EventTypeRule,
    ForeignEvent,
    IngestMapping,
    event_key,
    map_event,
    parse_mapping,
    unix_timestamp,
    value_of,
)
from chalicelib.domain.models import Meter, organization_uuid
from chalicelib.domain.usage import MAX_IDEMPOTENCY_KEY, check_idempotency_key
from chalicelib.errors import ErrorCode, MeteringError

ORG = "ORG-26-090500"
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
RUNS = Meter(
    id="agent.runs",
    uuid="ade9d848-54a8-568b-81f1-13f650ffbbf0",
    name="Agent Runs",
    unit="runs",
    product_lines=("agent_gateway",),
    description="runs",
)
TOKENS = Meter(
    id="agent.tokens",
    uuid="4605a6c6-7bf4-525a-8ccd-b53bda05eb40",
    name="Agent Tokens",
    unit="tokens",
    product_lines=("agent_gateway",),
    description="tokens",
)


def event(
    properties: dict[str, Any],
    customer: str | None = ORG,
    event_type: str = "agent.runs",
    timestamp: datetime | None = None,
    dialect: str = "metronome",
) -> ForeignEvent:
    return ForeignEvent(
        dialect=dialect,  # type: ignore[arg-type]
        key=event_key("metronome", "tx-1"),
        customer=customer,
        event_type=event_type,
        properties=properties,
        timestamp=timestamp,
        fields={"customer": "customer_id", "event_type": "event_type", "properties": "properties"},
    )


def refusal(fn: Any) -> MeteringError:
    with pytest.raises(MeteringError) as caught:
        fn()
    return caught.value


# -- the default mapping: no setup ---------------------------------------------------------


def test_default_mapping_takes_the_organization_by_id_or_uuid_and_the_event_type_as_the_meter() -> None:
    mapping = IngestMapping(ORG)
    for customer in (ORG, organization_uuid(ORG)):
        mapped = map_event(mapping, event({"value": 3, "model": "large"}, customer), RUNS, NOW)
        assert mapped.line_by_rule  # the organization's default active line for the meter takes it
        draft = mapped.draft
        assert (draft.meter, draft.quantity, draft.source) == ("agent.runs", Decimal(3), "metronome")
        assert draft.metadata == {"model": "large"}  # the value property is the quantity, not metadata
        assert draft.idempotency_key == "metronome tx-1"
        assert (draft.period_date, draft.event_time, draft.period_date_given) == (NOW.date(), None, False)


def test_another_customer_is_not_found_without_saying_whether_it_exists() -> None:
    error = refusal(lambda: map_event(IngestMapping(ORG), event({"value": 1}, "ORG-26-100200"), RUNS, NOW))
    assert error.error_code is ErrorCode.CUSTOMER_NOT_FOUND
    assert error.field == "customer_id"
    assert "ORG-26-100200" in error.message


def test_an_unknown_meter_is_named_with_the_dialects_field() -> None:
    error = refusal(lambda: map_event(IngestMapping(ORG), event({"value": 1}, event_type="nope"), None, NOW))
    assert error.error_code is ErrorCode.METER_NOT_FOUND
    assert error.field == "event_type"


def test_the_quantity_is_the_value_property_as_a_number_or_text() -> None:
    mapping = IngestMapping(ORG)
    mapped = map_event(mapping, event({"value": "0.5"}, event_type="agent.tokens"), TOKENS, NOW)
    assert mapped.draft.quantity == Decimal("0.5")
    error = refusal(lambda: map_event(mapping, event({"count": 1}), RUNS, NOW))
    assert error.field == "properties.value" and "required" in error.message


def test_a_meter_counting_events_or_distinct_values_takes_an_event_without_value_as_one() -> None:
    mapping = IngestMapping(ORG)
    counting = RUNS.model_copy(update={"aggregation": "count"})
    assert map_event(mapping, event({"model": "large"}), counting, NOW).draft.quantity == 1
    users = TOKENS.model_copy(update={"aggregation": "unique_count", "value_property": "user_id"})
    draft = map_event(mapping, event({"user_id": "u-7"}, event_type="agent.tokens"), users, NOW).draft
    assert (draft.quantity, draft.metadata) == (Decimal(1), {"user_id": "u-7"})  # counted where the meter reads it
    error = refusal(lambda: map_event(mapping, event({"value": 2}, event_type="agent.tokens"), users, NOW))
    assert error.field == "properties.user_id"


def test_timestamp_is_the_event_time_and_its_utc_date_the_period_date() -> None:
    moment = datetime(2026, 5, 9, 23, 30, tzinfo=UTC)
    draft = map_event(IngestMapping(ORG), event({"value": 1}, timestamp=moment), RUNS, NOW).draft
    assert (draft.event_time, draft.period_date, draft.period_date_given) == (moment, date(2026, 5, 9), True)


# -- overrides -------------------------------------------------------------------------------


def test_overrides_add_aliases_rename_event_types_and_pin_a_line() -> None:
    mapping = parse_mapping(
        ORG,
        {
            "customer_aliases": ["cus_Demo"],
            "event_types": {
                "llm_tokens": {"meter": "agent.tokens", "value_property": "tokens"},
                "run": {"meter": "agent.runs", "service_line_id": "LIN-26-091100", "customer_property": "account"},
            },
        },
    )
    mapped = map_event(mapping, event({"tokens": 7}, "cus_Demo", "llm_tokens"), TOKENS, NOW)
    assert (mapped.draft.meter, mapped.draft.quantity, mapped.line_by_rule) == ("agent.tokens", Decimal(7), True)
    stripe_like = event({"account": ORG, "value": "2"}, None, "run", dialect="stripe")
    mapped = map_event(mapping, stripe_like, RUNS, NOW)
    assert (mapped.draft.service_line_id, mapped.line_by_rule) == ("LIN-26-091100", False)
    assert mapped.draft.metadata == {}  # the customer property is not metadata
    assert mapping.rule("agent.runs") == EventTypeRule(meter="agent.runs")  # unmapped types keep the default


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"customer_aliases": "cus_1"},
        {"event_types": {"x": {"value_property": "v"}}},
        {"event_types": {"x": {"meter": "agent.runs", "price": "1"}}},
        {"event_types": {"x": {"meter": ""}}},
        {"aliases": []},
    ],
)
def test_a_malformed_override_is_refused_when_loaded(data: Any) -> None:
    with pytest.raises(ValueError):
        parse_mapping(ORG, data)


def test_the_catalogs_overrides_load_and_an_organization_without_one_gets_the_default() -> None:
    assert set(read("ingest_mappings")) <= {ORG, "ORG-26-100200"}
    assert mapping_for(ORG).rule("llm_tokens").meter == "agent.tokens"
    assert mapping_for("ORG-26-999999") == IngestMapping("ORG-26-999999")


# -- keys --------------------------------------------------------------------------------------


def test_keys_are_namespaced_per_dialect_and_never_a_native_key() -> None:
    keys = {
        event_key("metronome", "abc"),
        event_key("stripe", "abc"),
        event_key("cloudevents", "abc", "1"),
        event_key("cloudevents", "ab", "c1"),
    }
    assert keys == {"metronome abc", "stripe abc", "cloudevents abc 1", "cloudevents ab c1"}
    for key in keys:  # a native or meter API key is printable ASCII without spaces: never one of these
        with pytest.raises(MeteringError):
            check_idempotency_key(key)


def test_long_or_unprintable_identities_are_hashed_into_a_form_no_readable_key_has() -> None:
    long_id = "x" * 200
    hashed = event_key("metronome", long_id)
    assert len(hashed) <= MAX_IDEMPOTENCY_KEY and hashed.startswith("metronome sha256 ")
    assert event_key("metronome", long_id) == hashed  # stable
    assert event_key("stripe", long_id).startswith("stripe sha256 ") and event_key("metronome", long_id + "y") != hashed
    spaced = event_key("cloudevents", "https://example.com/a b", "1")
    assert spaced.startswith("cloudevents sha256:") and len(spaced.split(" ")) == 2
    # a readable CloudEvents key has three fields: a source named "sha256:<hex>" cannot take a hashed key's place
    assert len(event_key("cloudevents", spaced.split(" ")[1], "1").split(" ")) == 3
    assert event_key("metronome", "é") != event_key("metronome", "e")


# -- values and timestamps --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected", [(3, Decimal(3)), (Decimal("2.5"), Decimal("2.5")), ("25", 25), ("0.125", Decimal("0.125"))]
)
def test_values_are_numbers_or_decimal_text(raw: Any, expected: Decimal) -> None:
    assert value_of(raw, "v") == expected


@pytest.mark.parametrize("raw", ["", "abc", "1,5", "NaN", "Infinity", True, None, [1], "-1"])
def test_a_value_that_is_no_quantity_is_refused(raw: Any) -> None:
    error = refusal(lambda: value_of(raw, "payload[value]"))
    assert error.field == "payload[value]"


def test_unix_timestamps_are_seconds_within_the_late_window_and_not_in_the_future() -> None:
    assert unix_timestamp(int(NOW.timestamp()) - 60, NOW, "timestamp") == NOW - timedelta(seconds=60)
    assert unix_timestamp(str(int(NOW.timestamp())), NOW, "timestamp") == NOW
    for bad in (int((NOW + timedelta(hours=1)).timestamp()), int((NOW - timedelta(days=400)).timestamp()), "x", 1.5):
        assert refusal(lambda bad=bad: unix_timestamp(bad, NOW, "timestamp")).field == "timestamp"
