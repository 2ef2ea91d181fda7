"""A client for the usage-metering service that batches for you (standard library only)."""

from __future__ import annotations

from usage_metering_client._client import (
    MAX_BATCH_EVENTS,
    Client,
    ClientClosed,
    Delivered,
    FailedEvent,
    QueueFull,
    Stats,
)

__all__ = ["MAX_BATCH_EVENTS", "Client", "ClientClosed", "Delivered", "FailedEvent", "QueueFull", "Stats"]
__version__ = "0.1.0"
