"""The embedded AWS emulator (moto plus chalicelib/local/moto_fixes.py) answers as DynamoDB does.

Transactions are all-or-nothing and cost what they touch, not the size of the
table; ADD and +/- are exact decimal arithmetic in any valid spelling; queries
read only what they can match, with moto's answers; responses are the bytes
moto's own serializer writes. Every test goes through the `aws` fixture, the
same emulator the local stack, the tests and the bench start.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.config import Settings
from chalicelib.local import moto_fixes
from chalicelib.storage import clients
from chalicelib.storage.codec import from_item, key


@pytest.fixture
def table(aws: Settings) -> str:
    """The rollups table: pk/sk strings and the sparse `by_period` index on gsi1pk/gsi1sk."""
    return aws.rollups_table


def ddb() -> Any:
    return clients.dynamodb()


def put(table: str, pk: str, sk: str, **attrs: Any) -> None:
    item = key(pk, sk)
    for name, value in attrs.items():
        item[name] = {"N": value[1:]} if isinstance(value, str) and value.startswith("#") else {"S": value}
    ddb().put_item(TableName=table, Item=item)


def get(table: str, pk: str, sk: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = ddb().get_item(TableName=table, Key=key(pk, sk), ConsistentRead=True).get("Item")
    return item


def everything(table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = ddb().scan(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def index_query(table: str, gsi1pk: str, **kwargs: Any) -> list[tuple[str, str]]:
    """(pk, sk) of every item of an index partition, in index order, read page by page."""
    found: list[tuple[str, str]] = []
    request: dict[str, Any] = {
        "TableName": table,
        "IndexName": "by_period",
        "KeyConditionExpression": "gsi1pk = :p",
        "ExpressionAttributeValues": {":p": {"S": gsi1pk}},
        **kwargs,
    }
    while True:
        page = ddb().query(**request)
        found.extend((i["pk"]["S"], i["sk"]["S"]) for i in page["Items"])
        if "LastEvaluatedKey" not in page:
            return found
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def add(table: str, pk: str, sk: str, quantity: str, condition: str | None = None) -> dict[str, Any]:
    """A transaction Update that adds to a rollup's quantity and count, if `condition` (on :one = 1) holds."""
    update: dict[str, Any] = {
        "TableName": table,
        "Key": key(pk, sk),
        "UpdateExpression": "ADD quantity :q, event_count :one",
        "ExpressionAttributeValues": {":q": {"N": quantity}, ":one": {"N": "1"}},
    }
    if condition:
        update["ConditionExpression"] = condition
    return {"Update": update}


