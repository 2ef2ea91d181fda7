"""Identifiers: time-ordered, random, no counter (a counter would be a hot key)."""

from __future__ import annotations

import secrets
from datetime import datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _encode(value: int) -> str:
    """A 130-bit value as 26 Crockford base-32 characters."""
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def ulid(at: datetime) -> str:
    """A 26-character ULID: 48-bit millisecond time then 80 random bits, lexicographically time-ordered."""
    return _encode((int(at.timestamp() * 1000) << 80) | secrets.randbits(80))


def ulid_floor(at: datetime) -> str:
    """The smallest ULID of a millisecond: every ULID made at or after `at` sorts at or above it."""
    return _encode(int(at.timestamp() * 1000) << 80)


def usage_event_id(at: datetime) -> str:
    """A USAGE-* id: the two-digit year, then a ULID."""
    return f"USAGE-{at:%y}-{ulid(at)}"


def batch_id(at: datetime) -> str:
    """An ingest batch id (one per request): time-ordered so pending batches sort by age."""
    return "B" + ulid(at)
