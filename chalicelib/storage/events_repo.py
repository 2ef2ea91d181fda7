"""Usage events and pending ingest batches over DynamoDB.

Events (pk / sk = ``EV``):
- ``EV#<org>#K#<idempotency key>``: an event accepted with a key; the key's
  uniqueness is the item's, so a conditional put is the idempotency check.
- ``EV#<org>#I#<event id>``: an event accepted without a key.
- ``EV#<org>#A#<event id>``: an event whose key was reused after the 48-hour
  window, moved aside (in one transaction with its replacement).
Every event carries ``gsi1pk`` = organization#service line and ``gsi1sk`` =
period_date#id, which the ``by_line`` index lists (key formats: ``storage/keys.py``).

Pending batches (pk ``PENDING#<shard>``, sk = batch id, time-ordered): written
before a batch's events, deleted in the transaction that rolls the batch up,
so the sweeper can always find accepted events that have not reached the rollups.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.domain.models import UsageEvent, instant
from chalicelib.domain.pipeline import PendingBatch, PutOutcome, archive_slot, slot_for
from chalicelib.storage import clients
from chalicelib.storage.codec import from_item, key, to_item, to_value
from chalicelib.storage.failures import translated, translated_iter
from chalicelib.storage.keys import (
    EVENT_SK,
    event_pk,
    event_pk_prefix,
    line_index_pk,
    line_index_sk,
    pending_pk,
)

__all__ = ["DynamoEventStore", "PendingBatch", "PutOutcome", "archive_slot", "event_pk", "slot_for"]

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

PENDING_SHARDS = 8


def pending_shard(batch_id: str) -> int:
    return int(hashlib.sha256(batch_id.encode()).hexdigest()[:8], 16) % PENDING_SHARDS


def event_to_item(event: UsageEvent, slot: str) -> dict[str, Any]:
    values = event.model_dump(mode="python")
    values.update(
        pk=event_pk(event.organization_id, slot),
        sk=EVENT_SK,
        slot=slot,
        period_date=event.period_date.isoformat(),
        event_time=instant(event.event_time),
        recorded_at=instant(event.recorded_at),
        gsi1pk=line_index_pk(event.organization_id, event.service_line_id),
        gsi1sk=line_index_sk(event.period_date.isoformat(), event.id),
    )
    return to_item(values)


def event_from_item(item: dict[str, Any]) -> UsageEvent:
    values = from_item(item)
    for name in ("pk", "sk", "slot", "gsi1pk", "gsi1sk"):
        values.pop(name, None)
    return UsageEvent.model_validate(values)


class DynamoEventStore:
    """Events and pending batches in the events table (the EventStore port; botocore errors come out as
    the store's own, chalicelib/domain/store.py)."""

    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self._client = client

    @property
    def client(self) -> DynamoDBClient:
        return self._client or clients.dynamodb()

    # -- events ----------------------------------------------------------------
    @translated
    def put_new(self, event: UsageEvent, slot: str) -> PutOutcome:
        """Store the event only if its slot is free (one conditional PutItem, 1 write unit under 1 KB)."""
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=event_to_item(event, slot),
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return PutOutcome(True)
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            item: dict[str, Any] | None = err.response.get("Item")  # type: ignore[assignment]
            existing = event_from_item(item) if item else self.get(event.organization_id, slot)
            return PutOutcome(False, existing)

    @translated
    def replace_expired(self, old: UsageEvent, new: UsageEvent, slot: str) -> bool:
        """Move an event whose key expired aside and store the new one in its slot, atomically."""
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table_name,
                            "Item": event_to_item(old, archive_slot(old.id)),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table_name,
                            "Item": event_to_item(new, slot),
                            "ConditionExpression": "id = :old",
                            "ExpressionAttributeValues": {":old": {"S": old.id}},
                        }
                    },
                ]
            )
            return True
        except ClientError as err:
            if err.response["Error"]["Code"] in ("TransactionCanceledException", "ConditionalCheckFailedException"):
                return False
            raise

    @translated
    def get(self, organization_id: str, slot: str) -> UsageEvent | None:
        item = self.client.get_item(
            TableName=self.table_name, Key=key(event_pk(organization_id, slot), EVENT_SK), ConsistentRead=True
        ).get("Item")
        return event_from_item(item) if item else None

    @translated
    def get_many(self, organization_id: str, slots: Iterable[str]) -> dict[str, UsageEvent]:
        """Events by slot, read strongly consistent; missing slots are absent from the result."""
        wanted = list(dict.fromkeys(slots))
        found: dict[str, UsageEvent] = {}
        for start in range(0, len(wanted), 100):
            keys = [key(event_pk(organization_id, s), EVENT_SK) for s in wanted[start : start + 100]]
            request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self.client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table_name, []):
                    found[item["slot"]["S"]] = event_from_item(item)
                request = response.get("UnprocessedKeys") or {}
        return found

    # -- corrections (docs/architecture.md, "Corrections") -----------------------
    @translated
    def locate(
        self, organization_id: str, line_id: str, start: date, end: date, event_id: str
    ) -> tuple[UsageEvent, str] | None:
        """A line's record by id with start <= period_date <= end, and its slot, through the by_line index
        (eventually consistent: read the slot again for its current marks). One key read when start == end."""
        values: dict[str, Any] = {":line": {"S": line_index_pk(organization_id, line_id)}}
        kwargs: dict[str, Any] = {"TableName": self.table_name, "IndexName": "by_line"}
        if start == end:
            kwargs["KeyConditionExpression"] = "gsi1pk = :line AND gsi1sk = :sk"
            values[":sk"] = {"S": line_index_sk(start.isoformat(), event_id)}
        else:
            kwargs["KeyConditionExpression"] = "gsi1pk = :line AND gsi1sk BETWEEN :lo AND :hi"
            kwargs["FilterExpression"] = "id = :id"
            values.update(
                {
                    ":lo": {"S": line_index_sk(start.isoformat(), "")},
                    ":hi": {"S": line_index_sk(end.isoformat(), "~")},
                    ":id": {"S": event_id},
                }
            )
        kwargs["ExpressionAttributeValues"] = values
        while True:
            page = self.client.query(**kwargs)
            for item in page.get("Items", []):
                return event_from_item(item), str(item["slot"]["S"])
            if "LastEvaluatedKey" not in page:
                return None
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @translated
    def put_correction(self, record: UsageEvent, slot: str, target_slot: str | None) -> bool:
        """Store a correction in its slot if free and, in the same transaction, mark the event it corrects
        (at `target_slot`) if that is not voided: a void sets `voided_by`, an adjustment adds to
        `adjusted_by`. Nothing else of the event is written. False when a condition failed (nothing written)."""
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table_name,
                    "Item": event_to_item(record, slot),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
        ]
        if target_slot is not None:
            if record.kind == "void":
                update = "SET #v = :id, #s = :slot"
                names = {"#v": "voided_by", "#s": "void_slot"}
                values: dict[str, Any] = {":id": {"S": record.id}, ":slot": {"S": slot}}
            else:
                update, names, values = (
                    "ADD #a :ids",
                    {"#a": "adjusted_by", "#v": "voided_by"},
                    {":ids": {"SS": [record.id]}},
                )
            items.append(
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": key(event_pk(record.organization_id, target_slot), EVENT_SK),
                        "UpdateExpression": update,
                        "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(#v)",
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
            return True
        except ClientError as err:
            if err.response["Error"]["Code"] in ("TransactionCanceledException", "ConditionalCheckFailedException"):
                return False
            raise

    @translated
    def query_line(
        self,
        organization_id: str,
        line_id: str,
        start: date,
        end: date,
        exclusive_start: dict[str, Any] | None = None,
        limit: int = 100,
        meter: str | None = None,
    ) -> tuple[list[tuple[UsageEvent, dict[str, Any]]], dict[str, Any] | None]:
        """A page of an organization's line's events with start <= period_date <= end, in (period_date, id) order.

        Each event comes with its index key, from which a later page can start; a start key that is
        not one of this line's index keys is refused with ValueError.
        """
        if exclusive_start is not None:
            check_line_position(organization_id, line_id, exclusive_start)
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": "by_line",
            "KeyConditionExpression": "gsi1pk = :line AND gsi1sk BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":line": {"S": line_index_pk(organization_id, line_id)},
                ":lo": {"S": line_index_sk(start.isoformat(), "")},
                ":hi": {"S": line_index_sk(end.isoformat(), "~")},
            },
            "Limit": limit,
        }
        if meter is not None:
            kwargs["FilterExpression"] = "meter = :meter"
            kwargs["ExpressionAttributeValues"][":meter"] = {"S": meter}
        if exclusive_start:
            kwargs["ExclusiveStartKey"] = exclusive_start
        page = self.client.query(**kwargs)
        rows = [
            (event_from_item(i), {k: i[k] for k in ("pk", "sk", "gsi1pk", "gsi1sk")}) for i in page.get("Items", [])
        ]
        return rows, page.get("LastEvaluatedKey")

    @translated_iter
    def iter_line(self, organization_id: str, line_id: str, start: date, end: date) -> Iterator[UsageEvent]:
        cursor: dict[str, Any] | None = None
        while True:
            rows, cursor = self.query_line(organization_id, line_id, start, end, cursor, limit=500)
            yield from (event for event, _ in rows)
            if not cursor:
                return

    # -- pending batches -------------------------------------------------------
    @translated
    def put_pending(self, batch: PendingBatch) -> None:
        self.client.put_item(
            TableName=self.table_name,
            Item=to_item(
                {
                    "pk": pending_pk(pending_shard(batch.batch_id)),
                    "sk": batch.batch_id,
                    "organization_id": batch.organization_id,
                    "created_at": instant(batch.created_at),
                    "events": [list(pair) for pair in batch.events],
                }
            ),
        )

    def pending_key(self, batch_id: str) -> dict[str, Any]:
        return key(pending_pk(pending_shard(batch_id)), batch_id)

    @translated
    def delete_pending(self, batch_id: str) -> None:
        self.client.delete_item(TableName=self.table_name, Key=self.pending_key(batch_id))

    @translated
    def delete_pending_many(self, batch_ids: Iterable[str]) -> None:
        """Delete pending records (unconditional: deleting twice is harmless)."""
        keys = [self.pending_key(b) for b in sorted(set(batch_ids))]
        for chunk in chunked(keys, 25):
            request: dict[str, Any] = {self.table_name: [{"DeleteRequest": {"Key": k}} for k in chunk]}
            while request:
                request = self.client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}

    @translated
    def is_pending(self, batch_id: str) -> bool:
        return "Item" in self.client.get_item(
            TableName=self.table_name, Key=self.pending_key(batch_id), ConsistentRead=True, ProjectionExpression="pk"
        )

    @translated_iter
    def pending_before(self, cutoff_sk: str, limit: int = 100) -> Iterator[PendingBatch]:
        """Pending batches whose id sorts below `cutoff_sk` (created before the cutoff), every shard."""
        for shard in range(PENDING_SHARDS):
            kwargs: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "pk = :pk AND sk < :cut",
                "ExpressionAttributeValues": {":pk": {"S": pending_pk(shard)}, ":cut": {"S": cutoff_sk}},
                "ConsistentRead": True,
                "Limit": limit,
            }
            while True:
                page = self.client.query(**kwargs)
                for raw in page.get("Items", []):
                    item = from_item(raw)
                    last = item.get("last_enqueued_at")
                    dead = item.get("dead_lettered_at")
                    yield PendingBatch(
                        batch_id=item["sk"],
                        organization_id=item["organization_id"],
                        created_at=datetime.fromisoformat(item["created_at"]),
                        events=tuple((str(s), str(i)) for s, i in item["events"]),
                        last_enqueued_at=datetime.fromisoformat(last) if last else None,
                        dead_lettered_at=datetime.fromisoformat(dead) if dead else None,
                    )
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @translated
    def mark_dead_lettered(self, batch_id: str, now: datetime, reason: str) -> None:
        """Note on a pending batch that its message went to the dead-letter queue (if it is still pending)."""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=self.pending_key(batch_id),
                UpdateExpression="SET dead_lettered_at = :now, dead_letter_reason = :why",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":now": to_value(instant(now)), ":why": to_value(reason)},
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    @translated
    def claim_for_requeue(self, batch_id: str, now: datetime, not_since: datetime) -> bool:
        """Mark a pending batch re-enqueued unless another sweeper did so since `not_since`."""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=self.pending_key(batch_id),
                UpdateExpression="SET last_enqueued_at = :now",
                ConditionExpression="attribute_exists(pk) AND "
                "(attribute_not_exists(last_enqueued_at) OR last_enqueued_at < :since)",
                ExpressionAttributeValues={
                    ":now": to_value(instant(now)),
                    ":since": to_value(instant(not_since)),
                },
            )
            return True
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise


_POSITION_KEYS = frozenset({"pk", "sk", "gsi1pk", "gsi1sk"})


def check_line_position(organization_id: str, line_id: str, position: dict[str, Any]) -> None:
    """A by_line start key must be one of this organization's line's index keys (ValueError otherwise)."""
    if set(position) != _POSITION_KEYS:
        raise ValueError("not a by_line position")
    values = {}
    for name, value in position.items():
        if not isinstance(value, dict) or set(value) != {"S"} or not isinstance(value["S"], str):
            raise ValueError("not a by_line position")
        values[name] = value["S"]
    if (
        values["gsi1pk"] != line_index_pk(organization_id, line_id)
        or not values["pk"].startswith(event_pk_prefix(organization_id))
        or values["sk"] != EVENT_SK
        or len(values["gsi1sk"]) > 200
        or len(values["pk"]) > 400
    ):
        raise ValueError("not a by_line position of this line")


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
