"""Exact JSON: numbers parse to Decimal and Decimals print as exact JSON numbers."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import simplejson


class JsonParseError(ValueError):
    """The text is not JSON this service accepts."""


def _reject_constant(name: str) -> Any:
    raise JsonParseError(f"{name} is not a valid JSON number")


def loads(text: str | bytes) -> Any:
    """Parse JSON with non-integral numbers as Decimal; NaN and Infinity are refused."""
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except JsonParseError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JsonParseError(str(exc)) from exc


def _extra(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _PlainDecimal(Decimal):
    """A Decimal that prints in plain notation (0.000000001, 1000), never 1E-9 or 1E+3."""

    def __str__(self) -> str:
        return format(self, "f")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _PlainDecimal(value) if value.is_finite() and "E" in str(value) else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def plain_number(value: Decimal) -> str:
    """A decimal's exact value in plain notation, as every answer and export writes it."""
    return format(value, "f")


def dumps(value: Any) -> str:
    """Serialize with Decimals as exact JSON numbers in plain notation (never through float); dates as ISO text."""
    text: str = simplejson.dumps(
        _plain(value), use_decimal=True, separators=(",", ":"), ensure_ascii=True, default=_extra
    )
    return text
