"""In-memory stores: the event store, the catalog and the queue with the DynamoDB / SQS adapters' semantics.

They pass the same contract tests as those adapters (tests/contract), so a use case tested over them
behaves the same over DynamoDB: a conditional put of an event whose slot is taken returns the stored
event, pending records are claimed by the same conditions, listings page in the same order with
positions of the same shape. They are safe to share between threads (one lock per store) and keep
nothing between processes. The in-memory rollup store is storage/memory_rollups.py's (re-exported here).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Clamped, Context, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import Any

from chalicelib.domain.models import ApiKey, Meter, Organization, Plan, ServiceLine, UsageEvent, Workspace, instant
from chalicelib.domain.pipeline import PendingBatch, PutOutcome, archive_slot
from chalicelib.domain.store import Idempotency, IdTakenError, StoreError
from chalicelib.storage.events_repo import check_line_position, pending_shard
from chalicelib.storage.keys import (
    ACTIVE_LINES_SK,
    EVENT_SK,
    WORKSPACES_SK,
    event_pk,
    line_index_pk,
    line_index_sk,
    line_sk,
    org_pk,
)
from chalicelib.storage.memory_rollups import MemoryRollupStore

__all__ = ["MemoryCatalogRepository", "MemoryEventStore", "MemoryQueue", "MemoryRollupStore", "SentMessage"]

Position = dict[str, Any]


# DynamoDB's numbers as boto3 serializes them (38 significant digits; a value it would round or clamp
# raises the decimal module's error before any request), and the range DynamoDB itself accepts.
_NUMBERS = Context(Emin=-128, Emax=126, prec=38, traps=[Clamped, Overflow, Inexact, Rounded, Underflow])
_SMALLEST, _TOO_BIG = Decimal("1E-130"), Decimal("1E+126")


def check_storable(value: Any, where: str = "item") -> None:
    """Refuse what the DynamoDB adapter cannot store, the way it refuses it: a float (TypeError), text that
    is not UTF-8 (UnicodeEncodeError), a number boto3 would round (decimal's ArithmeticError), or one
    outside DynamoDB's range (StoreError)."""
    if isinstance(value, float):
        raise TypeError("floats are never stored; use Decimal")
    if isinstance(value, str):
        value.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, as botocore raises sending it
    elif isinstance(value, Decimal):
        _NUMBERS.create_decimal(value)
        if not value.is_zero() and not _SMALLEST <= abs(value) < _TOO_BIG:
            raise StoreError(f"{where}: {value} is outside DynamoDB's number range", "ValidationException")
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            check_storable(key, where)
            check_storable(inner, f"{where}.{key}")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for inner in value:
            check_storable(inner, where)


def _stored(event: UsageEvent) -> UsageEvent:
    """The event as a store gives it back: instants at millisecond precision, nothing shared with the caller."""
    values = event.model_dump(mode="python")
    check_storable(values, "event")
    values.update(event_time=instant(event.event_time), recorded_at=instant(event.recorded_at))
    return UsageEvent.model_validate(values)


def _text(value: str) -> dict[str, str]:
    return {"S": value}


# -- events ------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    batch: PendingBatch
    last_enqueued_at: str | None = None
    dead_lettered_at: str | None = None
    dead_letter_reason: str | None = None


class MemoryEventStore:
    """Events (at most one per organization and slot) and pending batches, in memory (the EventStore port)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[tuple[str, str], UsageEvent] = {}
        self._pending: dict[str, _Pending] = {}

    # -- events ----------------------------------------------------------------
    def put_new(self, event: UsageEvent, slot: str) -> PutOutcome:
        stored = _stored(event)
        with self._lock:
            existing = self._events.get((event.organization_id, slot))
            if existing is None:
                self._events[(event.organization_id, slot)] = stored
                return PutOutcome(True)
            return PutOutcome(False, existing)

    def replace_expired(self, old: UsageEvent, new: UsageEvent, slot: str) -> bool:
        org = new.organization_id
        with self._lock:
            current = self._events.get((org, slot))
            if (old.organization_id, archive_slot(old.id)) in self._events or current is None or current.id != old.id:
                return False
            self._events[(old.organization_id, archive_slot(old.id))] = _stored(old)
            self._events[(org, slot)] = _stored(new)
            return True

    def get(self, organization_id: str, slot: str) -> UsageEvent | None:
        with self._lock:
            return self._events.get((organization_id, slot))

    def get_many(self, organization_id: str, slots: Iterable[str]) -> dict[str, UsageEvent]:
        with self._lock:
            return {s: e for s in dict.fromkeys(slots) if (e := self._events.get((organization_id, s))) is not None}

    def locate(
        self, organization_id: str, line_id: str, start: date, end: date, event_id: str
    ) -> tuple[UsageEvent, str] | None:
        """As DynamoEventStore.locate: a line's record by id within the dates, and its slot."""
        with self._lock:
            for (org, slot), e in self._events.items():
                if org == organization_id and e.service_line_id == line_id and e.id == event_id:
                    return (e, slot) if start <= e.period_date <= end else None
        return None

    def put_correction(self, record: UsageEvent, slot: str, target_slot: str | None) -> bool:
        """As DynamoEventStore.put_correction: the correction and the mark on its event, atomically."""
        stored = _stored(record)
        org = record.organization_id
        with self._lock:
            if (org, slot) in self._events:
                return False
            if target_slot is not None:
                target = self._events.get((org, target_slot))
                if target is None or target.voided_by is not None:
                    return False
                if record.kind == "void":
                    mark: dict[str, Any] = {"voided_by": record.id, "void_slot": slot}
                else:
                    mark = {"adjusted_by": tuple(sorted({*target.adjusted_by, record.id}))}
                self._events[(org, target_slot)] = target.model_copy(update=mark)
            self._events[(org, slot)] = stored
            return True

    @staticmethod
    def _position(organization_id: str, slot: str, event: UsageEvent) -> Position:
        return {
            "pk": _text(event_pk(organization_id, slot)),
            "sk": _text(EVENT_SK),
            "gsi1pk": _text(line_index_pk(organization_id, event.service_line_id)),
            "gsi1sk": _text(line_index_sk(event.period_date.isoformat(), event.id)),
        }

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
        """As DynamoEventStore.query_line: `limit` counts the events examined before the meter filter."""
        if exclusive_start is not None:
            check_line_position(organization_id, line_id, exclusive_start)
        lo, hi = line_index_sk(start.isoformat(), ""), line_index_sk(end.isoformat(), "~")
        with self._lock:
            found = [
                (line_index_sk(e.period_date.isoformat(), e.id), event_pk(org, slot), slot, e)
                for (org, slot), e in self._events.items()
                if org == organization_id and e.service_line_id == line_id
            ]
        found = sorted(row for row in found if lo <= row[0] <= hi)
        if exclusive_start:
            after = (exclusive_start["gsi1sk"]["S"], exclusive_start["pk"]["S"])
            found = [row for row in found if (row[0], row[1]) > after]
        examined = found[:limit]
        rows = [(e, self._position(organization_id, slot, e)) for _, _, slot, e in examined]
        rows = [(e, p) for e, p in rows if meter is None or e.meter == meter]
        more = len(found) > limit
        last = examined[-1] if examined else None
        return rows, (self._position(organization_id, last[2], last[3]) if more and last else None)

    def iter_line(self, organization_id: str, line_id: str, start: date, end: date) -> Iterator[UsageEvent]:
        cursor: Position | None = None
        while True:
            rows, cursor = self.query_line(organization_id, line_id, start, end, cursor, limit=500)
            yield from (event for event, _ in rows)
            if not cursor:
                return

    def all_events(self) -> list[tuple[str, str, UsageEvent]]:
        """Every stored event as (organization, slot, event) (tests and tools only)."""
        with self._lock:
            return [(org, slot, e) for (org, slot), e in sorted(self._events.items(), key=lambda kv: kv[0])]

    # -- pending batches -------------------------------------------------------
    def put_pending(self, batch: PendingBatch) -> None:
        record = replace(
            batch,
            created_at=datetime.fromisoformat(instant(batch.created_at)),
            events=tuple((str(s), str(i)) for s, i in batch.events),
            last_enqueued_at=None,
            dead_lettered_at=None,
        )
        with self._lock:
            self._pending[batch.batch_id] = _Pending(record)

    def delete_pending(self, batch_id: str) -> None:
        with self._lock:
            self._pending.pop(batch_id, None)

    def delete_pending_many(self, batch_ids: Iterable[str]) -> None:
        with self._lock:
            for batch_id in set(batch_ids):
                self._pending.pop(batch_id, None)

    def is_pending(self, batch_id: str) -> bool:
        with self._lock:
            return batch_id in self._pending

    def pending_before(self, cutoff_sk: str, limit: int = 100) -> Iterator[PendingBatch]:
        """Pending batches with an id below `cutoff_sk`, shard by shard as the DynamoDB store lists them."""
        with self._lock:
            records = sorted(
                (p for p in self._pending.values() if p.batch.batch_id < cutoff_sk),
                key=lambda p: (pending_shard(p.batch.batch_id), p.batch.batch_id),
            )
            batches = [
                replace(
                    p.batch,
                    last_enqueued_at=datetime.fromisoformat(p.last_enqueued_at) if p.last_enqueued_at else None,
                    dead_lettered_at=datetime.fromisoformat(p.dead_lettered_at) if p.dead_lettered_at else None,
                )
                for p in records
            ]
        yield from batches

    def mark_dead_lettered(self, batch_id: str, now: datetime, reason: str) -> None:
        with self._lock:
            record = self._pending.get(batch_id)
            if record is not None:
                record.dead_lettered_at, record.dead_letter_reason = instant(now), reason

    def claim_for_requeue(self, batch_id: str, now: datetime, not_since: datetime) -> bool:
        with self._lock:
            record = self._pending.get(batch_id)
            if record is None:
                return False
            if record.last_enqueued_at is not None and not record.last_enqueued_at < instant(not_since):
                return False
            record.last_enqueued_at = instant(now)
            return True

    def pending_batches(self) -> list[PendingBatch]:
        """Every pending batch, by id (tests and tools only)."""
        return sorted(self.pending_before("~"), key=lambda b: b.batch_id)


# -- the queue ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentMessage:
    body: str
    attributes: dict[str, str] = field(default_factory=dict)


class MemoryQueue:
    """A queue that keeps what is sent to it, in order, until taken (the MessageQueue port)."""

    def __init__(self, name: str = "memory") -> None:
        self.queue_name = name
        self._lock = threading.Lock()
        self._messages: list[SentMessage] = []
        self.sent = 0

    def send(self, body: str, attributes: dict[str, str] | None = None) -> None:
        with self._lock:
            self._messages.append(SentMessage(body, dict(attributes or {})))
            self.sent += 1

    @property
    def messages(self) -> list[SentMessage]:
        """The messages waiting, oldest first (not taken)."""
        with self._lock:
            return list(self._messages)

    @property
    def bodies(self) -> list[str]:
        return [m.body for m in self.messages]

    def take(self) -> list[SentMessage]:
        """Every waiting message, oldest first; the queue is left empty."""
        with self._lock:
            taken, self._messages = self._messages, []
        return taken

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)


