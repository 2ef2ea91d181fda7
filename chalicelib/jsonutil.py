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


def dumps(value: Any) -> str:
    """Serialize with Decimals as exact JSON numbers (never through float); dates as ISO text."""
    text: str = simplejson.dumps(value, use_decimal=True, separators=(",", ":"), ensure_ascii=True, default=_extra)
    return text
