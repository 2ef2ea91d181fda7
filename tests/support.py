"""Helpers shared by the tests that drive the app: a settable clock, exact JSON bodies, draining the queue,
and what the stores hold; each works over the emulated AWS and over the in-memory stores alike."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.container import Container, set_container
from chalicelib.domain.models import instant
from chalicelib.local import chalice_fixes
from chalicelib.local.runtime import sqs_event
from chalicelib.services import catalog_admin
from chalicelib.storage import clients
from chalicelib.storage.codec import from_item, to_item
from chalicelib.storage.events_repo import DynamoEventStore, event_to_item, pending_shard
from chalicelib.storage.keys import pending_pk
from chalicelib.storage.memory import MemoryEventStore, MemoryQueue
from chalicelib.storage.queue import SqsQueue

MEMORY_QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:memory"


def in_memory_container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """A container over the in-memory stores with the catalog and demo data loaded, set as the app's
    (the body of a `container` fixture: the same data as the emulator-backed one in tests/conftest.py)."""
    for name in ("DEMO_API_KEY", "DEMO_READONLY_API_KEY", "DEMO_API_KEY_2"):
        monkeypatch.delenv(name, raising=False)
    chalice_fixes.install()  # chalice.test.Client routes a greedy {proxy+} as API Gateway does (as over the emulator)
    built = Container.in_memory()
    catalog_admin.load_platform_catalog(built.catalog)
    catalog_admin.load_demo_data(built.catalog)
    set_container(built)
    try:
        yield built
    finally:
        set_container(None)


def sqs_queue(container: Container) -> SqsQueue:
    """The container's usage queue when it is SQS (the emulator's)."""
    assert isinstance(container.queue, SqsQueue), "not an SQS queue"
    return container.queue


def memory_messages(queue: MemoryQueue) -> list[dict[str, Any]]:
    """Take every message waiting in an in-memory queue, shaped as SQS's ReceiveMessage answers them."""
    return [
        {
            "MessageId": str(uuid.uuid4()),
            "ReceiptHandle": str(uuid.uuid4()),
            "Body": m.body,
            "Attributes": {"ApproximateReceiveCount": "1"},
            "MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in m.attributes.items()},
        }
        for m in queue.take()
    ]


@dataclass
class Clock:
    """A clock a test sets by hand (`container.clock = Clock(...)`)."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def body(response: Any) -> Any:
    """A response body with every non-integral number as an exact Decimal."""
    return json.loads(response.body, parse_float=Decimal)


def run_aggregator(client: Any, container: Container) -> int:
    """Drain the usage queue through the real `aggregate_usage` Lambda handler; returns messages handled."""
    if isinstance(container.queue, MemoryQueue):
        handled = 0
        while waiting := memory_messages(container.queue):  # what the aggregator sends is taken next round
            for start in range(0, len(waiting), 10):
                chunk = waiting[start : start + 10]
                result = client.lambda_.invoke("aggregate_usage", sqs_event(chunk, MEMORY_QUEUE_ARN, "us-east-1"))
                assert result.payload == {"batchItemFailures": []}
                handled += len(chunk)
        return handled
    sqs = clients.sqs()
    url = sqs_queue(container).url
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    handled = 0
    while True:
        messages = sqs.receive_message(QueueUrl=url, AttributeNames=["All"], MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return handled
        result = client.lambda_.invoke("aggregate_usage", sqs_event(messages, arn, "us-east-1"))
        assert result.payload == {"batchItemFailures": []}
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        handled += len(messages)


def scan_events_table(container: Container) -> list[dict[str, Any]]:
    """Every item of the events table, read strongly consistent (over memory: the items DynamoDB would hold)."""
    if isinstance(container.events, MemoryEventStore):
        return memory_event_items(container.events)
    items: list[dict[str, Any]] = []
    paginator = clients.dynamodb().get_paginator("scan")
    assert isinstance(container.events, DynamoEventStore)
    for page in paginator.paginate(TableName=container.events.table_name, ConsistentRead=True):
        items.extend(from_item(i) for i in page.get("Items", []))
    return items


def stored_events(container: Container) -> list[dict[str, Any]]:
    return [i for i in scan_events_table(container) if i["pk"].startswith("EV#")]


def pending_records(container: Container) -> list[dict[str, Any]]:
    return [i for i in scan_events_table(container) if i["pk"].startswith("PENDING#")]


def memory_event_items(store: MemoryEventStore) -> list[dict[str, Any]]:
    """The items the DynamoDB event store would hold for what a memory store holds (as its scan reads them)."""
    items = [from_item(event_to_item(e, slot)) for _, slot, e in store.all_events()]
    for batch in store.pending_batches():
        values: dict[str, Any] = {
            "pk": pending_pk(pending_shard(batch.batch_id)),
            "sk": batch.batch_id,
            "organization_id": batch.organization_id,
            "created_at": instant(batch.created_at),
            "events": [list(pair) for pair in batch.events],
        }
        if batch.last_enqueued_at is not None:
            values["last_enqueued_at"] = instant(batch.last_enqueued_at)
        if batch.dead_lettered_at is not None:
            values["dead_lettered_at"] = instant(batch.dead_lettered_at)
        items.append(from_item(to_item(values)))
    return items


def take_queued_messages(container: Container) -> list[dict[str, Any]]:
    """Receive (and so hide) every waiting usage message; their parsed bodies."""
    if isinstance(container.queue, MemoryQueue):
        return [json.loads(m.body) for m in container.queue.take()]
    messages: list[dict[str, Any]] = []
    while True:
        received = (
            clients.sqs()
            .receive_message(QueueUrl=sqs_queue(container).url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            .get("Messages", [])
        )
        if not received:
            return messages
        messages.extend(json.loads(m["Body"]) for m in received)
