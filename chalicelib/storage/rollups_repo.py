"""Rollups and applied-markers over DynamoDB: the exactly-once half of the pipeline.

Rollups (pk ``R#<organization>#<service line>``, formats in ``storage/keys.py``):
- day:  sk ``D#<period_date>#<meter>``
- hour: sk ``H#<YYYY-MM-DDTHH>#<meter>#<period_date>`` (event-time hour; the
  period_date in the key lets reconciliation recompute it from one day's events),
  listed per (organization, line, period_date) by the sparse ``by_period`` index.
Markers (pk ``APPLIED#<batch id>``, sk ``<chunk index>``) hold the event ids a
chunk added. A chunk's marker is put (if absent) in the same transaction that
adds the chunk to its rollups, so a chunk is counted once however often its
message is delivered. Once every chunk of a batch is in, its pending record is deleted.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.domain.models import instant
from chalicelib.domain.usage import RollupDelta, RollupKey
from chalicelib.storage import clients
from chalicelib.storage.codec import dec, from_item, key, to_value
from chalicelib.storage.keys import (
    day_rollup_sk,
    hour_rollup_prefix,
    hour_rollup_sk,
    marker_pk,
    marker_sk,
    period_index_pk,
    period_index_sk,
    rollup_pk,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = logging.getLogger("usage-metering.rollups")
MAX_TRANSACTION_ACTIONS = 100
MARKER_TTL = timedelta(days=30)
# Why a transaction may fail and then succeed as it is: worth retrying with backoff. Any other
# cancellation reason (a validation error, an item too large...) fails the same way every time.
RETRYABLE_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)
RETRYABLE_ERRORS = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


def rollup_sk(rk: RollupKey) -> str:
    if rk.grain == "D":
        return day_rollup_sk(rk.period_date, rk.meter)
    return hour_rollup_sk(rk.hour, rk.meter, rk.period_date)


def rollup_key_from_item(item: dict[str, Any]) -> RollupKey:
    return RollupKey(
        organization_id=item["organization_id"],
        service_line_id=item["service_line_id"],
        meter=item["meter"],
        grain=item["grain"],
        period_date=item["period_date"],
        hour=item.get("hour", ""),
    )


@dataclass(frozen=True)
class Rollup:
    """A stored rollup: exact quantity, event count and the version every change bumps."""

    key: RollupKey
    quantity: Decimal
    event_count: int
    version: int
    updated_at: str


@dataclass
class ApplyUnit:
    """One chunk of one batch: its marker, its rollup deltas, and whether it closes the batch."""

    batch_id: str
    chunk_index: int
    organization_id: str
    event_ids: tuple[str, ...]
    deltas: dict[RollupKey, RollupDelta]


@dataclass
class ApplyReport:
    """What became of each unit: applied, applied before, failed for now (retry), or poisoned (never applies)."""

    applied: list[ApplyUnit] = field(default_factory=list)
    already_applied: list[ApplyUnit] = field(default_factory=list)
    failed: list[ApplyUnit] = field(default_factory=list)
    poisoned: list[tuple[ApplyUnit, str]] = field(default_factory=list)
    transactions: int = 0


def pack(units: Sequence[ApplyUnit]) -> list[list[ApplyUnit]]:
    """Group units into transactions of at most 100 actions, counting shared rollups once."""
    groups: list[list[ApplyUnit]] = []
    current: list[ApplyUnit] = []
    keys: set[RollupKey] = set()
    for unit in units:
        new_keys = set(unit.deltas) - keys
        if current and len(current) + 1 + len(keys) + len(new_keys) > MAX_TRANSACTION_ACTIONS:
            groups.append(current)
            current, keys = [], set()
            new_keys = set(unit.deltas)
        current.append(unit)
        keys |= new_keys
    if current:
        groups.append(current)
    return groups


class DynamoRollupStore:
    """Rollups and markers in the rollups table."""

    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self._client = client
        self.max_attempts = 6

    @property
    def client(self) -> DynamoDBClient:
        return self._client or clients.dynamodb()

    # -- applying --------------------------------------------------------------
    def apply(self, units: Sequence[ApplyUnit], now: datetime) -> ApplyReport:
        """Apply each unit exactly once; units whose marker exists are reported as already applied."""
        report = ApplyReport()
        for group in pack(units):
            self._apply_group(list(group), now, report)
        return report

    def _apply_group(self, group: list[ApplyUnit], now: datetime, report: ApplyReport) -> None:
        """Apply a group in one transaction; a deterministic failure splits it so one bad unit blocks no other."""
        attempt = 0
        while group:
            items, owners = self._transaction(group, now)
            try:
                report.transactions += 1
                self.client.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
                report.applied.extend(group)
                return
            except ClientError as err:
                code = err.response["Error"]["Code"]
                reasons = err.response.get("CancellationReasons", [])  # type: ignore[typeddict-item]
                done = {
                    id(owners[i])
                    for i, reason in enumerate(reasons)
                    if reason.get("Code") == "ConditionalCheckFailed" and i < len(owners) and owners[i] is not None
                }
                if code == "TransactionCanceledException" and done:
                    report.already_applied.extend(u for u in group if id(u) in done)
                    group = [u for u in group if id(u) not in done]
                    continue
                causes = {str(r.get("Code")) for r in reasons if r.get("Code") not in (None, "None")}
                if code == "TransactionCanceledException":
                    retryable = causes <= RETRYABLE_REASONS
                elif code == "ValidationException":  # the request itself (one of its units) is invalid
                    retryable = False
                elif code in RETRYABLE_ERRORS:
                    retryable = True
                else:  # configuration or permissions: nothing a unit can fix, so the whole invocation fails
                    raise
                if not retryable:
                    why = f"{code}: {', '.join(sorted(causes)) or err.response['Error'].get('Message', '')}"
                    self._split(group, now, report, why[:256])
                    return
                attempt += 1
                if attempt >= self.max_attempts:
                    log.warning("giving up on %d units after %d conflicting attempts", len(group), attempt)
                    report.failed.extend(group)
                    return
                time.sleep(min(1.0, 0.02 * 2**attempt) * random.random())

    def _split(self, group: list[ApplyUnit], now: datetime, report: ApplyReport, reason: str) -> None:
        """Apply the units of a group that failed deterministically one by one; the one that fails alone is poison."""
        if len(group) == 1:
            log.error("rollup unit %s/%d cannot be applied: %s", group[0].batch_id, group[0].chunk_index, reason)
            report.poisoned.append((group[0], reason))
            return
        for unit in group:
            self._apply_group([unit], now, report)

    def _transaction(
        self, group: list[ApplyUnit], now: datetime
    ) -> tuple[list[dict[str, Any]], list[ApplyUnit | None]]:
        items: list[dict[str, Any]] = []
        owners: list[ApplyUnit | None] = []
        stamp = instant(now)
        expires = int((now + MARKER_TTL).timestamp())
        merged: dict[RollupKey, RollupDelta] = {}
        for unit in group:
            items.append(
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": {
                            "pk": {"S": marker_pk(unit.batch_id)},
                            "sk": {"S": marker_sk(unit.chunk_index)},
                            "events": to_value(list(unit.event_ids)),
                            "applied_at": {"S": stamp},
                            "expires_at": {"N": str(expires)},
                        },
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
            owners.append(unit)
            for rk, delta in unit.deltas.items():
                total = merged.setdefault(rk, RollupDelta(Decimal(0), 0))
                total.quantity += delta.quantity
                total.event_count += delta.event_count
        for rk, delta in sorted(merged.items()):
            items.append({"Update": self._rollup_update(rk, delta, stamp)})
            owners.append(None)
        return items, owners

    def _rollup_update(self, rk: RollupKey, delta: RollupDelta, stamp: str, replace: bool = False) -> dict[str, Any]:
        """An UpdateItem that adds a delta to a rollup (or, with replace, sets its totals)."""
        sets: dict[str, str] = {
            "organization_id": rk.organization_id,
            "service_line_id": rk.service_line_id,
            "meter": rk.meter,
            "grain": rk.grain,
            "period_date": rk.period_date,
            "updated_at": stamp,
        }
        if rk.grain == "H":
            sets.update(
                hour=rk.hour,
                gsi1pk=period_index_pk(rk.organization_id, rk.service_line_id, rk.period_date),
                gsi1sk=period_index_sk(rk.meter, rk.hour),
            )
        names = {f"#s{i}": name for i, name in enumerate(sets)}
        values = {f":s{i}": to_value(value) for i, value in enumerate(sets.values())}
        # Plain notation, as every number the service writes.
        quantity = format(delta.quantity, "f")
        values.update({":q": {"N": quantity}, ":n": {"N": str(delta.event_count)}, ":one": {"N": "1"}})
        assignments = ", ".join(f"#s{i} = :s{i}" for i in range(len(sets)))
        if replace:
            expression = f"ADD version :one SET quantity = :q, event_count = :n, {assignments}"
        else:
            expression = f"ADD quantity :q, event_count :n, version :one SET {assignments}"
        return {
            "TableName": self.table_name,
            "Key": key(rollup_pk(rk.organization_id, rk.service_line_id), rollup_sk(rk)),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    # -- reading ---------------------------------------------------------------
    def applied_event_ids(self, batch_id: str) -> set[str]:
        """The events the applied chunks of a batch added (strongly consistent)."""
        ids: set[str] = set()
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": marker_pk(batch_id)}},
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**kwargs)
            for item in page.get("Items", []):
                ids.update(from_item(item).get("events", []))
            if "LastEvaluatedKey" not in page:
                return ids
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _query(self, **kwargs: Any) -> list[Rollup]:
        rows: list[Rollup] = []
        kwargs.setdefault("TableName", self.table_name)
        while True:
            page = self.client.query(**kwargs)
            rows.extend(self._row(from_item(i)) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return rows
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @staticmethod
    def _row(item: dict[str, Any]) -> Rollup:
        return Rollup(
            key=rollup_key_from_item(item),
            quantity=dec(item.get("quantity", 0)),
            event_count=int(item.get("event_count", 0)),
            version=int(item.get("version", 0)),
            updated_at=str(item.get("updated_at", "")),
        )

    def day_rollups(
        self, organization_id: str, line_id: str, start: date, end: date, consistent: bool = False
    ) -> list[Rollup]:
        """Day rollups of an organization's line with start <= period_date <= end (every meter)."""
        return self._query(
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
            ExpressionAttributeValues={
                ":pk": {"S": rollup_pk(organization_id, line_id)},
                ":lo": {"S": day_rollup_sk(start.isoformat(), "")},
                ":hi": {"S": day_rollup_sk(end.isoformat(), "~")},
            },
            ConsistentRead=consistent,
        )

    def hour_rollups(self, organization_id: str, line_id: str, start_hour: str, end_hour: str) -> list[Rollup]:
        """Hour rollups of an organization's line with start_hour <= hour < end_hour (YYYY-MM-DDTHH)."""
        return [
            r
            for r in self._query(
                KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
                ExpressionAttributeValues={
                    ":pk": {"S": rollup_pk(organization_id, line_id)},
                    ":lo": {"S": hour_rollup_prefix(start_hour)},
                    ":hi": {"S": hour_rollup_prefix(end_hour)},
                },
            )
            if r.key.hour < end_hour
        ]

    def rollups_of_period(self, organization_id: str, line_id: str, period_date: date) -> list[Rollup]:
        """Every rollup (day and hour) of an organization's line's period_date, read strongly consistent."""
        rows = self.day_rollups(organization_id, line_id, period_date, period_date, consistent=True)
        hour_keys = self._query(
            IndexName="by_period",
            KeyConditionExpression="gsi1pk = :pk",
            ExpressionAttributeValues={
                ":pk": {"S": period_index_pk(organization_id, line_id, period_date.isoformat())}
            },
        )
        pk = rollup_pk(organization_id, line_id)
        for start in range(0, len(hour_keys), 100):
            keys = [key(pk, rollup_sk(r.key)) for r in hour_keys[start : start + 100]]
            request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self.client.batch_get_item(RequestItems=request)
                rows.extend(self._row(from_item(i)) for i in response.get("Responses", {}).get(self.table_name, []))
                request = response.get("UnprocessedKeys") or {}
        return rows

    def repair(
        self, rk: RollupKey, quantity: Decimal, event_count: int, observed: Rollup | None, now: datetime
    ) -> bool:
        """Set a rollup to recomputed totals if it has not changed since it was observed."""
        update = self._rollup_update(rk, RollupDelta(quantity, event_count), instant(now), replace=True)
        if observed is None:
            update["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            update["ConditionExpression"] = "version = :v"
            update["ExpressionAttributeValues"][":v"] = {"N": str(observed.version)}
        try:
            self.client.update_item(**update)
            return True
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
