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
- items are no longer kept alive by moto's instance tracking (`new_item`);
- an UpdateItem made only of top-level SET name = :value, ADD and REMOVE actions
  is applied directly instead of through moto's validator, which deep-copies
  and walks the expression's syntax tree ten times per request; any other
  expression, and any request moto would refuse, still goes through moto
  (`update_item`), and an expression is parsed once per process (`parse_update`).

What DynamoDB answers is unchanged by every fix except the numbers, where moto
was wrong (tests/integration/test_emulator.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import decimal
import functools
import inspect
import re
import weakref
from collections.abc import Callable
from decimal import Decimal
from typing import Any, cast

from moto.core.responses import ActionResult
from moto.core.serialize import JSONSerializer
from moto.dynamodb.comparisons import (
    create_condition_expression_parser,
    get_comparison_func,
    get_filter_expression,
)
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    ItemSizeTooLarge,
    ItemSizeToUpdateTooLarge,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]  # the module is untyped
from moto.dynamodb.parsing.reserved_keywords import ReservedKeywords
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
    _replace(UpdateExpressionParser, "make", classmethod(parse_update))
    _replace(DynamoDBBackend, "update_item", update_item)
    _wrap(DynamoType, "__add__", lambda original: _number_operator(original, number_add))
    _wrap(DynamoType, "__sub__", lambda original: _number_operator(original, number_sub))
    _wrap(Table, "query", _scoped_query)
    _wrap(Table, "put_item", _tracking_put)
    _wrap(DynamoDBBackend, "update_item", _tracking_update)


def _replace(owner: type, name: str, fix: Any) -> None:
    current = owner.__dict__.get(name)
    if getattr(current, "__func__", current) is not getattr(fix, "__func__", fix) and not getattr(
        current, "_moto_fix", False
    ):
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


# -- updates ----------------------------------------------------------------------------------------

_MOTO_UPDATE_ITEM = DynamoDBBackend.update_item
_MOTO_PARSE_UPDATE = UpdateExpressionParser.make.__func__  # type: ignore[attr-defined]
_CACHE_SIZE = 4096


def parse_update(cls: type[UpdateExpressionParser], expression: str) -> Any:
    """UpdateExpressionParser.make, parsing each expression once.

    moto parses an UpdateExpression twice per UpdateItem (once to find the
    placeholders it uses, once to validate it), and a service sends a few
    expression shapes many times. Nothing changes the tree it returns (the
    validator works on a deep copy), so the tree is kept; an expression that
    fails to parse raises each time, as before.
    """
    return _parsed(expression)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parsed(expression: str) -> Any:
    return _MOTO_PARSE_UPDATE(UpdateExpressionParser, expression)


_TOKEN = re.compile(r"\s*(?:([#:]?[A-Za-z0-9_]+)|(.))")
_CLAUSES = ("SET", "ADD", "REMOVE")
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"[#:][A-Za-z0-9_]+")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _plan(expression: str) -> tuple[tuple[str, str, str | None], ...] | None:
    """The (clause, path, value placeholder) actions of a simple UpdateExpression, or None.

    Simple: SET, ADD and REMOVE clauses, each at most once, whose actions are
    `path = :value`, `path :value` and `path`, where a path is a `#name`
    placeholder or a plain name that is not a reserved word. Anything else
    (nested paths, functions, arithmetic, DELETE, syntax errors) is None.
    """
    return _parse_plan(expression)


def _parse_plan(expression: str) -> tuple[tuple[str, str, str | None], ...] | None:
    tokens: list[str] = []
    position = 0
    while position < len(expression):
        if expression[position:].isspace():
            break
        match = _TOKEN.match(expression, position)
        if match is None:
            return None
        tokens.append(match.group(1) or match.group(2))
        position = match.end()
    reserved = set(ReservedKeywords.get_reserved_keywords())
    actions: list[tuple[str, str, str | None]] = []
    seen: set[str] = set()
    index = 0

    def path_at(i: int) -> str | None:
        if i >= len(tokens):
            return None
        token = tokens[i]
        if token.startswith("#"):
            return token if _PLACEHOLDER.fullmatch(token) else None
        if _PLAIN_NAME.fullmatch(token) and token.upper() not in reserved:
            return token
        return None

    def value_at(i: int) -> str | None:
        token = tokens[i] if i < len(tokens) else ""
        return token if token.startswith(":") and _PLACEHOLDER.fullmatch(token) else None

    while index < len(tokens):
        clause = tokens[index]
        if clause not in _CLAUSES or clause in seen:
            return None
        seen.add(clause)
        index += 1
        while True:
            path = path_at(index)
            if path is None:
                return None
            index += 1
            value: str | None = None
            if clause == "SET":
                if index >= len(tokens) or tokens[index] != "=":
                    return None
                index += 1
            if clause in ("SET", "ADD"):
                value = value_at(index)
                if value is None:
                    return None
                index += 1
            actions.append((clause, path, value))
            if index < len(tokens) and tokens[index] == ",":
                index += 1
                continue
            break
    return tuple(actions) if actions else None


_SETS = ("SS", "NS", "BS")


