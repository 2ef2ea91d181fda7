"""Opaque page cursors: encrypted, authenticated, and bound to the caller's organization and query.

A cursor is base64url(version || nonce || ciphertext || tag). The position it
holds (table key names, key values that may contain idempotency keys...) is
encrypted, so a caller learns nothing from it; the tag authenticates the
version, the nonce, the ciphertext and, as associated data, what the cursor is
bound to (organization, endpoint, filters), so a forged, altered, or borrowed
cursor (another organization's, another query's) is a 400 invalid_cursor.

The construction uses only the standard library (no compiled dependency in the
Lambda package): two keys derived from the service's secret with HMAC-SHA256
under distinct labels; encryption is HMAC-SHA256 in counter mode over a random
128-bit nonce (a PRF used as a stream cipher); authentication is HMAC-SHA256
over everything else (encrypt-then-MAC), truncated to 128 bits and compared in
constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from chalicelib.errors import ErrorCode, MeteringError

MAX_CURSOR_LENGTH = 2048
VERSION = b"\x02"  # 1 was the signed-but-readable format; such cursors are now refused
NONCE_BYTES = 16
TAG_BYTES = 16
_BLOCK = hashlib.sha256().digest_size


def binding(organization_id: str, kind: str, query: Mapping[str, Any]) -> str:
    """What a cursor is tied to: who asks, which endpoint, which filters."""
    text = json.dumps({"o": organization_id, "k": kind, "q": query}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=8)
def _keys(secret: str) -> tuple[bytes, bytes]:
    """The encryption key and the authentication key derived from the service's secret."""
    root = secret.encode()
    encryption = hmac.new(root, b"usage-metering cursor v2 encryption", hashlib.sha256).digest()
    authentication = hmac.new(root, b"usage-metering cursor v2 authentication", hashlib.sha256).digest()
    return encryption, authentication


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (length + _BLOCK - 1) // _BLOCK
    stream = b"".join(hmac.new(key, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest() for i in range(blocks))
    return stream[:length]


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def _tag(key: bytes, nonce: bytes, ciphertext: bytes, bound_to: str) -> bytes:
    bound = bound_to.encode()
    message = VERSION + nonce + len(bound).to_bytes(2, "big") + bound + ciphertext
    return hmac.new(key, message, hashlib.sha256).digest()[:TAG_BYTES]


def encode(position: Mapping[str, Any], bound_to: str, secret: str) -> str:
    """An opaque cursor holding `position`, readable only with `secret` and the same binding."""
    encryption, authentication = _keys(secret)
    plaintext = json.dumps(position, sort_keys=True, separators=(",", ":")).encode()
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = _xor(plaintext, _keystream(encryption, nonce, len(plaintext)))
    token = VERSION + nonce + ciphertext + _tag(authentication, nonce, ciphertext, bound_to)
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def decode(token: str, bound_to: str, secret: str, field: str = "cursor") -> dict[str, Any]:
    """The position a cursor holds, or a 400 invalid_cursor."""
    error = MeteringError(ErrorCode.INVALID_CURSOR, field=field)
    if not token or len(token) > MAX_CURSOR_LENGTH:
        raise error
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raise error from None
    if len(raw) < 1 + NONCE_BYTES + TAG_BYTES or raw[:1] != VERSION:
        raise error
    nonce, ciphertext, tag = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES : -TAG_BYTES], raw[-TAG_BYTES:]
    encryption, authentication = _keys(secret)
    if not hmac.compare_digest(tag, _tag(authentication, nonce, ciphertext, bound_to)):
        raise error
    try:
        data = json.loads(_xor(ciphertext, _keystream(encryption, nonce, len(ciphertext))))
    except ValueError:
        raise error from None
    if not isinstance(data, dict):
        raise error
    return data
