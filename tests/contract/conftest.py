"""The contract fixtures: every store under test, once over the emulated AWS adapter and once in memory."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.services.ports import CatalogRepository, EventStore, MessageQueue
from chalicelib.storage import clients
from chalicelib.storage.catalog_repo import DynamoCatalogRepository
from chalicelib.storage.events_repo import DynamoEventStore
from chalicelib.storage.memory import MemoryCatalogRepository, MemoryEventStore, MemoryQueue
from chalicelib.storage.queue import SqsQueue

ADAPTERS = ["dynamodb", "memory"]


@pytest.fixture(params=ADAPTERS)
def event_store(request: pytest.FixtureRequest) -> EventStore:
    if request.param == "memory":
        return MemoryEventStore()
    settings: Settings = request.getfixturevalue("aws")
    return DynamoEventStore(settings.events_table)


@pytest.fixture(params=ADAPTERS)
def catalog(request: pytest.FixtureRequest) -> CatalogRepository:
    if request.param == "memory":
        return MemoryCatalogRepository()
    settings: Settings = request.getfixturevalue("aws")
    return DynamoCatalogRepository(settings.catalog_table)


@dataclass
class QueueUnderTest:
    """A queue and how a test reads back what was sent to it: (body, attributes) pairs, oldest first."""

    queue: MessageQueue
    received: Callable[[], list[tuple[str, dict[str, str]]]]


def _sqs_received(queue: SqsQueue) -> Callable[[], list[tuple[str, dict[str, str]]]]:
    def received() -> list[tuple[str, dict[str, str]]]:
        found: list[tuple[str, dict[str, str]]] = []
        while True:
            messages = clients.sqs().receive_message(
                QueueUrl=queue.url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=0
            )
            if not messages.get("Messages"):
                return found
            for m in messages["Messages"]:
                attributes = {k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}
                found.append((m["Body"], attributes))
                clients.sqs().delete_message(QueueUrl=queue.url, ReceiptHandle=m["ReceiptHandle"])

    return received


@pytest.fixture(params=ADAPTERS)
def message_queue(request: pytest.FixtureRequest) -> QueueUnderTest:
    if request.param == "memory":
        memory = MemoryQueue()
        return QueueUnderTest(memory, lambda: [(m.body, m.attributes) for m in memory.take()])
    settings: Settings = request.getfixturevalue("aws")
    sqs = SqsQueue(settings.usage_queue)
    return QueueUnderTest(sqs, _sqs_received(sqs))


def as_json(position: Any) -> Any:
    """A position through JSON, as a cursor carries it."""
    return json.loads(json.dumps(position))
