"""The interfaces the use cases depend on: the event store, the rollup store, the message queue and the catalog.

Each has a DynamoDB / SQS adapter (chalicelib/storage/*_repo.py, queue.py) and an in-memory one
(chalicelib/storage/memory.py); both pass the same contract tests (tests/contract). Adapters raise the
project's own exceptions (chalicelib/domain/store.py), never their backend's.

A `Position` is an adapter's opaque place in a listing (where the next page starts): callers store it
and hand it back, never look inside.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.domain.models import ApiKey, Meter, Organization, Plan, ServiceLine, UsageEvent, Workspace
from chalicelib.domain.pipeline import PendingBatch, PutOutcome
from chalicelib.domain.store import Idempotency

if TYPE_CHECKING:
    from chalicelib.domain.aggregation import RollupState
    from chalicelib.domain.usage import ApplyReport, ApplyUnit, GroupSlot, Rollup, RollupKey

Position = dict[str, Any]


class EventStore(Protocol):
    """Usage events, at most one per (organization, slot), and the pending records of ingest batches."""

    def put_new(self, event: UsageEvent, slot: str) -> PutOutcome:
        """Store the event only if its slot is free; otherwise the event stored there."""
        ...

    def replace_expired(self, old: UsageEvent, new: UsageEvent, slot: str) -> bool:
        """Move `old` to its archive slot and store `new` in `slot`, atomically, if `old` is still there."""
        ...

    def get(self, organization_id: str, slot: str) -> UsageEvent | None: ...

    def get_many(self, organization_id: str, slots: Iterable[str]) -> dict[str, UsageEvent]:
        """Events by slot; missing slots are absent from the result."""
        ...

    def query_line(
        self,
        organization_id: str,
        line_id: str,
        start: date,
        end: date,
        exclusive_start: Position | None = None,
        limit: int = 100,
        meter: str | None = None,
    ) -> tuple[list[tuple[UsageEvent, Position]], Position | None]:
        """A page of a line's events with start <= period_date <= end in (period_date, id) order, each with
        its position, and where the next page starts (None: no more). A foreign position is a ValueError."""
        ...

    def iter_line(self, organization_id: str, line_id: str, start: date, end: date) -> Iterator[UsageEvent]: ...

    def put_pending(self, batch: PendingBatch) -> None: ...

    def delete_pending(self, batch_id: str) -> None: ...

    def delete_pending_many(self, batch_ids: Iterable[str]) -> None: ...

    def is_pending(self, batch_id: str) -> bool: ...

    def pending_before(self, cutoff_sk: str, limit: int = 100) -> Iterator[PendingBatch]:
        """Pending batches whose id sorts below `cutoff_sk` (created before the cutoff)."""
        ...

    def mark_dead_lettered(self, batch_id: str, now: datetime, reason: str) -> None:
        """Note on a pending batch (if still pending) that its message went to the dead-letter queue."""
        ...

    def claim_for_requeue(self, batch_id: str, now: datetime, not_since: datetime) -> bool:
        """Mark a pending batch re-enqueued unless it was re-enqueued since `not_since` (or is gone)."""
        ...


class RollupStore(Protocol):
    """Rollups (per line, meter and day or hour, and per group value of the meter's group_by keys), the
    registers of admitted group values, and the markers of applied chunks (docs/architecture.md)."""

    def apply(self, units: Sequence[ApplyUnit], now: datetime) -> ApplyReport:
        """Join each unit's join cells (at least once), then add its additive cells exactly once; a unit
        whose marker exists is reported as already applied."""
        ...

    def admit_groups(self, asked: Mapping[GroupSlot, Set[str]]) -> dict[GroupSlot, frozenset[str]]:
        """Which of the asked group values each slot keeps apart (the rest count under OTHER_GROUP)."""
        ...

    def applied_event_ids(self, batch_id: str) -> set[str]: ...

    def day_rollups(
        self, organization_id: str, line_id: str, start: date, end: date, consistent: bool = False
    ) -> list[Rollup]: ...

    def hour_rollups(self, organization_id: str, line_id: str, start_hour: str, end_hour: str) -> list[Rollup]: ...

    def group_day_rollups(
        self, organization_id: str, line_id: str, meter: str, group_key: str, start: date, end: date
    ) -> list[Rollup]: ...

    def group_hour_rollups(
        self, organization_id: str, line_id: str, meter: str, group_key: str, start_hour: str, end_hour: str
    ) -> list[Rollup]: ...

    def rollups_of_period(
        self, organization_id: str, line_id: str, period_date: date, with_groups: bool = False
    ) -> list[Rollup]: ...

    def repair(
        self, rk: RollupKey, quantity: Decimal, event_count: int, observed: Rollup | None, now: datetime
    ) -> bool:
        """Set a rollup's additive cells to recomputed totals if it has not changed since it was observed."""
        ...

    def repair_state(self, rk: RollupKey, state: RollupState, observed: Rollup | None, now: datetime) -> bool:
        """Set every cell of a rollup to a recomputed state if it has not changed since it was observed."""
        ...


class MessageQueue(Protocol):
    """A queue a use case sends text messages to (the usage queue, its dead-letter queue)."""

    def send(self, body: str, attributes: dict[str, str] | None = None) -> None: ...


class CatalogReader(Protocol):
    """Organizations, workspaces, service lines, meters, plans and API keys, as the request path reads them."""

    def list_meters(self) -> list[Meter]: ...

    def get_meter(self, meter_id: str) -> Meter | None: ...

    def get_meter_by_uuid(self, meter_uuid: str) -> Meter | None: ...

    def list_plans(self) -> list[Plan]: ...

    def get_plan(self, plan_id: str) -> Plan | None: ...

    def get_organization(self, organization_id: str) -> Organization | None: ...

    def get_organization_plan(self, organization_id: str) -> Plan | None: ...

    def list_workspaces(self, organization_id: str) -> list[Workspace]: ...

    def list_service_lines(self, organization_id: str) -> list[ServiceLine]: ...

    def get_service_line(self, organization_id: str, line_id: str) -> ServiceLine | None: ...

    def get_api_key(self, key_hash: str) -> ApiKey | None: ...


class CatalogWriter(Protocol):
    """What loading the catalog and demo data writes (catalog_admin)."""

    def put_meter(self, meter: Meter) -> None: ...

    def put_plan(self, plan: Plan) -> None: ...

    def put_organization(self, org: Organization) -> None: ...

    def put_workspace(self, ws: Workspace) -> None:
        """Create or update; IdTakenError when another organization holds the id."""
        ...

    def put_service_line(self, line: ServiceLine) -> None:
        """Create or update; IdTakenError when another organization holds the id."""
        ...

    def put_api_key(self, api_key: ApiKey) -> None: ...

    def recount_active_lines(self, organization_id: str) -> int: ...

    def recount_workspaces(self, organization_id: str) -> int: ...


class CatalogRepository(CatalogReader, CatalogWriter, Protocol):
    """The whole catalog: reading, creating under the plan's limits, jobs' cursors, API calls and keys."""

    def get_id_owner(self, generated_id: str) -> str | None:
        """The organization a workspace or service-line id belongs to, if any."""
        ...

    def create_service_line(
        self, line: ServiceLine, active_limit: int | None, idempotency: Idempotency | None = None
    ) -> str | None:
        """Store a new active line, its id's guard, its count and its creation key, atomically.

        None when stored; "replay" (the key was used before), "limit" (the plan's active-line limit is
        reached) or "exists" (the id is taken) when nothing was written.
        """
        ...

    def create_workspace(self, ws: Workspace, limit: int | None, idempotency: Idempotency | None = None) -> str | None:
        """A new workspace under the plan's workspace limit (outcomes as create_service_line)."""
        ...

    def get_creation_key(self, organization_id: str, kind: str, key: str) -> Idempotency | None: ...

    def set_service_line_status(
        self, organization_id: str, line_id: str, status: str, active_limit: int | None
    ) -> str | None:
        """Pause or resume a line, keeping the active count; None when done, "limit" or "unchanged" otherwise."""
        ...

    def service_lines_page(self, start: Position | None, limit: int) -> tuple[list[ServiceLine], Position | None]:
        """Up to about `limit` service lines of every organization from `start` (jobs only)."""
        ...

    def all_service_lines(self) -> list[ServiceLine]: ...

    def get_job_cursor(self, job: str) -> Position | None: ...

    def put_job_cursor(self, job: str, cursor: Position | None, at: str) -> None: ...

    def get_api_calls(self, organization_id: str, month: str) -> int: ...

    def add_api_calls(self, organization_id: str, month: str, calls: int) -> int:
        """Add to an organization's calls of a month; the new total."""
        ...

    def list_api_keys(self, organization_id: str | None = None) -> list[ApiKey]: ...

    def revoke_api_key(self, key_id: str) -> bool: ...

    def clear_cache(self) -> None: ...
