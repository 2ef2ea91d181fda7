"""Fixes to moto 5.x's DynamoDB emulation, put in place by the emulator at each start.

Each fix replaces or wraps one moto function; its docstring says what moto does
and what changes. Together they keep the emulator's cost per request
independent of the size of the table, and its numbers exact:

- transactions undo only the items they wrote, instead of deep-copying every
  table they touch once per action (`transact_write_items`);
- ADD and ``+``/``-`` on numbers are exact to DynamoDB's 38 digits, accept any
  valid spelling ("1E-9") and answer in plain notation (`number_add`, `number_sub`);
- a base-table Query reads only its partition, an index Query only the items
  under its index hash key (kept in `_IndexBuckets`), both cut to the sort key
  range, and items are ordered by key values instead of Python-level
  comparisons (`query`, `all_items`, `sorted_items`);
- item attribute values are serialized straight to JSON instead of member by
  member through the botocore shape (`execute_result`);
- items are no longer kept alive by moto's instance tracking (`new_item`).

What DynamoDB answers is unchanged by every fix except the numbers, where moto
was wrong (tests/integration/test_emulator.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import decimal
import inspect
import weakref
from collections.abc import Callable
from decimal import Decimal
from typing import Any, cast

from moto.core.responses import ActionResult
from moto.core.serialize import JSONSerializer
from moto.dynamodb.comparisons import get_comparison_func, get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoResult

__all__ = ["copy_item", "install"]


def install() -> None:
    """Put every fix in place; a fix already in place is left alone.

    Idempotent by identity, not by a flag, so calling it at each emulator start
    re-installs a fix that something (a test's monkeypatch) has since undone.
    """
    _replace(DynamoDBBackend, "transact_write_items", transact_write_items)
    _replace(Table, "all_items", all_items)
    _replace(Table, "sorted_items", sorted_items)
    _replace(DynamoResult, "execute_result", execute_result)
    _replace(Item, "__new__", staticmethod(new_item))
    _wrap(DynamoType, "__add__", lambda original: _number_operator(original, number_add))
    _wrap(DynamoType, "__sub__", lambda original: _number_operator(original, number_sub))
    _wrap(Table, "query", _scoped_query)
    _wrap(Table, "put_item", _tracking_put)
    _wrap(DynamoDBBackend, "update_item", _tracking_update)


def _replace(owner: type, name: str, fix: Any) -> None:
    current = owner.__dict__.get(name)
    if getattr(current, "__func__", current) is not getattr(fix, "__func__", fix):
        setattr(owner, name, fix)


def _wrap(owner: type, name: str, make: Callable[[Any], Any]) -> None:
    current = getattr(owner, name)
    if not getattr(current, "_moto_fix", False):
        wrapper = make(current)
        wrapper._moto_fix = True
        setattr(owner, name, wrapper)


# -- items ----------------------------------------------------------------------------------------


def new_item(cls: type[Item], *args: Any, **kwargs: Any) -> Item:
    """Item.__new__ without moto's instance tracking.

    moto's BaseModel.__new__ appends every instance to a class-level list for
    its server dashboard; for Item that is every stored item and every copy a
    Query, UpdateItem or transaction makes, kept alive until the mock stops, so
    memory (and the garbage collector's work) grows with every request. Items
    are plain data and are no longer listed there.
    """
    return object.__new__(cls)


# -- transactions -----------------------------------------------------------------------------------


def copy_item(item: Item) -> Item:
    """An independent copy of a stored item (the only copying a transaction does)."""
    return copy.deepcopy(item)


class _Journal:
    """The prior state of each item a transaction writes, to put back if it is cancelled."""

    def __init__(self) -> None:
        self._entries: list[tuple[Table, DynamoType, DynamoType | None, Item | None]] = []
        self._stream_marks: dict[int, tuple[Any, int]] = {}

    def remember(self, table: Table, hash_key: DynamoType, range_key: DynamoType | None, current: Item | None) -> None:
        prior = None if current is None else copy_item(current)
        self._entries.append((table, hash_key, range_key, prior))
        shard = table.stream_shard
        if shard is not None and id(shard) not in self._stream_marks:
            self._stream_marks[id(shard)] = (shard, len(shard.items))

    def undo(self) -> None:
        for table, hash_key, range_key, prior in reversed(self._entries):
            if table.range_key_attr is None:
                if prior is None:
                    table.items.pop(hash_key, None)
                else:
                    table.items[hash_key] = prior  # type: ignore[assignment]  # a hash-only table holds items
                _track(table, prior)
                continue
            if prior is not None:
                table.items[hash_key][range_key] = prior
                _track(table, prior)
                continue
            partition = table.items.get(hash_key)
            if partition is not None:
                partition.pop(range_key, None)
                if not partition:
                    del table.items[hash_key]
        for shard, mark in self._stream_marks.values():
            del shard.items[mark:]
        self._entries.clear()


_Reason = tuple[str | None, str | None, dict[str, Any] | None]
_ACTIONS = ("ConditionCheck", "Put", "Delete", "Update")


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """TransactWriteItems: all actions or none, undoing only the items the transaction wrote.

    moto (DynamoDBBackend.transact_write_items) deep-copies each table the
    transaction names once per action before applying anything, and puts the
    copy back when an action fails, so a transaction costs O(table size x
    actions) in time and memory. This version applies the actions exactly as
    moto does (same checks, same order, same errors) but remembers each written
    item's prior state just before writing it and, when the transaction is
    cancelled, restores only those items and drops the stream records it added.
    It also undoes the writes when an action has two operations, which moto
    raises without rolling back.

    Semantics kept from moto: at most 100 actions; one action per item
    (ValidationException otherwise, nothing written); every action is evaluated
    and, if any fails, TransactionCanceledException carries one reason per action
    in order ("None" for those that passed, "ConditionalCheckFailed" with the old
    item when ReturnValuesOnConditionCheckFailure is ALL_OLD); a
    ValidationException from any action cancels the whole transaction.
    """
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    journal = _Journal()
    touched: set[tuple[str, DynamoType, DynamoType | None]] = set()
    reasons: list[_Reason] = []
    try:
        for action in transact_items:
            if len(action) > 1:
                raise TransactWriteSingleOpException()
            reasons.append(_apply_action(self, action, touched, journal))
    except BaseException:
        journal.undo()
        raise
    if any(code is not None for code, _, _ in reasons):
        journal.undo()
        raise TransactionCanceledException(reasons)


def _apply_action(
    backend: DynamoDBBackend,
    action: dict[str, Any],
    touched: set[tuple[str, DynamoType, DynamoType | None]],
    journal: _Journal,
) -> _Reason:
    """Check and apply one action; its cancellation reason, or (None, None, None) if it passed."""
    op_type, op = next(iter(action.items()))
    old_item: dict[str, Any] | None = None
    try:
        if op_type not in _ACTIONS:
            raise ValueError("Unsupported transaction operation")
        table_name = op["TableName"]
        names = op.get("ExpressionAttributeNames")
        values = op.get("ExpressionAttributeValues")
        condition = op.get("ConditionExpression")
        table = backend.get_table(table_name)
        key = {name: op["Item"][name] for name in table.table_key_attrs} if op_type == "Put" else op["Key"]
        hash_key, range_key = backend.get_keys_value(table, key)
        if (table.name, hash_key, range_key) in touched:
            raise MultipleTransactionsException()
        touched.add((table.name, hash_key, range_key))
        current = table.get_item(hash_key, range_key)
        if condition is not None and not get_filter_expression(condition, names, values).expr(current):
            if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current is not None:
                old_item = current.to_json()["Attributes"]
            raise ConditionalCheckFailed(item=old_item)
        if op_type == "ConditionCheck":
            return (None, None, None)
        journal.remember(table, hash_key, range_key, current)
        conditions = {
            "condition_expression": condition,
            "expression_attribute_names": names,
            "expression_attribute_values": values,
        }
        if op_type == "Put":
            backend.put_item(table_name, op["Item"], **conditions)
        elif op_type == "Delete":
            backend.delete_item(table_name, key, **conditions)
        else:
            backend.update_item(table_name, key, update_expression=op["UpdateExpression"], **conditions)
        return (None, None, None)
    except (MultipleTransactionsException, MockValidationException):
        raise
    except ConditionalCheckFailed as failed:
        return ("ConditionalCheckFailed", str(failed.message), old_item)
    except Exception as error:
        return (type(error).__name__, str(error), old_item)


# -- numbers ----------------------------------------------------------------------------------------

# Wide enough that adding or subtracting any two stored numbers is exact.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.Inexact])
_MAX_DIGITS = 38
_MAX_EXPONENT = 125
_MIN_EXPONENT = -130
_OVERFLOW = "Number overflow. Attempting to store a number with magnitude larger than supported range"
_UNDERFLOW = "Number underflow. Attempting to store a number with magnitude smaller than supported range"


def number_add(left: str, right: str) -> str:
    """left + right for two DynamoDB numbers, as DynamoDB stores it."""
    return _stored_number(_EXACT.add(Decimal(left), Decimal(right)))


def number_sub(left: str, right: str) -> str:
    """left - right for two DynamoDB numbers, as DynamoDB stores it."""
    return _stored_number(_EXACT.subtract(Decimal(left), Decimal(right)))


def _stored_number(exact: Decimal) -> str:
    """A result in plain notation ("0.000000001", "100"), or DynamoDB's error when it cannot be stored.

    DynamoDB numbers have at most 38 significant digits and a magnitude from
    1E-130 to below 1E+126; a result needing more digits is refused with the
    overflow message, as DynamoDB does.
    """
    if exact.is_zero():
        return "0"
    value = exact.normalize(_EXACT)
    if len(value.as_tuple().digits) > _MAX_DIGITS or value.adjusted() > _MAX_EXPONENT:
        raise MockValidationException(_OVERFLOW)
    if value.adjusted() < _MIN_EXPONENT:
        raise MockValidationException(_UNDERFLOW)
    return format(value, "f")


def _number_operator(
    original: Callable[[DynamoType, DynamoType], DynamoType], operation: Callable[[str, str], str]
) -> Callable[[DynamoType, DynamoType], DynamoType]:
    """DynamoType.__add__ / __sub__ with exact number arithmetic.

    moto parses a number with `int()` unless it contains a ".", so "1E-9" (which
    moto itself produces for small sums) fails with a ValueError, computes in
    Python's default 28-digit context (rounding 38-digit values) and stores the
    result as `str(Decimal)`, which uses exponent notation below 1E-6. Numbers
    now go through `number_add` / `number_sub`; other types keep moto's behaviour.
    """

    def operator(self: DynamoType, other: DynamoType) -> DynamoType:
        if self.type != other.type or not self.is_number():
            return original(self, other)
        return DynamoType({"N": operation(self.value, other.value)})

    operator.__name__ = original.__name__
    operator.__doc__ = _number_operator.__doc__
    return operator


# -- queries and ordering ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _QueryScope:
    """What the Query in progress on this thread can match.

    `hash_key` for a base-table Query, `index_conditions` ((attribute, value)
    pairs) for an index Query; `key_range` is the sort key condition
    (attribute, comparison, values) when there is one.
    """

    hash_key: DynamoType | None
    index_conditions: tuple[tuple[str, DynamoType], ...]
    key_range: tuple[str, str, list[DynamoType]] | None


_query_scope: contextvars.ContextVar[_QueryScope | None] = contextvars.ContextVar("moto_query_scope", default=None)


def _scoped_query(original: Callable[..., Any]) -> Callable[..., Any]:
    """Table.query, telling `all_items` and `sorted_items` which items the query can match.

    moto's Table.query lists every item of the table, sorted, keeps those of the
    queried partition (for an index, those whose index hash key matches), sorts
    them and then walks all of them, computing each one's size, to pick those in
    the sort key range: O(n log n) Python comparisons on a table of n items.
    The wrapper lets `all_items` list only the candidates moto keeps and
    `sorted_items` cut them to the sort key range; the rest of moto's query
    (order, Limit, ExclusiveStartKey, filters, projections) runs unchanged.
    """
    signature = inspect.signature(original)

    def query(self: Table, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs).arguments
        conditions = bound.get("range_key_conditions") or []
        key_range = conditions[-1] if conditions and not bound.get("filter_kwargs") else None
        scope: _QueryScope | None = None
        if bound.get("index_name"):
            index_conditions = tuple(bound.get("hash_key_conditions") or ())
            if index_conditions:
                scope = _QueryScope(None, index_conditions, key_range)
        elif bound.get("hash_key") is not None:
            scope = _QueryScope(bound["hash_key"], (), key_range)
        token = _query_scope.set(scope)
        try:
            return original(self, *args, **kwargs)
        finally:
            _query_scope.reset(token)

    query.__name__ = original.__name__
    query.__doc__ = _scoped_query.__doc__
    return query


def _cast(value: DynamoType) -> Any:
    """value.cast_value, quickly for strings."""
    return value.value if value.type == "S" else value.cast_value


def _key_order(item: Item) -> Any:
    if item.range_key is not None:
        return (_cast(item.hash_key), _cast(item.range_key))
    return _cast(item.hash_key)


def _listed(table: Table) -> list[Item]:
    if table.range_key_attr is None:
        return list(table.items.values())  # type: ignore[arg-type]  # a hash-only table holds items
    return [item for partition in table.items.values() for item in partition.values()]


def all_items(self: Table) -> list[Item]:
    """The table's items in (hash key, range key) order; within a Query, only those it can match.

    moto sorts the whole table comparing DynamoType objects (several Python
    calls per comparison). Sorting by the key values gives the same order, since
    a table's key attributes have one type each. Inside a base-table Query only
    the queried partition is listed, cut to the sort key range (`_in_range`);
    inside an index Query only the items whose index hash key attributes equal
    the query's, unordered (moto sorts them by their full key in `sorted_items`).
    """
    scope = _query_scope.get()
    if scope is None:
        return sorted(_listed(self), key=_key_order)
    if scope.hash_key is None:
        return _index_candidates(self, scope.index_conditions)
    partition = self.items.get(scope.hash_key)
    if partition is None:
        return []
    if self.range_key_attr is None:
        return [cast(Item, partition)]
    return _in_range(sorted(partition.values(), key=_key_order), scope.key_range)


_SCALAR = ("S", "N", "B")


class _IndexBuckets:
    """One table's items grouped by the value of each attribute an index Query has looked up.

    Built on the first index Query for an attribute, then kept current by
    `_track`, which the only moto paths that store or change an item call
    (Table.put_item, DynamoDBBackend.update_item, a cancelled transaction's
    undo). An entry can go stale (the item was replaced, deleted or changed);
    lookups check each entry against the table and drop stale ones.
    """

    def __init__(self) -> None:
        self.by_name: dict[str, dict[tuple[str, Any], dict[tuple[DynamoType, DynamoType | None], Item]]] = {}

    def add(self, name: str, item: Item) -> None:
        value = item.attrs.get(name)
        if value is not None and value.type in _SCALAR:
            bucket = self.by_name[name].setdefault((value.type, value.cast_value), {})
            bucket[(item.hash_key, item.range_key)] = item


_buckets: weakref.WeakKeyDictionary[Table, _IndexBuckets] = weakref.WeakKeyDictionary()


def _track(table: Table, item: Item | None) -> None:
    """Record a stored or changed item under its current values of the bucketed attributes."""
    buckets = _buckets.get(table)
    if buckets is not None and item is not None:
        for name in buckets.by_name:
            buckets.add(name, item)


def _stored(table: Table, item: Item) -> Item | None:
    """The item the table holds under `item`'s key."""
    entry: Any = table.items.get(item.hash_key)
    if entry is None or table.range_key_attr is None:
        return cast(Item | None, entry)
    return cast(Item | None, entry.get(item.range_key))


def _equals(value: DynamoType | None, wanted: DynamoType) -> bool:
    return value is not None and value == wanted


def _index_candidates(table: Table, conditions: tuple[tuple[str, DynamoType], ...]) -> list[Item]:
    """The items whose attributes equal every (name, value) condition (DynamoType equality)."""
    name, wanted = conditions[0]
    if wanted.type not in _SCALAR:
        found = [item for item in _listed(table) if _equals(item.attrs.get(name), wanted)]
    else:
        buckets = _buckets.setdefault(table, _IndexBuckets())
        if name not in buckets.by_name:
            buckets.by_name[name] = {}
            for item in _listed(table):
                buckets.add(name, item)
        bucket = buckets.by_name[name].get((wanted.type, wanted.cast_value), {})
        found = []
        for item_key, item in list(bucket.items()):
            if _stored(table, item) is item and _equals(item.attrs.get(name), wanted):
                found.append(item)
            else:
                del bucket[item_key]
    return [item for item in found if all(_equals(item.attrs.get(n), value) for n, value in conditions[1:])]


def _tracking_put(original: Callable[..., Item]) -> Callable[..., Item]:
    """Table.put_item, recording the stored item in the index buckets."""

    def put_item(self: Table, *args: Any, **kwargs: Any) -> Item:
        item = original(self, *args, **kwargs)
        _track(self, item)
        return item

    put_item.__name__ = original.__name__
    put_item.__doc__ = original.__doc__
    return put_item


def _tracking_update(original: Callable[..., Item]) -> Callable[..., Item]:
    """DynamoDBBackend.update_item, recording the changed item in the index buckets.

    moto changes the stored item in place and can stop half way on an error,
    so after a failed update the table's buckets are rebuilt on next use.
    """

    def update_item(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Item:
        try:
            item = original(self, table_name, *args, **kwargs)
        except ConditionalCheckFailed:
            raise  # checked before anything changes
        except BaseException:
            with contextlib.suppress(Exception):
                _buckets.pop(self.get_table(table_name), None)
            raise
        _track(self.get_table(table_name), item)
        return item

    update_item.__name__ = original.__name__
    update_item.__doc__ = original.__doc__
    return update_item


def _in_range(ordered: list[Item], key_range: tuple[str, str, list[DynamoType]] | None) -> list[Item]:
    """The span of `ordered` (in query order) from the first to the last item in the sort key range,
    with one item more on each side.

    moto's query loop skips items outside the range, except that reaching Limit
    with one more item to come answers a LastEvaluatedKey: the item after the
    span keeps that answer, the item before it changes nothing.
    """
    if key_range is None:
        return ordered
    name, comparison, values = key_range
    matches = get_comparison_func(comparison)  # what DynamoType.compare applies, with the bounds cast once
    bounds = [bound.cast_value for bound in values]
    inside = [
        index
        for index, item in enumerate(ordered)
        if (value := item.attrs.get(name)) is not None and matches(_cast(value), *bounds)
    ]
    if not inside:
        return []
    return ordered[max(inside[0] - 1, 0) : inside[-1] + 2]


def sorted_items(self: Table, hash_key_attrs: list[str], range_key_attrs: list[str | None], items: list[Item]) -> Any:
    """Index query and scan candidates sorted by index keys, then table keys; within a Query, cut to its range.

    moto sorts with tuples of DynamoType objects (Python-level comparisons);
    the same tuples of key values give the same order.
    """
    attrs = self._generate_attr_to_sort_by(hash_key_attrs, range_key_attrs)
    items.sort(key=lambda item: tuple(_cast(item.attrs[name]) for name in attrs))
    scope = _query_scope.get()
    if scope is None:
        return items
    return _in_range(items, scope.key_range)


# -- response serialization -------------------------------------------------------------------------


def _plain_attribute_value(value: Any) -> dict[str, Any] | None:
    """The JSON moto's serializer makes of an AttributeValue, or None to let it serialize this one.

    Binary values (B, BS) and anything unexpected are left to moto's serializer.
    """
    if type(value) is not dict or len(value) != 1:
        return None
    ((kind, inner),) = value.items()
    if kind in ("S", "N"):
        return {kind: inner} if type(inner) is str else None
    if kind in ("BOOL", "NULL"):
        return {kind: inner} if type(inner) is bool else None
    if kind in ("SS", "NS"):
        if type(inner) is list and all(type(member) is str for member in inner):
            return {kind: list(inner)}
        return None
    if kind == "M" and type(inner) is dict:
        members: dict[str, Any] = {}
        for name, member in inner.items():
            plain = _plain_attribute_value(member)
            if plain is None:
                return None
            members[name] = plain
        return {"M": members}
    if kind == "L" and type(inner) is list:
        elements: list[Any] = []
        for member in inner:
            plain = _plain_attribute_value(member)
            if plain is None:
                return None
            elements.append(plain)
        return {"L": elements}
    return None


class _DynamoJSONSerializer(JSONSerializer):  # type: ignore[misc]
    """moto's JSON serializer, with item attribute values written directly."""

    def _serialize_type_structure(self, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if key and shape.name == "AttributeValue" and not getattr(self._value_picker, "response_transformers", None):
            plain = _plain_attribute_value(value)
            if plain is not None:
                serialized[self.get_serialized_name(shape, key)] = plain
                return
        super()._serialize_type_structure(serialized, value, shape, key)


def execute_result(self: DynamoResult, context: Any) -> Any:
    """A DynamoDB result serialized with `_DynamoJSONSerializer`.

    moto serializes each attribute value through the AttributeValue shape,
    looking every one of its ten members up under several aliases (about
    1.5 ms per 20-attribute item). String, number, boolean, null, set, list and
    map values serialize to themselves, so they are written as they are; the
    bytes sent to botocore are the same.
    """
    if context.serializer_class is JSONSerializer:
        context = dataclasses.replace(context, serializer_class=_DynamoJSONSerializer)
    return ActionResult.execute_result(self, context)
