"""Page cursors are opaque (nothing of the position can be read), bound to organization and query, tamper-proof."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.domain import cursors
from chalicelib.errors import ErrorCode, MeteringError

SECRET = "a-test-secret-that-is-long-enough-0123456789"
# A usage listing's position: the table's key names and values, which include an idempotency key.
POSITION = {
    "l": "LIN-26-084729",
    "k": {"pk": "EV#ORG-26-090500#timesheet-SCR-128491-20260414", "sk": "EV", "line_pk": "LINE#LIN-26-084729"},
}
BOUND = cursors.binding("ORG-26-090500", "usage", {"meter": "talent.hours", "from": "2026-04-01"})


def raw_bytes(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def refused(token: str, bound: str = BOUND, secret: str = SECRET) -> MeteringError:
    with pytest.raises(MeteringError) as caught:
        cursors.decode(token, bound, secret)
    assert caught.value.error_code is ErrorCode.INVALID_CURSOR
    assert caught.value.http_status == 400
    assert caught.value.field == "cursor"
    return caught.value


def test_a_cursor_gives_back_its_position() -> None:
    token = cursors.encode(POSITION, BOUND, SECRET)
    assert cursors.decode(token, BOUND, SECRET) == POSITION
    assert len(token) < 250  # a usage listing's cursor stays short enough for a query string


def test_nothing_of_the_position_can_be_read_from_a_cursor() -> None:
    token = cursors.encode(POSITION, BOUND, SECRET)
    raw = raw_bytes(token)
    for visible in (b'"pk"', b'"sk"', b"line_pk", b"EV#ORG", b"timesheet", b"LIN-26-084729", b"ORG-26-090500"):
        assert visible not in raw, visible
    with pytest.raises(ValueError):  # no JSON in it either, at any offset
        json.loads(raw[raw.index(b"{") :] if b"{" in raw else raw)
    assert "LIN" not in token and "timesheet" not in token


def test_the_same_position_gives_a_different_cursor_each_time() -> None:
    """Equal positions are not recognisable as equal (a random nonce per cursor)."""
    tokens = {cursors.encode(POSITION, BOUND, SECRET) for _ in range(20)}
    assert len(tokens) == 20
    assert all(cursors.decode(t, BOUND, SECRET) == POSITION for t in tokens)


@pytest.mark.parametrize(
    "other",
    [
        cursors.binding("ORG-26-100200", "usage", {"meter": "talent.hours", "from": "2026-04-01"}),  # organization
        cursors.binding("ORG-26-090500", "usage", {"meter": "agent.runs", "from": "2026-04-01"}),  # query
        cursors.binding("ORG-26-090500", "plans", {"meter": "talent.hours", "from": "2026-04-01"}),  # endpoint
    ],
)
def test_a_cursor_is_refused_for_another_organization_query_or_endpoint(other: str) -> None:
    refused(cursors.encode(POSITION, BOUND, SECRET), bound=other)


def test_a_cursor_made_with_another_secret_is_refused() -> None:
    refused(cursors.encode(POSITION, BOUND, "another-secret-that-is-long-enough-0123456789"))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_change_to_a_cursor_is_refused(data: st.DataObject) -> None:
    raw = bytearray(raw_bytes(cursors.encode(POSITION, BOUND, SECRET)))
    index = data.draw(st.integers(0, len(raw) - 1))
    flip = data.draw(st.integers(1, 255))
    raw[index] ^= flip
    refused(base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="))


@pytest.mark.parametrize("cut", [1, 5, 16, 17, 40])
def test_a_truncated_cursor_is_refused(cut: int) -> None:
    raw = raw_bytes(cursors.encode(POSITION, BOUND, SECRET))
    refused(base64.urlsafe_b64encode(raw[:-cut]).decode().rstrip("="))


@pytest.mark.parametrize(
    "token", ["", "x", "not base64 at all!", "A" * (cursors.MAX_CURSOR_LENGTH + 1), "====", "\u00e9t\u00e9"]
)
def test_garbage_is_refused(token: str) -> None:
    refused(token)


def test_a_cursor_in_the_old_readable_format_is_refused() -> None:
    """The previous format (HMAC + readable JSON) is not accepted, even with a valid signature."""
    payload = json.dumps({"b": BOUND, "p": POSITION}, sort_keys=True, separators=(",", ":")).encode()
    mac = hmac.new(SECRET.encode(), payload, hashlib.sha256).digest()[:16]
    refused(base64.urlsafe_b64encode(mac + payload).decode().rstrip("="))


@settings(max_examples=100, deadline=None)
@given(
    position=st.dictionaries(
        st.text(max_size=12),
        st.one_of(st.integers(), st.text(max_size=40), st.dictionaries(st.text(max_size=8), st.text(max_size=40))),
        max_size=4,
    ).filter(lambda p: len(json.dumps(p)) <= 1000)  # positions are small; the cursor limit is 2,048 characters
)
def test_any_position_round_trips(position: dict[str, Any]) -> None:
    token = cursors.encode(position, BOUND, SECRET)
    assert cursors.decode(token, BOUND, SECRET) == position


def test_the_field_named_in_the_error_is_the_callers() -> None:
    with pytest.raises(MeteringError) as caught:
        cursors.decode("bogus", BOUND, SECRET, field="next_page")
    assert caught.value.field == "next_page"
