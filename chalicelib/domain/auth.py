"""API key scopes and key hashing."""

from __future__ import annotations

import hashlib
import secrets

# The scopes the reference documents name, plus the read scopes of the native API.
METERING_WRITE = "metering:write"
METERING_ADJUST = "metering:adjust"  # voids and adjustments (docs/architecture.md, "Corrections")
METER_REPORT = "meter-report"
ACCOUNTS_BILLING = "accounts:billing"
USAGE_READ = "usage:read"
CATALOG_READ = "catalog:read"
SERVICE_LINES_WRITE = "service-lines:write"
WORKSPACES_WRITE = "workspaces:write"

ALL_SCOPES: frozenset[str] = frozenset(
    {
        METERING_WRITE,
        METERING_ADJUST,
        METER_REPORT,
        ACCOUNTS_BILLING,
        USAGE_READ,
        CATALOG_READ,
        SERVICE_LINES_WRITE,
        WORKSPACES_WRITE,
    }
)
READ_SCOPES: frozenset[str] = frozenset({USAGE_READ, CATALOG_READ, ACCOUNTS_BILLING})

KEY_PREFIX = "mk_"


def hash_key(secret: str) -> str:
    """The stored form of an API key: its SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_key_secret() -> str:
    """A fresh random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_id_for(secret: str) -> str:
    """A short public identifier of a key, safe to show and log."""
    return "key_" + hash_key(secret)[:16]


def parse_scopes(text: str) -> frozenset[str]:
    """Scopes from a comma-separated list; 'all' and 'read' name the usual sets."""
    scopes: set[str] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "all":
            scopes |= ALL_SCOPES
        elif part == "read":
            scopes |= READ_SCOPES
        elif part in ALL_SCOPES:
            scopes.add(part)
        else:
            raise ValueError(f"unknown scope {part!r}; known: {', '.join(sorted(ALL_SCOPES))}")
    return frozenset(scopes)
