"""What the service writes back to a caller: plain-notation numbers, and links built only from safe headers."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from chalicelib import jsonutil
from chalicelib.dialects.scalr import PATH, base_url


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1E-9"), "0.000000001"),
        (Decimal("2E-9"), "0.000000002"),
        (Decimal("1E+3"), "1000"),
        (Decimal("5.0"), "5.0"),
        (Decimal("923814999953.885316332"), "923814999953.885316332"),
        (Decimal("1.000000001E+12"), "1000000001000"),
    ],
)
def test_numbers_are_written_in_plain_notation(value: Decimal, text: str) -> None:
    written = jsonutil.dumps({"q": value, "nested": [{"q": value}]})
    assert written == f'{{"q":{text},"nested":[{{"q":{text}}}]}}'
    assert json.loads(written, parse_float=Decimal)["q"] == value  # the same number, exactly


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"host": "api.example.com"}, f"http://api.example.com{PATH}"),
        ({"host": "127.0.0.1:8000", "x-forwarded-proto": "https"}, f"https://127.0.0.1:8000{PATH}"),
        ({"host": "[::1]:8000"}, f"http://[::1]:8000{PATH}"),
        ({"host": "api.example.com", "x-forwarded-proto": "javascript"}, f"http://api.example.com{PATH}"),
        ({"host": "javascript://alert(1)//"}, PATH),
        ({"host": "evil.com/phish?"}, PATH),
        ({"host": "a.com\r\nSet-Cookie: x"}, PATH),
        ({}, PATH),
    ],
)
def test_links_echo_only_a_host_name_and_http_or_https(headers: dict[str, str], expected: str) -> None:
    assert base_url({}, headers) == expected


def test_the_path_asked_for_decides_a_catch_alls_envelope() -> None:
    from chalicelib.api.http import requested_path

    assert requested_path("/v1/{proxy+}", {"proxy": "customers/abc"}) == "/v1/customers/abc"  # API Gateway
    assert requested_path("/v1/{proxy+}", {}, "/v1/customers/abc") == "/v1/customers/abc"  # chalice local
    assert requested_path("/v1/meters/{meterId}/subscriptions/{proxy+}", {"meterId": "m", "proxy": "x"}) == (
        "/v1/meters/m/subscriptions/x"
    )
    assert requested_path("/v1/meters", {}, "/api/v1/meters") == "/v1/meters"


def test_the_csv_export_writes_plain_numbers() -> None:
    from chalicelib.backfill import export_cell

    parsed = jsonutil.loads('{"quantity": 0.000000001, "metadata": {"ratio": 0.0000001}, "meter": "agent.tokens"}')
    assert export_cell("quantity", parsed) == "0.000000001"
    assert export_cell("metadata", parsed) == '{"ratio":0.0000001}'
    assert export_cell("meter", parsed) == "agent.tokens"