def _resolve(
    plan: tuple[tuple[str, str, str | None], ...],
    names: dict[str, str],
    values: dict[str, Any],
    table: Table,
) -> list[tuple[str, str, DynamoType | None]] | None:
    """The plan with its placeholders resolved, or None where moto's validator might object.

    None for: an undefined placeholder, a path named twice, a key attribute of
    the table, a SET of a type other than an attribute definition's or of an
    empty string or binary, an ADD of anything but a number or a non-empty set.
    """
    resolved: list[tuple[str, str, DynamoType | None]] = []
    seen: set[str] = set()
    definitions = {d["AttributeName"]: d["AttributeType"] for d in table.attr}
    for clause, path, placeholder in plan:
        name = names.get(path) if path.startswith("#") else path
        if name is None or name in seen or name in table.table_key_attrs:
            return None
        seen.add(name)
        value: DynamoType | None = None
        if placeholder is not None:
            raw = values.get(placeholder)
            if type(raw) is not dict or len(raw) != 1:
                return None
            ((kind, inner),) = raw.items()
            if clause == "SET":
                if kind in ("S", "B") and not inner:
                    return None
                if name in definitions and definitions[name] != kind:
                    return None
            elif kind != "N" and not (kind in _SETS and inner):
                return None
            value = DynamoType(raw)
        resolved.append((clause, name, value))
    return resolved


def update_item(
    self: DynamoDBBackend,
    table_name: str,
    key: dict[str, dict[str, Any]],
    update_expression: str,
    expression_attribute_names: dict[str, Any] | None,
    expression_attribute_values: dict[str, Any] | None,
    attribute_updates: dict[str, Any] | None = None,
    expected: dict[str, Any] | None = None,
    condition_expression: str | None = None,
    return_values_on_condition_check_failure: str | None = None,
) -> Item:
    """UpdateItem, applying a simple expression (`_plan`) directly.

    moto validates each UpdateItem by deep-copying the expression's tree and
    walking it with ten processors (most of an aggregator's time in the
    emulator). For simple expressions the same checks are made on the resolved
    actions, and whenever one might fail, or the item holds a value of another
    type than an ADD's, the request goes to moto unchanged, so that every error
    is moto's own. Applying follows moto's executors: SET stores the value, ADD
    adds a number (exactly, `number_add`) or appends a set's new members in
    order, REMOVE drops the attribute, in the order written; the condition, the
    creation of a missing item, the size limit and the stream record are as in
    moto.
    """
    original = cast(Callable[..., Item], _MOTO_UPDATE_ITEM)
    arguments = (table_name, key, update_expression, expression_attribute_names, expression_attribute_values)
    options = {
        "attribute_updates": attribute_updates,
        "expected": expected,
        "condition_expression": condition_expression,
        "return_values_on_condition_check_failure": return_values_on_condition_check_failure,
    }
    plan = _plan(update_expression) if update_expression and not attribute_updates and not expected else None
    table = self.get_table(table_name)
    actions = (
        _resolve(plan, expression_attribute_names or {}, expression_attribute_values or {}, table)
        if plan is not None
        else None
    )
    if actions is None or table.hash_key_attr not in key:
        return original(self, *arguments, **options)
    hash_value = DynamoType(key[table.hash_key_attr])
    range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
    item = table.get_item(hash_value, range_value)
    for clause, name, value in actions:
        present = item.attrs.get(name) if item is not None else None
        if clause == "ADD" and present is not None and value is not None and present.type != value.type:
            return original(self, *arguments, **options)  # moto's IncorrectDataType, as moto raises it
    condition = create_condition_expression_parser(
        condition_expression, expression_attribute_names, expression_attribute_values
    ).parse()
    if not condition.expr(item):
        if return_values_on_condition_check_failure == "ALL_OLD" and item is not None:
            raise ConditionalCheckFailed(item=item.to_json()["Attributes"])
        raise ConditionalCheckFailed
    before = copy.deepcopy(item) if table.stream_shard is not None else None
    if item is None:
        data: dict[str, Any] = {table.hash_key_attr: {hash_value.type: hash_value.value}}
        if range_value is not None and table.range_key_attr is not None:
            data[table.range_key_attr] = {range_value.type: range_value.value}
        table.put_item(data)
        item = table.get_item(hash_value, range_value)
    assert item is not None
    try:
        for clause, name, value in actions:
            _apply(item, clause, name, value)
    except ItemSizeTooLarge:
        raise ItemSizeToUpdateTooLarge() from None
    if table.stream_shard is not None:
        table.stream_shard.add(before, item)
    return item


def _apply(item: Item, clause: str, name: str, value: DynamoType | None) -> None:
    """One resolved action, as moto's SET, ADD and REMOVE executors apply it to a top-level attribute."""
    if clause == "REMOVE":
        item.attrs.pop(name, None)
        return
    assert value is not None
    if clause == "SET":
        item.attrs[name] = value
    elif value.type == "N":
        item.attrs[name] = item.attrs.get(name, DynamoType({"N": "0"})) + value
    else:
        members = item.attrs.get(name)
        if members is None:
            members = DynamoType({value.type: []})
            item.attrs[name] = members
        present = set(members.value)
        for member in value.value:
            if member not in present:
                members.value.append(member)
                present.add(member)
