"""Helpers shared by the end-to-end tests: a settable clock, exact JSON bodies, draining the queue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from chalicelib.container import Container
from chalicelib.local.runtime import sqs_event
from chalicelib.storage import clients
from chalicelib.storage.codec import from_item


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
    sqs = clients.sqs()
    url = container.queue.url
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
    """Every item of the events table, read strongly consistent."""
    items: list[dict[str, Any]] = []
    paginator = clients.dynamodb().get_paginator("scan")
    for page in paginator.paginate(TableName=container.events.table_name, ConsistentRead=True):
        items.extend(from_item(i) for i in page.get("Items", []))
    return items


def stored_events(container: Container) -> list[dict[str, Any]]:
    return [i for i in scan_events_table(container) if i["pk"].startswith("EV#")]


def pending_records(container: Container) -> list[dict[str, Any]]:
    return [i for i in scan_events_table(container) if i["pk"].startswith("PENDING#")]


def take_queued_messages(container: Container) -> list[dict[str, Any]]:
    """Receive (and so hide) every waiting usage message; their parsed bodies."""
    messages: list[dict[str, Any]] = []
    while True:
        received = (
            clients.sqs()
            .receive_message(QueueUrl=container.queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            .get("Messages", [])
        )
        if not received:
            return messages
        messages.extend(json.loads(m["Body"]) for m in received)
