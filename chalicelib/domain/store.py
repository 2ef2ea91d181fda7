"""What every store tells its callers beyond the models: its own exceptions and the creation-key record.

Adapters translate their backend's errors into these, so a use case never sees botocore.
"""

from __future__ import annotations

from dataclasses import dataclass


class StoreError(Exception):
    """A storage call failed; `code` is the backend's own name for why (for logs, never for control flow)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailable(StoreError):
    """The store could not answer now (throttled, unreachable, an internal error): a retry may succeed."""


class StoreConflict(StoreError):
    """A conditional write's condition failed where the adapter has no answer of its own for it."""


class IdTakenError(Exception):
    """A workspace or service-line id that another organization already holds."""

    def __init__(self, generated_id: str) -> None:
        super().__init__(f"the id {generated_id} belongs to another organization")
        self.generated_id = generated_id


@dataclass(frozen=True)
class Idempotency:
    """A creation's idempotency key and its payload's fingerprint (and, once stored, the id it created)."""

    key: str
    payload_hash: str
    target_id: str = ""
