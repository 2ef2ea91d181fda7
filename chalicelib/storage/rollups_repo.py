"""Rollups, group value registers and applied-markers over DynamoDB: the exactly-once half of the pipeline.

Rollups (pk ``R#<organization>#<service line>``, every format in ``storage/keys.py``): a day rollup
(by period_date) and an hour rollup (by event-time hour, with the period_date in its key so that
reconciliation recomputes it from one day's events) per meter, and the same per group value for
a meter's group_by keys. Every rollup has the additive cells ``quantity`` and ``event_count``; a
meter whose aggregation keeps a join cell adds it: ``max_q``, ``min_q``, ``latest_at`` +
``latest_q``, or the string set ``uniq`` (chalicelib/domain/aggregation.py).

Applying a unit (one chunk of one batch) is two steps:
1. its join cells, each with one conditional UpdateItem that only ever moves the cell up the join
   (a higher max, a lower min, a later latest, more values): idempotent, so applied at least once,
   on every delivery; a failed condition means "already there", never an error;
2. its applied marker ``APPLIED#<batch>/<chunk>`` put if absent, in one transaction with an ``ADD``
   of its additive cells: exactly once. Join cells never join this transaction (a failed condition
   there would cancel the marker and the additions with it).
Step 1 comes first, so a unit whose marker exists has had its joins applied at least once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.domain.aggregation import EMPTY, MAX_GROUP_VALUES, RESERVED_PREFIX, Latest, RollupState, fold
from chalicelib.domain.models import instant
from chalicelib.domain.usage import ApplyReport, ApplyUnit, GroupSlot, Rollup, RollupDelta, RollupKey
from chalicelib.storage import clients
from chalicelib.storage.codec import dec, from_item, key, to_value
from chalicelib.storage.failures import store_error, translated
from chalicelib.storage.keys import (
    day_rollup_sk,
    group_day_range,
    group_day_rollup_sk,
    group_hour_range,
    group_hour_rollup_sk,
    group_index_sk,
    group_register_sk,
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

__all__ = ["ApplyReport", "ApplyUnit", "DynamoRollupStore", "Rollup", "pack"]

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
        "TransactionConflictException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
T = TypeVar("T")


def rollup_sk(rk: RollupKey) -> str:
    if rk.grouped:
        if rk.grain == "D":
            return group_day_rollup_sk(rk.meter, rk.group_key, rk.period_date, rk.group_value)
        return group_hour_rollup_sk(rk.meter, rk.group_key, rk.hour, rk.period_date, rk.group_value)
    if rk.grain == "D":
        return day_rollup_sk(rk.period_date, rk.meter)
    return hour_rollup_sk(rk.hour, rk.meter, rk.period_date)


def rollup_key_from_item(item: Mapping[str, Any]) -> RollupKey:
    return RollupKey(
        organization_id=item["organization_id"],
        service_line_id=item["service_line_id"],
        meter=item["meter"],
        grain=item["grain"],
        period_date=item["period_date"],
        hour=item.get("hour", ""),
        group_key=item.get("group_key", ""),
        group_value=item.get("group_value", ""),
    )


def state_from_item(item: Mapping[str, Any]) -> RollupState:
    """The cells of a stored rollup."""
    latest = None
    if "latest_at" in item:
        latest = Latest(str(item["latest_at"]), dec(item["latest_q"]))
    return RollupState(
        quantity=dec(item.get("quantity", 0)),
        event_count=int(item.get("event_count", 0)),
        maximum=dec(item["max_q"]) if "max_q" in item else None,
        minimum=dec(item["min_q"]) if "min_q" in item else None,
        latest=latest,
        values=frozenset(str(v) for v in item.get("uniq", ())),
    )


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


def _number(value: Decimal) -> dict[str, str]:
    """A number attribute in plain notation, as every number the service writes."""
    return {"N": format(value, "f")}


class _Deterministic(Exception):
    """A write DynamoDB refuses for a reason that will not change (the unit is poison)."""


class DynamoRollupStore:
    """Rollups, group registers and markers in the rollups table."""

    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self._client = client
        self.max_attempts = 6
        self.max_group_values = MAX_GROUP_VALUES
        # What this process knows of the group registers: admitted values and whether the register is
        # full. Both only ever grow, so what is known stays true (a register write costs its item's size).
        self._registers: dict[GroupSlot, tuple[set[str], bool]] = {}

    @property
    def client(self) -> DynamoDBClient:
        return self._client or clients.dynamodb()

    # -- applying --------------------------------------------------------------
    def apply(self, units: Sequence[ApplyUnit], now: datetime) -> ApplyReport:
        """Apply each unit exactly once; units whose marker exists are reported as already applied."""
        report = ApplyReport()
        ready: list[ApplyUnit] = []
        for unit in units:
            try:
                for rk, state in sorted(unit.deltas.items()):
                    if state.has_joins:
                        self._join(rk, state, now)
            except _Deterministic as poison:
                log.error("rollup unit %s/%d cannot be applied: %s", unit.batch_id, unit.chunk_index, poison)
                report.poisoned.append((unit, str(poison)[:256]))
                continue
            except _Retry:
                report.failed.append(unit)
                continue
            ready.append(unit)
        for group in pack(ready):
            self._apply_group(list(group), now, report)
        return report

    def _join(self, rk: RollupKey, state: RollupState, now: datetime) -> None:
        """Move each join cell of a rollup up to (at least) the state's: conditional, so idempotent."""
        for update in self._join_updates(rk, state, instant(now)):
            self._with_retries(lambda u=update: self._conditional(u))  # type: ignore[misc]

    def _conditional(self, update: dict[str, Any]) -> bool:
        try:
            self.client.update_item(**update)
            return True
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False  # the cell is already as far up the join
            raise

    def _with_retries(self, call: Callable[[], T]) -> T:
        """A single write, retried with backoff while DynamoDB says it may succeed later."""
        attempt = 0
        while True:
            try:
                return call()
            except ClientError as err:
                code = err.response["Error"]["Code"]
                if code == "ValidationException":
                    raise _Deterministic(f"{code}: {err.response['Error'].get('Message', '')}") from None
                if code not in RETRYABLE_ERRORS:
                    raise store_error(err) from err
                attempt += 1
                if attempt >= self.max_attempts:
                    raise _Retry() from None
                time.sleep(min(1.0, 0.02 * 2**attempt) * random.random())
            except BotoCoreError as err:
                raise store_error(err) from err

    def _join_updates(self, rk: RollupKey, state: RollupState, stamp: str) -> list[dict[str, Any]]:
        updates: list[dict[str, Any]] = []

        def update(assign: str, values: dict[str, Any], condition: str | None) -> None:
            base = self._rollup_update(rk, None, stamp)
            base["UpdateExpression"] = (
                f"ADD version :one SET {assign}, " + base["UpdateExpression"].split(" SET ", 1)[1]
            )
            base["ExpressionAttributeValues"].update(values)
            if condition:
                base["ConditionExpression"] = condition
            updates.append(base)

        if state.maximum is not None:
            update("max_q = :mx", {":mx": _number(state.maximum)}, "attribute_not_exists(max_q) OR max_q < :mx")
        if state.minimum is not None:
            update("min_q = :mn", {":mn": _number(state.minimum)}, "attribute_not_exists(min_q) OR min_q > :mn")
        if state.latest is not None:
            update(
                "latest_at = :la, latest_q = :lq",
                {":la": {"S": state.latest.at}, ":lq": _number(state.latest.value)},
                "attribute_not_exists(latest_at) OR latest_at < :la",
            )
        if state.values:
            base = self._rollup_update(rk, None, stamp)
            described = base["UpdateExpression"].split(" SET ", 1)[1]
            base["UpdateExpression"] = f"ADD version :one, uniq :u SET {described}"
            base["ExpressionAttributeValues"][":u"] = {"SS": sorted(state.values)}
            updates.append(base)
        return updates

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
                    raise store_error(err) from err
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
            except BotoCoreError as err:
                raise store_error(err) from err

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
        merged: dict[RollupKey, RollupState] = {}
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
                merged[rk] = fold(merged.get(rk, EMPTY), delta.additive())
        for rk, delta in sorted(merged.items()):
            items.append({"Update": self._rollup_update(rk, delta, stamp)})
            owners.append(None)
        return items, owners

    def _descriptive(self, rk: RollupKey, stamp: str) -> dict[str, str]:
        """The attributes that say which rollup an item is (and place it in the by_period index)."""
        sets: dict[str, str] = {
            "organization_id": rk.organization_id,
            "service_line_id": rk.service_line_id,
            "meter": rk.meter,
            "grain": rk.grain,
            "period_date": rk.period_date,
            "updated_at": stamp,
        }
        if rk.grain == "H":
            sets["hour"] = rk.hour
        if rk.grouped:
            sets.update(group_key=rk.group_key, group_value=rk.group_value)
        if rk.grouped or rk.grain == "H":
            sets["gsi1pk"] = period_index_pk(rk.organization_id, rk.service_line_id, rk.period_date)
            sets["gsi1sk"] = (
                group_index_sk(rk.meter, rk.grain, rk.hour, rk.group_key, rk.group_value)
                if rk.grouped
                else period_index_sk(rk.meter, rk.hour)
            )
        return sets

    def _rollup_update(
        self, rk: RollupKey, delta: RollupState | None, stamp: str, replace: bool = False
    ) -> dict[str, Any]:
        """An UpdateItem that adds a delta's additive cells to a rollup (replace: sets every cell to it;
        no delta: only the descriptive attributes, for the join updates to extend)."""
        sets = self._descriptive(rk, stamp)
        names = {f"#s{i}": name for i, name in enumerate(sets)}
        values: dict[str, Any] = {f":s{i}": to_value(value) for i, value in enumerate(sets.values())}
        values[":one"] = {"N": "1"}
        assignments = ", ".join(f"#s{i} = :s{i}" for i in range(len(sets)))
        if delta is None:
            expression = f"ADD version :one SET {assignments}"
        elif replace:
            values.update({":q": _number(delta.quantity), ":n": {"N": str(delta.event_count)}})
            cells, removed = ["quantity = :q", "event_count = :n"], []
            optional = {
                "max_q": delta.maximum,
                "min_q": delta.minimum,
                "latest_at": delta.latest.at if delta.latest else None,
                "latest_q": delta.latest.value if delta.latest else None,
            }
            for index, (name, cell) in enumerate(optional.items()):
                if cell is None:
                    removed.append(name)
                else:
                    values[f":c{index}"] = {"S": cell} if isinstance(cell, str) else _number(cell)
                    cells.append(f"{name} = :c{index}")
            if delta.values:
                values[":u"] = {"SS": sorted(delta.values)}
                cells.append("uniq = :u")
            else:
                removed.append("uniq")
            expression = f"ADD version :one SET {', '.join(cells)}, {assignments}"
            if removed:
                expression += f" REMOVE {', '.join(removed)}"
        else:
            values.update({":q": _number(delta.quantity), ":n": {"N": str(delta.event_count)}})
            expression = f"ADD quantity :q, event_count :n, version :one SET {assignments}"
        return {
            "TableName": self.table_name,
            "Key": key(rollup_pk(rk.organization_id, rk.service_line_id), rollup_sk(rk)),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    # -- group value registers -------------------------------------------------
    def admit_groups(self, asked: Mapping[GroupSlot, Set[str]]) -> dict[GroupSlot, frozenset[str]]:
        """Which of the asked values each slot keeps apart: those admitted before, and new ones while the
        slot holds fewer than max_group_values. Once decided, a value's admission never changes."""
        return {slot: self._admit(slot, values) for slot, values in sorted(asked.items())}

    @translated
    def _admit(self, slot: GroupSlot, values: Set[str]) -> frozenset[str]:
        asked = sorted(v for v in values if not v.startswith(RESERVED_PREFIX))
        known, full = self._registers.get(slot, (set(), False))
        admitted = known.intersection(asked)
        wanted = [] if full else [v for v in asked if v not in known]
        if wanted:
            admitted |= self._admit_new(slot, wanted)
        return frozenset(admitted)

    def _remember(self, slot: GroupSlot, admitted: Iterable[str], full: bool) -> None:
        if len(self._registers) > 20_000:  # a bound on the memory this costs; forgetting is always safe
            self._registers.clear()
        known, was_full = self._registers.get(slot, (set(), False))
        self._registers[slot] = (known | set(admitted), full or was_full)

    def _admit_new(self, slot: GroupSlot, wanted: list[str]) -> set[str]:
        """Values not known to be admitted: added to the register while it has room."""
        register = group_register_sk(slot.period_date, slot.meter, slot.group_key)
        item_key = key(rollup_pk(slot.organization_id, slot.service_line_id), register)
        admitted: set[str] = set()
        while wanted:
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=item_key,
                    UpdateExpression="ADD vals :v SET #m = :m, #k = :k, #d = :d",
                    ExpressionAttributeNames={"#m": "meter", "#k": "group_key", "#d": "period_date"},
                    ConditionExpression="attribute_not_exists(vals) OR size(vals) <= :room",
                    ExpressionAttributeValues={
                        ":v": {"SS": wanted},
                        ":m": {"S": slot.meter},
                        ":k": {"S": slot.group_key},
                        ":d": {"S": slot.period_date},
                        ":room": {"N": str(self.max_group_values - len(wanted))},
                    },
                )
                admitted |= set(wanted)
                self._remember(slot, admitted, False)
                return admitted
            except ClientError as err:
                if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
            have = self._register_values(item_key)
            self._remember(slot, have, len(have) >= self.max_group_values)
            admitted |= have.intersection(wanted)
            rest = [v for v in wanted if v not in have]
            free = self.max_group_values - len(have)
            wanted = rest[: max(free, 0)]
        return admitted

    def _register_values(self, item_key: dict[str, Any]) -> set[str]:
        """A register's values, read strongly consistent (BatchGetItem: the aggregator's role reads rollups
        with it and Query only)."""
        request: dict[str, Any] = {self.table_name: {"Keys": [item_key], "ConsistentRead": True}}
        items: list[dict[str, Any]] = []
        while request:
            response = self.client.batch_get_item(RequestItems=request)
            items.extend(response.get("Responses", {}).get(self.table_name, []))
            request = response.get("UnprocessedKeys") or {}
        return {str(v) for item in items for v in from_item(item).get("vals", ())}

    # -- reading ---------------------------------------------------------------
    @translated
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
            state=state_from_item(item),
            version=int(item.get("version", 0)),
            updated_at=str(item.get("updated_at", "")),
        )

    def _range(self, organization_id: str, line_id: str, lo: str, hi: str, consistent: bool = False) -> list[Rollup]:
        return self._query(
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
            ExpressionAttributeValues={
                ":pk": {"S": rollup_pk(organization_id, line_id)},
                ":lo": {"S": lo},
                ":hi": {"S": hi},
            },
            ConsistentRead=consistent,
        )

    @translated
    def day_rollups(
        self, organization_id: str, line_id: str, start: date, end: date, consistent: bool = False
    ) -> list[Rollup]:
        """Day rollups (all usage, no group) of an organization's line with start <= period_date <= end."""
        lo, hi = day_rollup_sk(start.isoformat(), ""), day_rollup_sk(end.isoformat(), "~")
        return self._range(organization_id, line_id, lo, hi, consistent)

    @translated
    def hour_rollups(self, organization_id: str, line_id: str, start_hour: str, end_hour: str) -> list[Rollup]:
        """Hour rollups (no group) of an organization's line with start_hour <= hour < end_hour (YYYY-MM-DDTHH)."""
        rows = self._range(organization_id, line_id, hour_rollup_prefix(start_hour), hour_rollup_prefix(end_hour))
        return [r for r in rows if r.key.hour < end_hour]

    @translated
    def group_day_rollups(
        self, organization_id: str, line_id: str, meter: str, group_key: str, start: date, end: date
    ) -> list[Rollup]:
        """Day rollups per value of a meter's group key with start <= period_date <= end."""
        lo, hi = group_day_range(meter, group_key, start.isoformat(), end.isoformat())
        return self._range(organization_id, line_id, lo, hi)

    @translated
    def group_hour_rollups(
        self, organization_id: str, line_id: str, meter: str, group_key: str, start_hour: str, end_hour: str
    ) -> list[Rollup]:
        """Hour rollups per value of a meter's group key with start_hour <= hour < end_hour."""
        lo, hi = group_hour_range(meter, group_key, start_hour, end_hour)
        return [r for r in self._range(organization_id, line_id, lo, hi) if r.key.hour < end_hour]

    @translated
    def rollups_of_period(
        self, organization_id: str, line_id: str, period_date: date, with_groups: bool = False
    ) -> list[Rollup]:
        """Every rollup (day and hour; with_groups: and per group value) of an organization's line's
        period_date, read strongly consistent."""
        rows = self.day_rollups(organization_id, line_id, period_date, period_date, consistent=True)
        indexed = self._query(
            IndexName="by_period",
            KeyConditionExpression="gsi1pk = :pk",
            ExpressionAttributeValues={
                ":pk": {"S": period_index_pk(organization_id, line_id, period_date.isoformat())}
            },
        )
        wanted = [r for r in indexed if with_groups or not r.key.grouped]
        pk = rollup_pk(organization_id, line_id)
        for start in range(0, len(wanted), 100):
            keys = [key(pk, rollup_sk(r.key)) for r in wanted[start : start + 100]]
            request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self.client.batch_get_item(RequestItems=request)
                rows.extend(self._row(from_item(i)) for i in response.get("Responses", {}).get(self.table_name, []))
                request = response.get("UnprocessedKeys") or {}
        return rows

    def repair(
        self, rk: RollupKey, quantity: Decimal, event_count: int, observed: Rollup | None, now: datetime
    ) -> bool:
        """Set a rollup's additive cells to recomputed totals if it has not changed since it was observed
        (its join cells are kept)."""
        kept = observed.state.joins() if observed is not None else EMPTY
        return self.repair_state(rk, fold(kept, RollupDelta(quantity, event_count)), observed, now)

    @translated
    def repair_state(self, rk: RollupKey, state: RollupState, observed: Rollup | None, now: datetime) -> bool:
        """Set every cell of a rollup to a recomputed state if it has not changed since it was observed."""
        update = self._rollup_update(rk, state, instant(now), replace=True)
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


class _Retry(Exception):
    """A join write still throttled after every attempt: the unit fails for now and is redelivered."""
