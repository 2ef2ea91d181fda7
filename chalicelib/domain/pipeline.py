"""The messages of the usage queue: ingest batches for the aggregator, and reconciliation work items."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
