"""The records of the rollup pipeline: where an event is stored (its slot), what a conditional put did,
pending ingest batches, and the messages of the usage queue (ingest batches for the aggregator,
reconciliation work items)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.domain.models import UsageEvent


def slot_for(idempotency_key: str | None, event_id: str) -> str:
    """Where an event is stored within its organization: under its idempotency key, or its id when it has none.

    The slot is what makes a key unique: at most one event per (organization, slot).
    """
    return f"K#{idempotency_key}" if idempotency_key is not None else f"I#{event_id}"


def archive_slot(event_id: str) -> str:
    """Where an event whose key was reused after the idempotency window is moved."""
    return f"A#{event_id}"


@dataclass(frozen=True)
class PutOutcome:
    """The result of a conditional put: stored, or the event already at that slot (None if it moved meanwhile)."""

    stored: bool
    existing: UsageEvent | None = None


@dataclass(frozen=True)
class PendingBatch:
    """An ingest batch not yet (fully) rolled up: its events as (slot, id) pairs."""

    batch_id: str
    organization_id: str
    created_at: datetime
    events: tuple[tuple[str, str], ...]
    last_enqueued_at: datetime | None = None
    dead_lettered_at: datetime | None = None


class BatchMessage(BaseModel):
    """One SQS message per ingest batch: which events (slot, id) to roll up.

    `origin` says who sent it: "ingest" lists events it just wrote (each must
    exist); "sweep" lists every event the batch meant to write (a missing one
    was never written, or lost its key to a duplicate, and is skipped).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    batch: str = Field(pattern=r"^B[0-9A-Z]{26}$")
    org: str = Field(min_length=1, max_length=64)
    created: str
    origin: Literal["ingest", "sweep"]
    events: list[tuple[str, str]] = Field(max_length=1000)


class ReconcileMessage(BaseModel):
    """A bounded piece of reconciliation: some service lines of one organization, over some period dates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    kind: Literal["reconcile"] = "reconcile"
    org: str = Field(min_length=1, max_length=64)
    lines: list[str] = Field(min_length=1, max_length=50)
    days: list[str] = Field(min_length=1, max_length=7)
