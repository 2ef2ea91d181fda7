"""Conversion between Python values and DynamoDB's attribute-value format."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _prepare(value: Any) -> Any:
    if isinstance(value, float):
        raise TypeError("floats are never stored; use Decimal")
    if isinstance(value, (list, tuple)):
        return [_prepare(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [_prepare(v) for v in sorted(value)]
    if isinstance(value, Mapping):
        return {k: _prepare(v) for k, v in value.items()}
    return value


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict (Decimals, strings, lists, dicts) as a DynamoDB item; None is stored as NULL."""
    return {k: _serializer.serialize(_prepare(v)) for k, v in values.items()}


def to_value(value: Any) -> dict[str, Any]:
    serialized: dict[str, Any] = _serializer.serialize(_prepare(value))  # type: ignore[assignment]
    return serialized


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as a plain dict; numbers come back as Decimal."""
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def dec(value: Any) -> Decimal:
    """A stored number as Decimal (moto keeps "5.0", DynamoDB returns "5": compare as numbers)."""
    return value if isinstance(value, Decimal) else Decimal(str(value))
