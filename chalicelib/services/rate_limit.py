"""The plan's monthly API-call limit (`429 rate_limited`), without a DynamoDB write per request.

Each process counts calls per organization in memory and adds them to the
organization's monthly counter at most every 25 calls or 5 seconds (one
UpdateItem that also returns the total). A request is refused when the last
known total plus the calls not yet flushed reaches the plan's limit. Across
many concurrent Lambda containers the limit can be overshot by at most what
each has not flushed yet (under 25 calls each); plans without a limit are
never counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.storage.catalog_repo import DynamoCatalogRepository

FLUSH_EVERY_CALLS = 25
FLUSH_EVERY_SECONDS = 5.0


@dataclass
class _Counter:
    month: str
    known_total: int = 0
    unflushed: int = 0
    last_flush: float = 0.0


class ApiCallLimiter:
    """Counts and limits API calls per organization and calendar month (UTC)."""

    def __init__(self, catalog: DynamoCatalogRepository, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.catalog = catalog
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._counters: dict[str, _Counter] = {}

    def _limit(self, organization_id: str) -> int | None:
        """The plan's monthly limit (the catalog caches organizations and plans for a minute)."""
        plan = self.catalog.get_organization_plan(organization_id)
        return plan.limits.api_calls_monthly if plan else None

    def check(self, organization_id: str, at: datetime) -> None:
        """Count one call, or raise 429 when the month's calls are used up."""
        limit = self._limit(organization_id)
        if limit is None:
            return
        month = at.astimezone(UTC).strftime("%Y-%m")
        with self._lock:
            counter = self._counters.get(organization_id)
        if counter is None or counter.month != month:
            total = self.catalog.get_api_calls(organization_id, month)
            with self._lock:
                counter = self._counters[organization_id] = _Counter(month, total, 0, self.monotonic())
        with self._lock:
            if counter.known_total + counter.unflushed >= limit:
                raise _limited(limit, month)
            counter.unflushed += 1
            flush = 0
            if counter.unflushed >= FLUSH_EVERY_CALLS or self.monotonic() - counter.last_flush >= FLUSH_EVERY_SECONDS:
                flush, counter.unflushed, counter.last_flush = counter.unflushed, 0, self.monotonic()
                counter.known_total += flush
        if flush:
            total = self.catalog.add_api_calls(organization_id, month, flush)
            with self._lock:
                counter.known_total = max(counter.known_total, total)


def _limited(limit: int, month: str) -> MeteringError:
    return MeteringError(
        ErrorCode.RATE_LIMITED,
        f"The organization has used its {limit} API calls for {month}.",
        details={"limit": "api_calls_monthly", "max": limit, "month": month},
    )