# -- the catalog -------------------------------------------------------------------------------------


class MemoryCatalogRepository:
    """The catalog in memory (the CatalogRepository port), with DynamoCatalogRepository's outcomes."""

    def __init__(self, table_name: str = "memory-catalog") -> None:
        self.table_name = table_name
        self._lock = threading.RLock()
        self._meters: dict[str, Meter] = {}
        self._plans: dict[str, Plan] = {}
        self._orgs: dict[str, Organization] = {}
        self._workspaces: dict[tuple[str, str], Workspace] = {}
        self._lines: dict[tuple[str, str], ServiceLine] = {}
        self._guards: dict[str, str] = {}
        self._counters: dict[tuple[str, str], int] = {}
        self._creation_keys: dict[tuple[str, str, str], Idempotency] = {}
        self._cursors: dict[str, tuple[str, str]] = {}
        self._calls: dict[tuple[str, str], int] = {}
        self._keys: dict[str, ApiKey] = {}
        self._key_refs: dict[str, str] = {}

    # -- reading -----------------------------------------------------------------
    def clear_cache(self) -> None:
        """Nothing is cached in memory (the DynamoDB adapter caches meters, plans and organizations)."""

    def list_meters(self) -> list[Meter]:
        with self._lock:
            return sorted(self._meters.values(), key=lambda m: m.id)

    def get_meter(self, meter_id: str) -> Meter | None:
        with self._lock:
            return self._meters.get(meter_id)

    def get_meter_by_uuid(self, meter_uuid: str) -> Meter | None:
        wanted = meter_uuid.lower()
        return next((m for m in self.list_meters() if m.uuid == wanted), None)

    def list_plans(self) -> list[Plan]:
        with self._lock:
            return sorted(self._plans.values(), key=lambda p: p.id)

    def get_plan(self, plan_id: str) -> Plan | None:
        with self._lock:
            return self._plans.get(plan_id)

    def get_organization(self, organization_id: str) -> Organization | None:
        with self._lock:
            return self._orgs.get(organization_id)

    def get_organization_plan(self, organization_id: str) -> Plan | None:
        org = self.get_organization(organization_id)
        return self.get_plan(org.plan_id) if org else None

    def list_workspaces(self, organization_id: str) -> list[Workspace]:
        with self._lock:
            found = [w for (org, _), w in self._workspaces.items() if org == organization_id]
        return sorted(found, key=lambda w: w.id)

    def list_service_lines(self, organization_id: str) -> list[ServiceLine]:
        with self._lock:
            found = [line for (org, _), line in self._lines.items() if org == organization_id]
        return sorted(found, key=lambda s: s.id)

    def get_service_line(self, organization_id: str, line_id: str) -> ServiceLine | None:
        with self._lock:
            return self._lines.get((organization_id, line_id))

    def service_lines_page(self, start: Position | None, limit: int) -> tuple[list[ServiceLine], Position | None]:
        """Lines of every organization in (organization, line) key order; positions as the DynamoDB scan's."""
        with self._lock:
            ordered = sorted(((org_pk(org), line_sk(lid)), line) for (org, lid), line in self._lines.items())
        if start:
            after = (start["pk"]["S"], start["sk"]["S"])
            ordered = [row for row in ordered if row[0] > after]
        page = ordered[:limit]
        if len(ordered) <= limit or not page:
            return [line for _, line in page], None
        pk, sk = page[-1][0]
        return [line for _, line in page], {"pk": _text(pk), "sk": _text(sk)}

    def all_service_lines(self) -> list[ServiceLine]:
        with self._lock:
            return sorted(self._lines.values(), key=lambda s: s.id)

    def get_job_cursor(self, job: str) -> Position | None:
        with self._lock:
            saved = self._cursors.get(job)
        return json.loads(saved[0]) if saved and saved[0] else None  # type: ignore[no-any-return]

    def put_job_cursor(self, job: str, cursor: Position | None, at: str) -> None:
        with self._lock:
            self._cursors[job] = (json.dumps(cursor) if cursor else "", at)

    def get_api_key(self, key_hash: str) -> ApiKey | None:
        with self._lock:
            return self._keys.get(key_hash)

    def get_id_owner(self, generated_id: str) -> str | None:
        with self._lock:
            return self._guards.get(generated_id)

    def get_creation_key(self, organization_id: str, kind: str, key: str) -> Idempotency | None:
        with self._lock:
            return self._creation_keys.get((organization_id, kind, key))

    # -- writing -----------------------------------------------------------------
    def put_meter(self, meter: Meter) -> None:
        with self._lock:
            self._meters[meter.id] = meter.model_copy(deep=True)

    def put_plan(self, plan: Plan) -> None:
        with self._lock:
            self._plans[plan.id] = plan.model_copy(deep=True)

    def put_organization(self, org: Organization) -> None:
        with self._lock:
            self._orgs[org.id] = org.model_copy(deep=True)

    def _claim_id(self, generated_id: str, organization_id: str) -> None:
        owner = self._guards.get(generated_id)
        if owner is not None and owner != organization_id:
            raise IdTakenError(generated_id)
        self._guards[generated_id] = organization_id

    def put_workspace(self, ws: Workspace) -> None:
        with self._lock:
            self._claim_id(ws.id, ws.organization_id)
            self._workspaces[(ws.organization_id, ws.id)] = ws.model_copy(deep=True)

    def put_service_line(self, line: ServiceLine) -> None:
        with self._lock:
            self._claim_id(line.id, line.organization_id)
            self._lines[(line.organization_id, line.id)] = line.model_copy(deep=True)

    def _create_counted(
        self,
        organization_id: str,
        generated_id: str,
        kind: str,
        exists: bool,
        limit: int | None,
        counter: str,
        idempotency: Idempotency | None,
    ) -> str | None:
        """The outcome of DynamoCatalogRepository._create_counted's transaction (caller holds the lock);
        when None, the counter, guard and key record are written and the caller stores the item."""
        if idempotency is not None and (organization_id, kind, idempotency.key) in self._creation_keys:
            return "replay"
        if exists or generated_id in self._guards:
            return "exists"
        count = self._counters.get((organization_id, counter))
        if limit is not None and count is not None and count >= limit:
            return "limit"
        self._counters[(organization_id, counter)] = (count or 0) + 1
        self._guards[generated_id] = organization_id
        if idempotency is not None:
            self._creation_keys[(organization_id, kind, idempotency.key)] = Idempotency(
                idempotency.key, idempotency.payload_hash, generated_id
            )
        return None

    def create_service_line(
        self, line: ServiceLine, active_limit: int | None, idempotency: Idempotency | None = None
    ) -> str | None:
        org = line.organization_id
        with self._lock:
            outcome = self._create_counted(
                org, line.id, "service_line", (org, line.id) in self._lines, active_limit, ACTIVE_LINES_SK, idempotency
            )
            if outcome is None:
                self._lines[(org, line.id)] = line.model_copy(deep=True)
            return outcome

    def create_workspace(self, ws: Workspace, limit: int | None, idempotency: Idempotency | None = None) -> str | None:
        org = ws.organization_id
        with self._lock:
            outcome = self._create_counted(
                org, ws.id, "workspace", (org, ws.id) in self._workspaces, limit, WORKSPACES_SK, idempotency
            )
            if outcome is None:
                self._workspaces[(org, ws.id)] = ws.model_copy(deep=True)
            return outcome

    def set_service_line_status(
        self, organization_id: str, line_id: str, status: str, active_limit: int | None
    ) -> str | None:
        delta = 1 if status == "active" else -1
        with self._lock:
            line = self._lines.get((organization_id, line_id))
            if line is None or line.status == status:
                return "unchanged"
            count = self._counters.get((organization_id, ACTIVE_LINES_SK))
            if active_limit is not None and delta > 0 and count is not None and count >= active_limit:
                return "limit"
            self._counters[(organization_id, ACTIVE_LINES_SK)] = (count or 0) + delta
            self._lines[(organization_id, line_id)] = line.model_copy(update={"status": status})
            return None

    def recount_workspaces(self, organization_id: str) -> int:
        count = len(self.list_workspaces(organization_id))
        with self._lock:
            self._counters[(organization_id, WORKSPACES_SK)] = count
        return count

    def recount_active_lines(self, organization_id: str) -> int:
        active = sum(1 for line in self.list_service_lines(organization_id) if line.status == "active")
        with self._lock:
            self._counters[(organization_id, ACTIVE_LINES_SK)] = active
        return active

    def counter(self, organization_id: str, counter: str = ACTIVE_LINES_SK) -> int | None:
        """A stored counter (tests only): the active lines, or WORKSPACES_SK's workspaces."""
        with self._lock:
            return self._counters.get((organization_id, counter))

    # -- API calls and keys --------------------------------------------------------
    def get_api_calls(self, organization_id: str, month: str) -> int:
        with self._lock:
            return self._calls.get((organization_id, month), 0)

    def add_api_calls(self, organization_id: str, month: str, calls: int) -> int:
        with self._lock:
            total = self._calls[(organization_id, month)] = self._calls.get((organization_id, month), 0) + calls
            return total

    def put_api_key(self, api_key: ApiKey) -> None:
        with self._lock:
            self._keys[api_key.key_hash] = api_key.model_copy(deep=True)
            self._key_refs[api_key.key_id] = api_key.key_hash

    def list_api_keys(self, organization_id: str | None = None) -> list[ApiKey]:
        with self._lock:
            found = list(self._keys.values())
        return sorted(
            (k for k in found if organization_id is None or k.organization_id == organization_id),
            key=lambda k: (k.organization_id, k.created_at, k.key_id),
        )

    def revoke_api_key(self, key_id: str) -> bool:
        with self._lock:
            key_hash = self._key_refs.get(key_id)
            if key_hash is None:
                return False
            current = self._keys[key_hash]
            self._keys[key_hash] = current.model_copy(update={"status": "revoked"})
            return True
