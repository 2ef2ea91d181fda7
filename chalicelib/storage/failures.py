"""Translating botocore's errors into the store's own (chalicelib/domain/store.py) at the adapters' edge."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.domain.store import StoreConflict, StoreError, StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")

# Codes AWS answers when the same request may succeed later.
UNAVAILABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestThrottled",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "InternalServerError",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "KMS.ThrottlingException",
    }
)
CONFLICT_CODES = frozenset({"ConditionalCheckFailedException", "TransactionCanceledException"})


def store_error(error: ClientError | BotoCoreError) -> StoreError:
    """The store's own exception for a botocore error."""
    if isinstance(error, BotoCoreError):  # no answer at all: the connection, the credentials, a timeout
        return StoreUnavailable(str(error), type(error).__name__)
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in CONFLICT_CODES:
        return StoreConflict(str(error), code)
    if code in UNAVAILABLE_CODES or status >= 500:
        return StoreUnavailable(str(error), code)
    return StoreError(str(error), code)


def translated(function: Callable[P, T]) -> Callable[P, T]:
    """A method whose botocore errors come out as the store's own (the original is the `__cause__`)."""

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except (ClientError, BotoCoreError) as error:
            raise store_error(error) from error

    return call


def translated_iter(function: Callable[P, Iterator[T]]) -> Callable[P, Iterator[T]]:
    """`translated` for a generator method: errors raised while iterating are translated too."""

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        try:
            yield from function(*args, **kwargs)
        except (ClientError, BotoCoreError) as error:
            raise store_error(error) from error

    return call
