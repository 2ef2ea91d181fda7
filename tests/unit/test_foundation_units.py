"""Pure pieces of the foundation: scopes, keys, exact JSON, errors, schema."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chalicelib import jsonutil
from chalicelib.domain import auth
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.storage.schema import QUEUES, TABLES, resource_name


def test_parse_scopes_expands_sets_and_refuses_unknown() -> None:
    assert auth.parse_scopes("all") == auth.ALL_SCOPES
    assert auth.parse_scopes("read") == auth.READ_SCOPES
    assert auth.parse_scopes("metering:write, meter-report") == {"metering:write", "meter-report"}
    with pytest.raises(ValueError, match="unknown scope"):
        auth.parse_scopes("metering:write,admin")


def test_read_scopes_exclude_every_write_scope() -> None:
    assert auth.METERING_WRITE not in auth.READ_SCOPES
    assert auth.METER_REPORT not in auth.READ_SCOPES
    assert auth.SERVICE_LINES_WRITE not in auth.READ_SCOPES


def test_keys_are_stored_as_hashes_and_fresh_keys_differ() -> None:
    secret = auth.new_key_secret()
    assert secret.startswith("mk_")
    assert auth.hash_key(secret) != secret and len(auth.hash_key(secret)) == 64
    assert auth.new_key_secret() != secret
    assert auth.key_id_for(secret).startswith("key_")
    assert secret not in auth.key_id_for(secret)


def test_json_numbers_round_trip_exactly() -> None:
    parsed = jsonutil.loads('{"q": 0.1, "big": 12345678901234567890.123456789, "n": 3}')
    assert parsed["q"] == Decimal("0.1")
    assert parsed["big"] == Decimal("12345678901234567890.123456789")
    assert parsed["n"] == 3
    assert jsonutil.dumps({"q": Decimal("0.1") + Decimal("0.2")}) == '{"q":0.3}'
    assert jsonutil.dumps({"big": parsed["big"]}) == '{"big":12345678901234567890.123456789}'


@pytest.mark.parametrize("text", ["NaN", '{"q": Infinity}', '{"q": -Infinity}', "{", ""])
def test_json_refuses_non_numbers_and_garbage(text: str) -> None:
    with pytest.raises(jsonutil.JsonParseError):
        jsonutil.loads(text)


def test_error_codes_are_unique_lowercase_and_carry_status() -> None:
    codes = [c.code for c in ErrorCode]
    assert len(codes) == len(set(codes))
    assert all(c == c.lower() for c in codes)
    err = MeteringError(ErrorCode.PLAN_LIMIT_EXCEEDED, field="product_line")
    assert err.http_status == 403
    assert err.to_dict() == {
        "code": "plan_limit_exceeded",
        "message": ErrorCode.PLAN_LIMIT_EXCEEDED.default_message,
        "field": "product_line",
    }


def test_table_specs_define_keys_and_indexes_once() -> None:
    events = TABLES["events"].create_table_kwargs("t")
    names = [a["AttributeName"] for a in events["AttributeDefinitions"]]
    assert names == ["pk", "sk", "gsi1pk", "gsi1sk"]
    assert events["BillingMode"] == "PAY_PER_REQUEST"
    assert events["GlobalSecondaryIndexes"][0]["IndexName"] == "by_line"
    assert "GlobalSecondaryIndexes" not in TABLES["catalog"].create_table_kwargs("c")
    attrs = QUEUES["usage"].create_queue_attributes("arn:aws:sqs:us-east-1:1:dlq")
    assert '"maxReceiveCount":"8"' in attrs["RedrivePolicy"]
    assert int(attrs["VisibilityTimeout"]) >= 6 * 60
    assert resource_name("metering-events", "prod") == "metering-events-prod"
