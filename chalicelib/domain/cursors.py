"""Opaque page cursors: signed, and bound to the caller's organization and query.

A cursor is base64url(JSON payload + HMAC-SHA256). It cannot be forged without
the service's secret, and one minted for another organization or another query
is refused, so a crafted cursor never reads data the query itself could not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from chalicelib.errors import ErrorCode, MeteringError

MAX_CURSOR_LENGTH = 2048


def binding(organization_id: str, kind: str, query: Mapping[str, Any]) -> str:
    """What a cursor is tied to: who asks, which endpoint, which filters."""
    text = json.dumps({"o": organization_id, "k": kind, "q": query}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def encode(position: Mapping[str, Any], bound_to: str, secret: str) -> str:
    payload = json.dumps({"b": bound_to, "p": position}, sort_keys=True, separators=(",", ":")).encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")


def decode(token: str, bound_to: str, secret: str, field: str = "cursor") -> dict[str, Any]:
    """The position a cursor holds, or a 400 invalid_cursor."""
    error = MeteringError(ErrorCode.INVALID_CURSOR, field=field)
    if not token or len(token) > MAX_CURSOR_LENGTH:
        raise error
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raise error from None
    mac, payload = raw[:16], raw[16:]
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(mac, expected):
        raise error
    try:
        data = json.loads(payload)
    except ValueError:
        raise error from None
    if not isinstance(data, dict) or data.get("b") != bound_to or not isinstance(data.get("p"), dict):
        raise error
    position: dict[str, Any] = data["p"]
    return position
