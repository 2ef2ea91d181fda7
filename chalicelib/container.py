"""The composition root: the one place concrete adapters are chosen."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from chalicelib.config import Settings, get_settings
from chalicelib.services.ports import RollupStore
from chalicelib.services.rate_limit import ApiCallLimiter
from chalicelib.storage.catalog_repo import DynamoCatalogRepository
from chalicelib.storage.events_repo import DynamoEventStore
from chalicelib.storage.queue import SqsQueue
from chalicelib.storage.rollups_repo import DynamoRollupStore


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Container:
    """The adapters a use case may need, built from settings."""

    settings: Settings
    catalog: DynamoCatalogRepository
    events: DynamoEventStore
    rollups: DynamoRollupStore
    queue: SqsQueue
    dead_letters: SqsQueue
    limiter: ApiCallLimiter
    clock: Callable[[], datetime] = field(default=utc_now)

    @classmethod
    def from_settings(cls, settings: Settings) -> Container:
        catalog = DynamoCatalogRepository(settings.catalog_table)
        return cls(
            settings=settings,
            catalog=catalog,
            limiter=ApiCallLimiter(catalog),
            events=DynamoEventStore(settings.events_table),
            rollups=DynamoRollupStore(settings.rollups_table),
            queue=SqsQueue(settings.usage_queue),
            dead_letters=SqsQueue(settings.usage_dlq),
        )

    @classmethod
    def in_memory(cls, settings: Settings | None = None, rollups: RollupStore | None = None) -> Container:
        """The same use cases over the in-memory stores (storage/memory.py): empty, nothing shared.

        The fields keep the DynamoDB adapters' types for the code that reads their names (a table, a
        queue URL) off the container; over memory, only the ports' methods exist.
        """
        from chalicelib.storage.memory import MemoryCatalogRepository, MemoryEventStore, MemoryQueue, MemoryRollupStore

        settings = settings or Settings.from_env()
        if rollups is None:
            rollups = MemoryRollupStore()
        catalog = MemoryCatalogRepository(settings.catalog_table)
        return cls(
            settings=settings,
            catalog=cast(DynamoCatalogRepository, catalog),
            limiter=ApiCallLimiter(catalog),
            events=cast(DynamoEventStore, MemoryEventStore()),
            rollups=cast(DynamoRollupStore, rollups),
            queue=cast(SqsQueue, MemoryQueue(settings.usage_queue)),
            dead_letters=cast(SqsQueue, MemoryQueue(settings.usage_dlq)),
        )


_lock = threading.Lock()
_container: Container | None = None


def get_container() -> Container:
    """The process-wide container, built on first use."""
    global _container
    with _lock:
        if _container is None:
            _container = Container.from_settings(get_settings())
        return _container


def set_container(container: Container | None) -> None:
    """Replace (or with None, forget) the process-wide container."""
    global _container
    with _lock:
        _container = container
