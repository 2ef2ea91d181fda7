"""Lazily created boto3 clients (never at import time, so the emulator can start first)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from chalicelib.config import get_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

_lock = threading.Lock()
_clients: dict[str, Any] = {}

_BOTO_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)


def _client(service: str, factory: Callable[[], Any]) -> Any:
    with _lock:
        client = _clients.get(service)
        if client is None:
            client = factory()
            _clients[service] = client
        return client


def dynamodb() -> DynamoDBClient:
    """The shared DynamoDB client."""
    return _client(  # type: ignore[no-any-return]
        "dynamodb", lambda: boto3.client("dynamodb", region_name=get_settings().region, config=_BOTO_CONFIG)
    )


def sqs() -> SQSClient:
    """The shared SQS client."""
    return _client(  # type: ignore[no-any-return]
        "sqs", lambda: boto3.client("sqs", region_name=get_settings().region, config=_BOTO_CONFIG)
    )


def reset_clients() -> None:
    """Drop cached clients (tests and the local stack swap the backend)."""
    with _lock:
        _clients.clear()
