"""Lazily created boto3 clients (never at import time, so the emulator can start first)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from chalicelib.config import get_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

_lock = threading.Lock()
_clients: dict[str, Any] = {}
_endpoint_url: str | None = None
_event_handlers: list[tuple[str, Callable[..., Any]]] = []

_BOTO_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
# An emulator ignores credentials, but botocore refuses to sign a request without any.
_LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}


def is_local_endpoint(url: str) -> bool:
    """Whether an endpoint URL points at this machine (loopback), e.g. the local stack's AWS endpoint."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _options() -> dict[str, Any]:
    """boto3.client's arguments: the region, retries, and the endpoint (with placeholder keys if local)."""
    options: dict[str, Any] = {"region_name": get_settings().region, "config": _BOTO_CONFIG}
    if _endpoint_url is not None:
        options["endpoint_url"] = _endpoint_url
        if is_local_endpoint(_endpoint_url):
            options.update(_LOCAL_CREDENTIALS)
    return options


def _with_events(client: Any) -> Any:
    for event_name, handler in _event_handlers:
        client.meta.events.register(event_name, handler)
    return client


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
        "dynamodb", lambda: _with_events(boto3.client("dynamodb", **_options()))
    )


def sqs() -> SQSClient:
    """The shared SQS client."""
    return _client(  # type: ignore[no-any-return]
        "sqs", lambda: _with_events(boto3.client("sqs", **_options()))
    )


def use_endpoint(url: str | None) -> None:
    """Send every AWS request to `url` (e.g. the local stack's AWS endpoint), or with None to AWS itself.

    On a loopback endpoint the clients sign with placeholder credentials, so no AWS account is needed.
    """
    global _endpoint_url
    with _lock:
        _endpoint_url = url.rstrip("/") if url else None
        _clients.clear()


def endpoint() -> str | None:
    """The endpoint set by `use_endpoint`, if any."""
    return _endpoint_url


def on_event(event_name: str, handler: Callable[..., Any]) -> None:
    """Register a botocore event handler (e.g. ``after-call.dynamodb``) on the shared clients, now and later."""
    with _lock:
        _event_handlers.append((event_name, handler))
        for client in _clients.values():
            client.meta.events.register(event_name, handler)


def clear_events() -> None:
    """Remove every handler registered with `on_event`."""
    with _lock:
        for event_name, handler in _event_handlers:
            for client in _clients.values():
                client.meta.events.unregister(event_name, handler)
        _event_handlers.clear()


def reset_clients() -> None:
    """Drop cached clients (tests and the local stack swap the backend)."""
    with _lock:
        _clients.clear()