def put_new(table: str, pk: str, sk: str, return_old: bool = False) -> dict[str, Any]:
    """A transaction Put of an item that must not exist yet."""
    action: dict[str, Any] = {
        "TableName": table,
        "Item": {**key(pk, sk), "events": {"L": [{"S": "e1"}]}},
        "ConditionExpression": "attribute_not_exists(pk)",
    }
    if return_old:
        action["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    return {"Put": action}


def cancelled(error: pytest.ExceptionInfo[ClientError]) -> list[dict[str, Any]]:
    assert error.value.response["Error"]["Code"] == "TransactionCanceledException"
    response: dict[str, Any] = dict(error.value.response)
    reasons: list[dict[str, Any]] = response["CancellationReasons"]
    return reasons


# -- transactions ------------------------------------------------------------------------------------


def seed_rollups(table: str) -> None:
    put(table, "R#L1", "D#2026-05-01#runs", quantity="#5", event_count="#2")
    put(table, "R#L1", "D#2026-05-02#runs", quantity="#7.5", event_count="#3", gsi1pk="L1#2026-05-02", gsi1sk="a")
    put(table, "APPLIED#B1", "0000", note="applied before")
    put(table, "R#L1", "D#2026-05-03#runs", quantity="#1", event_count="#1")


def test_a_failing_condition_in_the_middle_leaves_every_item_as_it_was(table: str) -> None:
    seed_rollups(table)
    before = everything(table)
    items = [
        add(table, "R#L1", "D#2026-05-01#runs", "1"),  # an ADD before the failure
        put_new(table, "APPLIED#B9", "0000"),  # a new item before the failure
        {  # moves an item to another index partition before the failure
            "Update": {
                "TableName": table,
                "Key": key("R#L1", "D#2026-05-02#runs"),
                "UpdateExpression": "SET gsi1pk = :moved ADD quantity :q",
                "ExpressionAttributeValues": {":moved": {"S": "L1#elsewhere"}, ":q": {"N": "2"}},
            }
        },
        put_new(table, "APPLIED#B1", "0000"),  # fails: the marker exists
        {"Delete": {"TableName": table, "Key": key("R#L1", "D#2026-05-03#runs")}},  # a Delete after it
        add(table, "R#L1", "D#2026-05-04#runs", "3"),  # an ADD creating an item after it
    ]
    with pytest.raises(ClientError) as error:
        ddb().transact_write_items(TransactItems=items)

    assert [r["Code"] for r in cancelled(error)] == ["None", "None", "None", "ConditionalCheckFailed", "None", "None"]
    assert sorted(everything(table), key=str) == sorted(before, key=str)
    assert get(table, "APPLIED#B9", "0000") is None
    assert get(table, "R#L1", "D#2026-05-04#runs") is None
    assert from_item(get(table, "R#L1", "D#2026-05-01#runs") or {})["quantity"] == Decimal(5)
    assert from_item(get(table, "R#L1", "D#2026-05-03#runs") or {})["quantity"] == Decimal(1)
    # the index answers from the restored item, not the moved one
    assert index_query(table, "L1#2026-05-02") == [("R#L1", "D#2026-05-02#runs")]
    assert index_query(table, "L1#elsewhere") == []


def test_a_transaction_whose_conditions_hold_applies_every_action(table: str) -> None:
    seed_rollups(table)
    ddb().transact_write_items(
        TransactItems=[
            add(table, "R#L1", "D#2026-05-01#runs", "0.25", condition="event_count > :one"),
            put_new(table, "APPLIED#B2", "0000"),
            {
                "ConditionCheck": {
                    "TableName": table,
                    "Key": key("APPLIED#B1", "0000"),
                    "ConditionExpression": "attribute_exists(pk)",
                }
            },
            {"Delete": {"TableName": table, "Key": key("R#L1", "D#2026-05-03#runs")}},
        ]
    )
    day = from_item(get(table, "R#L1", "D#2026-05-01#runs") or {})
    assert (day["quantity"], day["event_count"]) == (Decimal("5.25"), 3)
    assert get(table, "APPLIED#B2", "0000") is not None
    assert get(table, "R#L1", "D#2026-05-03#runs") is None


def test_cancellation_reasons_say_which_action_failed_in_order_with_the_old_item_when_asked(table: str) -> None:
    seed_rollups(table)
    put(table, "APPLIED#B3", "0000", note="also applied")
    items = [
        put_new(table, "APPLIED#B1", "0000", return_old=True),
        add(table, "R#L1", "D#2026-05-01#runs", "1"),
        put_new(table, "APPLIED#B3", "0000"),  # fails, without ReturnValuesOnConditionCheckFailure
        {
            "ConditionCheck": {
                "TableName": table,
                "Key": key("APPLIED#B4", "0000"),
                "ConditionExpression": "attribute_exists(pk)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",  # fails; no old item to return
            }
        },
    ]
    with pytest.raises(ClientError) as error:
        ddb().transact_write_items(TransactItems=items)

    failed = {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"}
    assert cancelled(error) == [
        {**failed, "Item": {**key("APPLIED#B1", "0000"), "note": {"S": "applied before"}}},
        {"Code": "None"},
        failed,
        failed,
    ]
    assert from_item(get(table, "R#L1", "D#2026-05-01#runs") or {})["quantity"] == Decimal(5)


def test_two_actions_on_one_item_are_refused_and_nothing_is_written(table: str) -> None:
    seed_rollups(table)
    before = everything(table)
    with pytest.raises(ClientError) as error:
        ddb().transact_write_items(
            TransactItems=[
                put_new(table, "APPLIED#B5", "0000"),
                add(table, "R#L1", "D#2026-05-01#runs", "1"),
                {"Delete": {"TableName": table, "Key": key("R#L1", "D#2026-05-01#runs")}},
            ]
        )
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert "multiple operations on one item" in error.value.response["Error"]["Message"]
    assert sorted(everything(table), key=str) == sorted(before, key=str)


def test_an_invalid_action_in_the_middle_refuses_the_transaction_and_writes_nothing(table: str) -> None:
    seed_rollups(table)
    put(table, "R#L1", "D#text", quantity="not a number")
    before = everything(table)
    with pytest.raises(ClientError) as error:
        ddb().transact_write_items(
            TransactItems=[
                add(table, "R#L1", "D#2026-05-01#runs", "1"),
                put_new(table, "APPLIED#B6", "0000"),
                add(table, "R#L1", "D#text", "1"),  # ADD of a number to a string
                {"Delete": {"TableName": table, "Key": key("R#L1", "D#2026-05-03#runs")}},
            ]
        )
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert sorted(everything(table), key=str) == sorted(before, key=str)


def fill_directly(table: str, count: int) -> None:
    """Put `count` rollup items straight into the emulator's table (what PutItem stores, without HTTP)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][clients.dynamodb().meta.region_name]
    target = backend.get_table(table)
    for n in range(count):
        target.put_item(
            {
                **key(f"R#L{n % 50}", f"D#{n:06d}#runs"),
                "quantity": {"N": "1.5"},
                "event_count": {"N": "1"},
                "gsi1pk": {"S": f"L{n % 50}#2026-05-01"},
                "gsi1sk": {"S": f"runs#{n:06d}"},
            }
        )


class CopyCounter:
    """Counts what is deep-copied while it is installed, by type, and the items a transaction copies."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.copied: Counter[str] = Counter()
        self.journaled = 0
        deepcopy, copy_item = copy.deepcopy, moto_fixes.copy_item

        def counting_deepcopy(obj: Any, memo: Any = None, *args: Any) -> Any:
            self.copied[type(obj).__name__] += 1
            return deepcopy(obj, memo, *args)

        def counting_copy_item(item: Any) -> Any:
            self.journaled += 1
            return copy_item(item)

        monkeypatch.setattr(copy, "deepcopy", counting_deepcopy)
        monkeypatch.setattr(moto_fixes, "copy_item", counting_copy_item)


@pytest.fixture
def big_table(table: str) -> Iterator[str]:
    fill_directly(table, 20_000)
    assert ddb().describe_table(TableName=table)["Table"]["ItemCount"] == 20_000
    yield table


def test_a_transaction_copies_only_the_items_it_touches_however_big_the_table(
    big_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto copied the whole table once per action: 25 x 20,000 items here."""
    touched = [add(big_table, f"R#L{n % 50}", f"D#{n:06d}#runs", "1") for n in range(0, 20_000, 800)]
    assert len(touched) == 25
    counter = CopyCounter(monkeypatch)

    ddb().transact_write_items(TransactItems=touched)

    assert counter.journaled == 25
    assert counter.copied["Table"] == 0
    # each updated item is copied once, by the transaction (UpdateItem copies it only for a stream)
    assert counter.copied["Item"] == 25
    assert from_item(get(big_table, "R#L0", "D#000000#runs") or {})["quantity"] == Decimal("2.5")


def test_a_cancelled_transaction_on_a_big_table_also_copies_only_what_it_touched(
    big_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    touched = [add(big_table, f"R#L{n % 50}", f"D#{n:06d}#runs", "1") for n in range(0, 19_200, 800)]
    touched.append(add(big_table, "R#L7", "D#000007#runs", "1", condition="event_count > :one"))  # 1 > 1 fails
    counter = CopyCounter(monkeypatch)

    with pytest.raises(ClientError) as error:
        ddb().transact_write_items(TransactItems=touched)

    assert [r["Code"] for r in cancelled(error)] == ["None"] * 24 + ["ConditionalCheckFailed"]
    assert counter.journaled == 24  # the failing action's item was never written, so never copied
    assert counter.copied["Table"] == 0
    assert from_item(get(big_table, "R#L0", "D#000000#runs") or {})["quantity"] == Decimal("1.5")


# -- numbers -----------------------------------------------------------------------------------------


def number(table: str, pk: str, sk: str, name: str = "quantity") -> str:
    """A stored number exactly as the emulator returns it."""
    value: str = (get(table, pk, sk) or {})[name]["N"]
    return value


def add_item(table: str, pk: str, sk: str, value: str, expression: str = "ADD quantity :v") -> None:
    ddb().update_item(
        TableName=table, Key=key(pk, sk), UpdateExpression=expression, ExpressionAttributeValues={":v": {"N": value}}
    )


def test_add_of_an_exponent_spelling_twice_is_exact_and_in_plain_notation(table: str) -> None:
    add_item(table, "R#L1", "D#tiny", "1E-9")
    add_item(table, "R#L1", "D#tiny", "1E-9")
    assert number(table, "R#L1", "D#tiny") == "0.000000002"
    assert from_item(get(table, "R#L1", "D#tiny") or {})["quantity"] == Decimal("2E-9")


def test_add_onto_a_stored_exponent_spelling(table: str) -> None:
    put(table, "R#L1", "D#stored", quantity="#1E-9")
    add_item(table, "R#L1", "D#stored", "1")
    assert number(table, "R#L1", "D#stored") == "1.000000001"
    add_item(table, "R#L1", "D#stored", "-1.000000001")
    assert number(table, "R#L1", "D#stored") == "0"


def test_add_keeps_all_38_digits(table: str) -> None:
    put(table, "R#L1", "D#wide", quantity="#12345678901234567890123456789012345678", portion="#0.1")
    add_item(table, "R#L1", "D#wide", "1")
    assert number(table, "R#L1", "D#wide") == "12345678901234567890123456789012345679"
    add_item(table, "R#L1", "D#wide", "0.0000000000000000000000000000000000001", "ADD portion :v")
    assert number(table, "R#L1", "D#wide", "portion") == "0.1000000000000000000000000000000000001"


def test_set_plus_and_minus_use_the_same_arithmetic(table: str) -> None:
    put(table, "R#L1", "D#set", quantity="#5.0")
    add_item(table, "R#L1", "D#set", "2.5E-7", "SET quantity = quantity + :v")
    assert number(table, "R#L1", "D#set") == "5.00000025"
    add_item(table, "R#L1", "D#set", "5E+2", "SET quantity = quantity - :v")
    assert number(table, "R#L1", "D#set") == "-494.99999975"


def test_a_result_dynamodb_cannot_store_is_refused_and_the_item_keeps_its_value(table: str) -> None:
    put(table, "R#L1", "D#limits", quantity="#1E+50", small="#2E-130")
    with pytest.raises(ClientError) as too_precise:
        add_item(table, "R#L1", "D#limits", "1")  # 1E+50 + 1 needs 51 digits
    with pytest.raises(ClientError) as too_small:
        add_item(table, "R#L1", "D#limits", "-1.5E-130", "ADD small :v")
    assert too_precise.value.response["Error"]["Code"] == "ValidationException"
    assert "Number overflow" in too_precise.value.response["Error"]["Message"]
    assert too_small.value.response["Error"]["Code"] == "ValidationException"
    assert "Number underflow" in too_small.value.response["Error"]["Message"]
    assert from_item(get(table, "R#L1", "D#limits") or {})["quantity"] == Decimal("1E+50")


def test_numbers_compare_by_value_and_a_result_drops_trailing_zeros(table: str) -> None:
    put(table, "R#L1", "D#cmp", version="#5.0")
    ddb().update_item(
        TableName=table,
        Key=key("R#L1", "D#cmp"),
        UpdateExpression="ADD version :one",
        ConditionExpression="version = :five",
        ExpressionAttributeValues={":one": {"N": "1"}, ":five": {"N": "5"}},
    )
    assert number(table, "R#L1", "D#cmp", "version") == "6"


def test_number_arithmetic_in_plain_notation() -> None:
    assert moto_fixes.number_add("1E-9", "1E-9") == "0.000000002"
    assert moto_fixes.number_add("1E+3", "0") == "1000"
    assert moto_fixes.number_add("5.0", "-5") == "0"
    assert moto_fixes.number_sub("0.3", "0.1") == "0.2"
    assert moto_fixes.number_add("9.9999999999999999999999999999999999999E+125", "0") == format(
        Decimal("9.9999999999999999999999999999999999999E+125"), "f"
    )


# -- queries -----------------------------------------------------------------------------------------


def test_index_pages_list_a_partition_in_index_order_both_ways(table: str) -> None:
    for n in range(30):
        # gsi1sk repeats, so the table key orders ties; other partitions interleave
        put(table, f"R#L{n % 3}", f"H#{n:03d}", gsi1pk="L#day", gsi1sk=f"m#{n % 4}")
        put(table, f"R#L{n % 3}", f"X#{n:03d}", gsi1pk="L#other", gsi1sk=f"m#{n % 4}")
    expected = sorted(((f"R#L{n % 3}", f"H#{n:03d}") for n in range(30)), key=lambda k: (int(k[1][2:]) % 4, k))

    assert index_query(table, "L#day", Limit=7) == expected
    assert index_query(table, "L#day", Limit=4, ScanIndexForward=False) == expected[::-1]
    assert index_query(table, "L#day") == expected


def test_a_page_that_fills_its_limit_with_more_items_after_it_answers_a_last_key(table: str) -> None:
    for n in range(10):
        put(table, "R#L1", f"D#2026-05-{n + 1:02d}#runs", quantity="#1")
    page = ddb().query(
        TableName=table,
        KeyConditionExpression="pk = :p AND sk BETWEEN :lo AND :hi",
        ExpressionAttributeValues={":p": {"S": "R#L1"}, ":lo": {"S": "D#2026-05-03#"}, ":hi": {"S": "D#2026-05-05#~"}},
        Limit=3,
    )
    assert [i["sk"]["S"] for i in page["Items"]] == [f"D#2026-05-0{d}#runs" for d in (3, 4, 5)]
    assert page["LastEvaluatedKey"] == key("R#L1", "D#2026-05-05#runs")


def test_the_index_follows_puts_updates_and_deletes(table: str) -> None:
    put(table, "R#L1", "H#1", gsi1pk="A", gsi1sk="1")
    put(table, "R#L1", "H#2", gsi1pk="A", gsi1sk="2")
    assert index_query(table, "A") == [("R#L1", "H#1"), ("R#L1", "H#2")]  # the index is now in use

    put(table, "R#L1", "H#3", gsi1pk="A", gsi1sk="0")  # new
    put(table, "R#L1", "H#1", gsi1pk="B", gsi1sk="1")  # replaced, to another partition
    ddb().update_item(  # changed in place, to another partition
        TableName=table,
        Key=key("R#L1", "H#2"),
        UpdateExpression="SET gsi1pk = :b",
        ExpressionAttributeValues={":b": {"S": "B"}},
    )
    ddb().update_item(  # created by an update
        TableName=table,
        Key=key("R#L1", "H#4"),
        UpdateExpression="SET gsi1pk = :a, gsi1sk = :z",
        ExpressionAttributeValues={":a": {"S": "A"}, ":z": {"S": "9"}},
    )
    assert index_query(table, "A") == [("R#L1", "H#3"), ("R#L1", "H#4")]
    assert index_query(table, "B") == [("R#L1", "H#1"), ("R#L1", "H#2")]

    ddb().delete_item(TableName=table, Key=key("R#L1", "H#3"))
    ddb().update_item(TableName=table, Key=key("R#L1", "H#2"), UpdateExpression="REMOVE gsi1pk")
    assert index_query(table, "A") == [("R#L1", "H#4")]
    assert index_query(table, "B") == [("R#L1", "H#1")]


def test_the_index_follows_an_update_that_failed(table: str) -> None:
    put(table, "R#L1", "H#1", gsi1pk="A", gsi1sk="1", text="words")
    assert index_query(table, "A") == [("R#L1", "H#1")]
    with pytest.raises(ClientError):
        ddb().update_item(
            TableName=table,
            Key=key("R#L1", "H#1"),
            UpdateExpression="SET gsi1pk = :b ADD #t :one",
            ExpressionAttributeNames={"#t": "text"},
            ExpressionAttributeValues={":b": {"S": "B"}, ":one": {"N": "1"}},
        )
    where = (get(table, "R#L1", "H#1") or {})["gsi1pk"]["S"]  # whatever moto left stored
    assert index_query(table, where) == [("R#L1", "H#1")]
    assert index_query(table, "B" if where == "A" else "A") == []


def test_queries_keep_no_copy_of_what_they_answered(table: str) -> None:
    """moto kept every item object it ever made (each query's copies too) until the emulator stopped."""
    from moto.dynamodb.models.dynamo_type import Item

    for n in range(20):
        put(table, "R#L1", f"H#{n:02d}", gsi1pk="A", gsi1sk=f"{n:02d}")
    for _ in range(10):
        assert len(index_query(table, "A")) == 20
    assert Item.instances_tracked == []  # type: ignore[attr-defined]


# -- responses ---------------------------------------------------------------------------------------

RICH_ITEM: dict[str, Any] = {
    **key("R#L1", "D#rich"),
    "text": {"S": 'naïve ✓ \u2028 "quoted"'},
    "empty": {"S": ""},
    "number": {"N": "-12.50"},
    "yes": {"BOOL": True},
    "no": {"BOOL": False},
    "nothing": {"NULL": True},
    "names": {"SS": ["a", "b"]},
    "counts": {"NS": ["1", "2.5"]},
    "blob": {"B": b"\x00\xffbytes"},
    "blobs": {"BS": [b"\x01", b"\x02"]},
    "nested": {
        "M": {
            "list": {"L": [{"S": "x"}, {"N": "1"}, {"M": {"deep": {"BOOL": False}}}, {"L": []}]},
            "map": {"M": {}},
            "bin": {"B": b"inner"},
        }
    },
}


def test_an_item_of_every_type_reads_back_as_written(table: str) -> None:
    ddb().put_item(TableName=table, Item=RICH_ITEM)
    assert get(table, "R#L1", "D#rich") == RICH_ITEM
    page = ddb().query(
        TableName=table, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "R#L1"}}
    )
    assert page["Items"] == [RICH_ITEM]
    batch = ddb().batch_get_item(RequestItems={table: {"Keys": [key("R#L1", "D#rich")]}})
    assert batch["Responses"][table] == [RICH_ITEM]


@pytest.mark.parametrize("operation", ["GetItem", "Query", "BatchGetItem", "UpdateItem"])
def test_responses_are_the_bytes_moto_serializes(aws: Settings, operation: str) -> None:
    from moto.core.responses import ActionContext, ActionResult
    from moto.core.serialize import JSONSerializer
    from moto.core.utils import get_service_model
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.models.utilities import dynamo_to_dict
    from moto.dynamodb.responses import DynamoHandler, DynamoResult

    stored = Item(RICH_ITEM["pk"], RICH_ITEM["sk"], {**RICH_ITEM, "blob": {"B": "AP9ieXRlcw=="}})
    results = {
        "GetItem": {"Item": stored.attrs},
        "Query": {"Items": [stored.attrs, stored.attrs], "Count": 2, "ScannedCount": 2},
        "BatchGetItem": {"Responses": {"t": [stored.attrs]}, "UnprocessedKeys": {}},
        "UpdateItem": {"Attributes": stored.attrs},
    }
    model = get_service_model("dynamodb")
    context = ActionContext(model, model.operation_model(operation), JSONSerializer, DynamoHandler())
    result = DynamoResult(results[operation])
    assert result.result == dynamo_to_dict(results[operation])

    assert moto_fixes.execute_result(result, context) == ActionResult.execute_result(result, context)


# -- updates ------------------------------------------------------------------------------------------

_BIG = "x" * 300_000
# (UpdateExpression, names, values, condition, return values on a failed condition), applied in order to one item
UPDATES: list[tuple[str, dict[str, str], dict[str, Any], str | None, str | None]] = [
    (
        "ADD quantity :q, event_count :n, version :one SET #s0 = :s0, #s1 = :s1",
        {"#s0": "meter", "#s1": "gsi1pk"},
        {":q": {"N": "1.50"}, ":n": {"N": "2"}, ":one": {"N": "1"}, ":s0": {"S": "runs"}, ":s1": {"S": "L1#d"}},
        None,
        None,
    ),
    ("ADD quantity :q, version :one", {}, {":q": {"N": "1E-9"}, ":one": {"N": "1"}}, None, None),
    ("SET max_q = :mx", {}, {":mx": {"N": "7"}}, "attribute_not_exists(max_q) OR max_q < :mx", None),
    ("SET max_q = :mx", {}, {":mx": {"N": "3"}}, "attribute_not_exists(max_q) OR max_q < :mx", "ALL_OLD"),
    ("SET latest_at = :la, latest_q = :lq", {}, {":la": {"S": "2026-05-01T10"}, ":lq": {"N": "4"}}, None, None),
    ("ADD uniq :u", {}, {":u": {"SS": ["b", "a", "b"]}}, None, None),
    ("ADD #u :u", {"#u": "uniq"}, {":u": {"SS": ["c", "a"]}}, None, None),
    ("REMOVE max_q, latest_q SET note = :v", {}, {":v": {"M": {"k": {"L": [{"N": "1"}]}}}}, None, None),
    ("ADD quantity :s", {}, {":s": {"SS": ["x"]}}, None, None),  # a set onto a number
    ("ADD uniq :n", {}, {":n": {"N": "1"}}, None, None),  # a number onto a set
    ("ADD meter :v", {}, {":v": {"S": "x"}}, None, None),  # ADD of a string
    ("SET gsi1pk = :n", {}, {":n": {"N": "1"}}, None, None),  # an index key of the wrong type
    ("SET gsi1sk = :e", {}, {":e": {"S": ""}}, None, None),  # an index key set to the empty string
    ("SET pk = :v", {}, {":v": {"S": "R#other"}}, None, None),  # the table's key
    ("SET #a = :v, #b = :v", {"#a": "twice", "#b": "twice"}, {":v": {"S": "x"}}, None, None),
    ("SET a = :nope", {}, {":v": {"S": "x"}}, None, None),
    ("SET name = :v", {}, {":v": {"S": "x"}}, None, None),  # a reserved word
    ("SET a = :v SET b = :v", {}, {":v": {"S": "x"}}, None, None),
    ("ADD quantity :big", {}, {":big": {"N": "9" * 38 + "E+87"}}, None, None),
    ("set lower = :v", {}, {":v": {"S": "x"}}, None, None),
    ("SET a.b = :v", {}, {":v": {"S": "x"}}, None, None),
    ("SET a = if_not_exists(a, :v)", {}, {":v": {"S": "x"}}, None, None),
    ("DELETE uniq :u", {}, {":u": {"SS": ["a"]}}, None, None),
    ("SET big1 = :big", {}, {":big": {"S": _BIG}}, None, None),
    ("SET big2 = :big", {}, {":big": {"S": _BIG}}, None, None),  # over the item size limit
    ("ADD version :one", {}, {":one": {"N": "1"}}, "attribute_exists(pk) AND version > :one", None),
]


def _run_updates(table: str, pk: str) -> list[Any]:
    answers: list[Any] = []
    for expression, names, values, condition, on_failure in UPDATES:
        request: dict[str, Any] = {
            "TableName": table,
            "Key": key(pk, "a"),
            "UpdateExpression": expression,
            "ExpressionAttributeValues": values,
            "ReturnValues": "ALL_NEW",
        }
        if names:
            request["ExpressionAttributeNames"] = names
        if condition:
            request["ConditionExpression"] = condition
        if on_failure:
            request["ReturnValuesOnConditionCheckFailure"] = on_failure
        try:
            answers.append(("ok", ddb().update_item(**request)["Attributes"]))
        except ClientError as error:
            answers.append(("refused", error.response["Error"], error.response.get("Item")))
    # a transaction of simple updates, one of which cannot hold, then one that can
    missing = {
        "Update": {
            "TableName": table,
            "Key": key(pk, "missing"),
            "UpdateExpression": "ADD quantity :q",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": {":q": {"N": "1"}},
        }
    }
    with pytest.raises(ClientError) as refused:
        ddb().transact_write_items(TransactItems=[add(table, pk, "a", "2"), missing])
    answers.append([reason.get("Code") for reason in cancelled(refused)])
    ddb().transact_write_items(TransactItems=[add(table, pk, "a", "2"), add(table, pk, "b", "3")])
    answers.append(sorted((item["sk"]["S"], item) for item in everything(table) if item["pk"]["S"] == pk))
    return answers


def test_simple_updates_answer_and_store_exactly_what_moto_answers_and_stores(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct UpdateItem path against moto's own, request for request, refusals included."""
    applied = Counter[str]()
    direct = moto_fixes._apply

    def counting(*args: Any) -> None:
        applied["actions"] += 1
        direct(*args)

    monkeypatch.setattr(moto_fixes, "_apply", counting)
    fixed = _run_updates(table, "R#fixed")
    assert applied["actions"] >= 15  # the simple updates did take the direct path
    monkeypatch.setattr(moto_fixes, "_plan", lambda expression: None)  # every update through moto's validator
    applied.clear()
    moto = _run_updates(table, "R#moto")
    assert applied["actions"] == 0

    def renamed(answers: list[Any]) -> Any:
        return repr(answers).replace("R#fixed", "R#moto")

    assert renamed(fixed) == repr(moto)
    assert [answer[0] for answer in fixed[: len(UPDATES)]].count("refused") >= 15
