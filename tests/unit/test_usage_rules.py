"""The rules of a valid usage report, its fingerprint and how events roll up (chalicelib/domain/usage.py)."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.domain.usage import (
    CountableEvent,
    RollupKey,
    UsageDraft,
    check_idempotency_key,
    check_metadata,
    check_period_date,
    check_quantity,
    check_timestamp,
    chunk_events,
    coalesce,
    rollup_keys,
)
from chalicelib.errors import ErrorCode, MeteringError

TODAY = date(2026, 5, 10)
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


def refused(call: Any, *args: Any) -> MeteringError:
    """The validation error a rule raises for these arguments (fails the test if it accepts them)."""
    with pytest.raises(MeteringError) as caught:
        call(*args)
    assert caught.value.error_code is ErrorCode.VALIDATION_ERROR
    assert caught.value.http_status == 400
    return caught.value


# -- check_quantity --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Decimal(0)),
        (1, Decimal(1)),
        (42, Decimal(42)),
        (10**12, Decimal(10) ** 12),
        (Decimal("2.5"), Decimal("2.5")),
        (Decimal("0.000000001"), Decimal("0.000000001")),
        (Decimal("999999999999.999999999"), Decimal("999999999999.999999999")),
        (Decimal("1000000000000.000000000"), Decimal(10) ** 12),
        (Decimal("1E+3"), Decimal(1000)),
    ],
)
def test_quantity_accepts_json_numbers_in_range(value: Any, expected: Decimal) -> None:
    quantity = check_quantity(value)
    assert isinstance(quantity, Decimal)
    assert quantity == expected


@pytest.mark.parametrize(
    "value",
    [Decimal("1.50000000000000"), Decimal("7.0000000000"), Decimal("3.1234567890000")],
)
def test_quantity_trailing_zeros_do_not_count_as_decimal_places(value: Decimal) -> None:
    assert check_quantity(value) == value


@pytest.mark.parametrize("value", [Decimal("0.00000000000"), Decimal("0E-20"), Decimal("0.000000000000000")])
def test_quantity_zero_with_trailing_zeros_is_zero_and_allowed(value: Decimal) -> None:
    # Zero written with many trailing zeros has no decimal places that matter.
    assert check_quantity(value) == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "negative"),
        (Decimal("-0.5"), "negative"),
        (Decimal("-0.000000001"), "negative"),
        (10**12 + 1, "at most"),
        (Decimal("1000000000000.000000001"), "at most"),
        (Decimal("1E+13"), "at most"),
        (Decimal("0.0000000001"), "decimal places"),
        (Decimal("1.1234567891"), "decimal places"),
        (Decimal("NaN"), "finite"),
        (Decimal("sNaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        (Decimal("-Infinity"), "finite"),
    ],
)
def test_quantity_refuses_out_of_range_values(value: Any, message: str) -> None:
    error = refused(check_quantity, value)
    assert error.field == "quantity"
    assert message in error.message


@pytest.mark.parametrize("value", [True, False, "1", "1.5", "1e3", "NaN", None, [1], {"n": 1}, 1.5, float("nan")])
def test_quantity_must_be_a_json_number_not_a_bool_string_or_float(value: Any) -> None:
    error = refused(check_quantity, value)
    assert error.field == "quantity"


def test_quantity_error_names_the_field_given() -> None:
    assert refused(check_quantity, "1", "events[3].quantity").field == "events[3].quantity"


@settings(max_examples=200, deadline=None)
@given(st.decimals(min_value=0, max_value=10**12, places=9, allow_nan=False, allow_infinity=False))
def test_quantity_any_value_in_range_with_nine_places_is_accepted_exactly(value: Decimal) -> None:
    assert check_quantity(value) == value


# -- check_period_date -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-05-10", TODAY),
        ("2026-03-09", TODAY - timedelta(days=62)),
        ("2026-05-11", TODAY + timedelta(days=1)),
        ("2026-04-30", date(2026, 4, 30)),
    ],
)
def test_period_date_within_62_days_back_and_1_day_ahead(value: str, expected: date) -> None:
    assert check_period_date(value, TODAY) == expected


@pytest.mark.parametrize("value", ["2026-03-08", "2026-05-12", "2025-05-10", "2027-05-10"])
def test_period_date_outside_the_window_is_refused(value: str) -> None:
    error = refused(check_period_date, value, TODAY)
    assert error.field == "period_date"


@pytest.mark.parametrize(
    "value",
    ["2026-5-10", "2026/05/10", "10-05-2026", "20260510", "2026-05-10T00:00:00Z", " 2026-05-10", "", None, 20260510],
)
def test_period_date_must_be_yyyy_mm_dd(value: Any) -> None:
    error = refused(check_period_date, value, TODAY)
    assert "YYYY-MM-DD" in error.message


@pytest.mark.parametrize("value", ["2026-04-31", "2026-02-29", "2026-13-01", "2026-00-10", "2026-05-00"])
def test_period_date_must_be_a_real_calendar_date(value: str) -> None:
    error = refused(check_period_date, value, TODAY)
    assert "real calendar date" in error.message


def test_period_date_leap_day_is_real_in_a_leap_year() -> None:
    assert check_period_date("2028-02-29", date(2028, 3, 1)) == date(2028, 2, 29)


# -- check_timestamp -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-05-10T11:00:00Z", datetime(2026, 5, 10, 11, 0, tzinfo=UTC)),
        ("2026-05-10T11:00:00z", datetime(2026, 5, 10, 11, 0, tzinfo=UTC)),
        ("2026-05-10T13:30:00+02:00", datetime(2026, 5, 10, 11, 30, tzinfo=UTC)),
        ("2026-05-10T12:04:59Z", datetime(2026, 5, 10, 12, 4, 59, tzinfo=UTC)),
        ("2026-03-09T00:00:00Z", datetime(2026, 3, 9, tzinfo=UTC)),
        ("2026-05-10T11:00:00.123+00:00", datetime(2026, 5, 10, 11, 0, 0, 123000, tzinfo=UTC)),
    ],
)
def test_timestamp_with_a_zone_is_read_as_utc(value: str, expected: datetime) -> None:
    parsed = check_timestamp(value, NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        "2026-05-10T11:00:00",  # no zone
        "2026-05-10T12:05:01Z",  # beyond the 5-minute clock skew
        "2026-05-11T12:00:00Z",
        "2026-03-08T23:59:59Z",  # past the 62-day late window
        "yesterday",
        "",
        "2026-05-10T11:00:00.000000000000000000000000000Z",  # longer than 40 characters
        None,
        1778414400,
    ],
)
def test_timestamp_refused(value: Any) -> None:
    error = refused(check_timestamp, value, NOW)
    assert error.field == "timestamp"


def test_timestamp_offset_is_applied_before_the_future_check() -> None:
    # 13:00 at +02:00 is 11:00 UTC: in the past, accepted; 13:00 at -02:00 is 15:00 UTC: future.
    assert check_timestamp("2026-05-10T13:00:00+02:00", NOW) == datetime(2026, 5, 10, 11, tzinfo=UTC)
    refused(check_timestamp, "2026-05-10T13:00:00-02:00", NOW)


# -- check_metadata --------------------------------------------------------------


def test_metadata_absent_is_empty() -> None:
    assert check_metadata(None) == {}


def test_metadata_keeps_strings_numbers_and_booleans() -> None:
    value = {"talent_id": "T-1", "hours": 8, "rate": Decimal("1.25"), "billable": True, "ok.key:x-y_Z9": False}
    assert check_metadata(value) == value


@pytest.mark.parametrize("value", ["x", 1, [], ["a"], True])
def test_metadata_must_be_an_object(value: Any) -> None:
    error = refused(check_metadata, value)
    assert error.field == "metadata"


@pytest.mark.parametrize("item", [None, [1], {"nested": 1}, 1.5])
def test_metadata_values_must_be_string_number_or_boolean(item: Any) -> None:
    error = refused(check_metadata, {"k": item})
    assert error.field == "metadata.k"


@pytest.mark.parametrize(
    "item",
    [Decimal(10) ** 18, -(Decimal(10) ** 18), 10**18, Decimal("0.0000000001"), Decimal("NaN"), Decimal("Infinity")],
)
def test_metadata_numbers_are_bounded(item: Any) -> None:
    refused(check_metadata, {"n": item})


def test_metadata_numbers_just_inside_the_bounds() -> None:
    value = {"big": 10**18 - 1, "neg": -(10**18 - 1), "fine": Decimal("0.000000001")}
    assert check_metadata(value) == value


def test_metadata_strings_at_most_256_characters() -> None:
    assert check_metadata({"s": "x" * 256}) == {"s": "x" * 256}
    refused(check_metadata, {"s": "x" * 257})


@pytest.mark.parametrize("key", ["a", "A.b:c-d_e", "x" * 64, "0"])
def test_metadata_key_pattern_accepts(key: str) -> None:
    assert check_metadata({key: 1}) == {key: 1}


@pytest.mark.parametrize("key", ["", "x" * 65, "has space", "slash/key", "ключ", "a#b", "emoji😀"])
def test_metadata_key_pattern_refuses(key: str) -> None:
    error = refused(check_metadata, {key: 1})
    assert error.field is not None and error.field.startswith("metadata")


@pytest.mark.parametrize("key", ["abc\n", "region\n"])
def test_metadata_key_with_a_trailing_newline_is_refused(key: str) -> None:
    # "$" in a regex also matches before a final newline; the pattern must cover the whole key.
    refused(check_metadata, {key: 1})


def test_metadata_at_most_16_keys() -> None:
    sixteen = {f"k{i}": i for i in range(16)}
    assert check_metadata(sixteen) == sixteen
    error = refused(check_metadata, {**sixteen, "k16": 16})
    assert "16" in error.message


def metadata_of_size(size: int) -> dict[str, str]:
    """Three string values (each under the 256-character limit) whose compact JSON is `size` bytes."""
    room = size - len('{"a":"","b":"","c":""}')
    values = {"a": "v" * (room - 2 * (room // 3)), "b": "v" * (room // 3), "c": "v" * (room // 3)}
    assert len(json.dumps(values, separators=(",", ":"))) == size
    return values


def test_metadata_at_most_512_bytes_as_json() -> None:
    assert check_metadata(metadata_of_size(512)) == metadata_of_size(512)
    error = refused(check_metadata, metadata_of_size(513))
    assert "512" in error.message


def test_metadata_byte_limit_counts_utf8_bytes_not_characters() -> None:
    # Two values of 126 two-byte characters: 267 characters of JSON but 519 bytes in UTF-8.
    value = {"a": "é" * 126, "b": "é" * 126}
    assert len(json.dumps(value, separators=(",", ":"), ensure_ascii=False)) < 512
    refused(check_metadata, value)


def test_metadata_byte_limit_measures_the_json_as_sent_numbers_included() -> None:
    # 16 numeric values whose JSON is 465 bytes: within the 512-byte limit a caller is told about.
    value = {f"counter_{i:02d}_{'x' * 10}": 1000 + i for i in range(16)}
    assert len(json.dumps(value, separators=(",", ":"))) <= 512
    assert check_metadata(value) == value


# -- check_idempotency_key -------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "order-123:retry/1", "x" * 128, "!~", "A_b.C-d#e@f"])
def test_idempotency_key_printable_ascii_up_to_128(key: str) -> None:
    assert check_idempotency_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 129, "has space", "tab\tkey", "ключ", "naïve", "nul\x00", 123, None, True])
def test_idempotency_key_refused(key: Any) -> None:
    error = refused(check_idempotency_key, key)
    assert error.field == "idempotency_key"


@pytest.mark.parametrize("key", ["abc\n", "order-1\n"])
def test_idempotency_key_with_a_trailing_newline_is_refused(key: str) -> None:
    # Otherwise "abc" and "abc\n" are two different keys for what a caller sees as one.
    refused(check_idempotency_key, key)


# -- payload_hash ----------------------------------------------------------------


def draft(**changes: Any) -> UsageDraft:
    values: dict[str, Any] = {
        "service_line_id": "LIN-26-084729",
        "meter": "talent.hours",
        "quantity": Decimal(8),
        "period_date": TODAY,
        "event_time": None,
        "source": "api",
        "metadata": {"talent_id": "T-1"},
        "idempotency_key": "k-1",
    }
    values.update(changes)
    return UsageDraft(**values)


def test_payload_hash_is_the_same_for_the_same_number_however_written() -> None:
    base = draft(quantity=Decimal(8)).payload_hash()
    assert draft(quantity=Decimal("8.0")).payload_hash() == base
    assert draft(quantity=Decimal("8.000000000")).payload_hash() == base
    assert draft(quantity=Decimal("8E+0")).payload_hash() == base
    assert draft(quantity=Decimal("0.8E+1")).payload_hash() == base


def test_payload_hash_same_number_in_metadata_however_written() -> None:
    assert draft(metadata={"n": 8}).payload_hash() == draft(metadata={"n": Decimal("8.00")}).payload_hash()


def test_payload_hash_zero_and_negative_zero_are_the_same_quantity() -> None:
    assert draft(quantity=Decimal("-0.0")).payload_hash() == draft(quantity=Decimal(0)).payload_hash()


def test_payload_hash_ignores_metadata_key_order_and_the_idempotency_key() -> None:
    one = draft(metadata={"a": "1", "b": 2})
    other = draft(metadata={"b": 2, "a": "1"}, idempotency_key="another-key")
    assert one.payload_hash() == other.payload_hash()


@pytest.mark.parametrize(
    "changes",
    [
        {"quantity": Decimal("8.000000001")},
        {"meter": "talent.days"},
        {"service_line_id": "LIN-26-091100"},
        {"period_date": TODAY - timedelta(days=1)},
        {"event_time": NOW},
        {"source": "timesheets"},
        {"metadata": {"talent_id": "T-2"}},
        {"metadata": {"talent_id": "T-1", "extra": True}},
        {"metadata": {}},
    ],
)
def test_payload_hash_differs_when_the_payload_differs(changes: dict[str, Any]) -> None:
    assert draft(**changes).payload_hash() != draft().payload_hash()


@pytest.mark.parametrize(("one", "other"), [(True, 1), ("8", 8), (False, 0), ("true", True)])
def test_payload_hash_tells_metadata_types_apart(one: Any, other: Any) -> None:
    assert draft(metadata={"v": one}).payload_hash() != draft(metadata={"v": other}).payload_hash()


# -- chunk_events and coalesce ---------------------------------------------------


def event(
    index: int,
    line: str = "LIN-1",
    meter: str = "m",
    quantity: str = "1",
    day: str = "2026-05-10",
    hour: str = "2026-05-10T12",
) -> CountableEvent:
    return CountableEvent(f"USAGE-26-{index:05d}", "ORG-1", line, meter, Decimal(quantity), day, hour)


@st.composite
def event_sets(draw: st.DrawFn) -> list[CountableEvent]:
    count = draw(st.integers(min_value=0, max_value=60))
    events = []
    for index in range(count):
        day = draw(st.sampled_from(["2026-05-09", "2026-05-10", "2026-05-11"]))
        events.append(
            CountableEvent(
                id=f"USAGE-26-{draw(st.integers(0, 10**6)):07d}-{index}",
                organization_id=draw(st.sampled_from(["ORG-A", "ORG-B"])),
                service_line_id=draw(st.sampled_from(["LIN-A", "LIN-B"])),
                meter=draw(st.sampled_from(["m1", "m2", "m3"])),
                quantity=draw(st.decimals(min_value=0, max_value=1000, places=3)),
                period_date=day,
                hour=f"{day}T{draw(st.sampled_from(['00', '07', '23']))}",
            )
        )
    return events


@settings(max_examples=150, deadline=None)
@given(event_sets(), st.integers(min_value=2, max_value=12), st.randoms(use_true_random=False))
def test_chunks_cover_every_event_once_within_the_key_budget_deterministically(
    events: list[CountableEvent], max_keys: int, rng: random.Random
) -> None:
    chunks = chunk_events(events, max_keys)
    chunked_ids = [e.id for chunk in chunks for e in chunk]
    assert sorted(chunked_ids) == sorted(e.id for e in events)
    assert len(chunked_ids) == len(set(chunked_ids)) == len(events)
    for chunk in chunks:
        assert chunk, "no empty chunk"
        keys = {rk for e in chunk for rk in rollup_keys(e)}
        assert len(keys) <= max_keys
    shuffled = list(events)
    rng.shuffle(shuffled)
    again = chunk_events(shuffled, max_keys)
    assert [[e.id for e in chunk] for chunk in again] == [[e.id for e in chunk] for chunk in chunks]


def test_events_of_one_rollup_pair_share_one_chunk() -> None:
    # 100 events of one line, meter, day and hour touch 2 rollups: one chunk, each key written once.
    events = [event(i) for i in range(100)]
    chunks = chunk_events(events, 98)
    assert len(chunks) == 1 and len(chunks[0]) == 100


def test_chunks_split_when_distinct_rollups_exceed_the_budget() -> None:
    # 60 events in 60 different hours of one day: 61 distinct rollups, over a budget of 10.
    events = [event(i, hour=f"2026-05-10T{i % 24:02d}", day="2026-05-10", meter=f"m{i // 24}") for i in range(60)]
    chunks = chunk_events(events, 10)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len({rk for e in chunk for rk in rollup_keys(e)}) <= 10


def test_coalesce_sums_decimals_exactly_per_day_and_hour() -> None:
    events = [
        event(1, quantity="0.1", hour="2026-05-10T09"),
        event(2, quantity="0.1", hour="2026-05-10T09"),
        event(3, quantity="0.1", hour="2026-05-10T10"),
        event(4, quantity="0.000000001", meter="other", hour="2026-05-10T10"),
    ]
    deltas = coalesce(events)
    day = deltas[RollupKey("ORG-1", "LIN-1", "m", "D", "2026-05-10")]
    assert day.quantity == Decimal("0.3") and day.event_count == 3
    nine = deltas[RollupKey("ORG-1", "LIN-1", "m", "H", "2026-05-10", "2026-05-10T09")]
    assert nine.quantity == Decimal("0.2") and nine.event_count == 2
    ten = deltas[RollupKey("ORG-1", "LIN-1", "m", "H", "2026-05-10", "2026-05-10T10")]
    assert ten.quantity == Decimal("0.1") and ten.event_count == 1
    other = deltas[RollupKey("ORG-1", "LIN-1", "other", "D", "2026-05-10")]
    assert other.quantity == Decimal("0.000000001") and other.event_count == 1
    assert len(deltas) == 5


def test_coalesce_of_many_small_quantities_has_no_float_drift() -> None:
    deltas = coalesce(event(i, quantity="0.000000001") for i in range(1000))
    assert deltas[RollupKey("ORG-1", "LIN-1", "m", "D", "2026-05-10")].quantity == Decimal("0.000001")
    big = coalesce([event(1, quantity="999999999999.999999999"), event(2, quantity="0.000000001")])
    assert big[RollupKey("ORG-1", "LIN-1", "m", "D", "2026-05-10")].quantity == Decimal(10) ** 12


@settings(max_examples=100, deadline=None)
@given(event_sets())
def test_coalesce_conserves_total_quantity_and_count(events: list[CountableEvent]) -> None:
    deltas = coalesce(events)
    days = [d for rk, d in deltas.items() if rk.grain == "D"]
    hours = [d for rk, d in deltas.items() if rk.grain == "H"]
    total = sum((e.quantity for e in events), Decimal(0))
    assert sum((d.quantity for d in days), Decimal(0)) == total
    assert sum((d.quantity for d in hours), Decimal(0)) == total
    assert sum(d.event_count for d in days) == sum(d.event_count for d in hours) == len(events)
