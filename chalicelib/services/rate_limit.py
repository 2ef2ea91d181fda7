"""The plan's monthly API-call limit (`429 rate_limited`), without a DynamoDB write per request.

Each process counts calls per organization in memory and adds them to the
organization's monthly counter at most every 25 calls or 5 seconds (one
UpdateItem that also returns the total). A request is refused when the last
known total plus the calls not yet flushed reaches the plan's limit. Across
many concurrent Lambda containers the limit can be overshot by at most what
each has not flushed yet (under 25 calls each); plans without a limit are
never counted.

Every counted response carries the month's quota in the de-facto headers
(`X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`: the Unix
time the count starts again, the next month's first second in UTC); a 429 adds
`Retry-After`, the seconds until then. Remaining is as this process knows it
(see above), so it may be a little high under many concurrent containers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services.ports import CatalogRepository

FLUSH_EVERY_CALLS = 25
FLUSH_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class Quota:
    """An organization's monthly API calls as of one request."""

    limit: int
    used: int
    resets_at: datetime  # the first second of the next month, UTC

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def headers(self) -> dict[str, str]:
        """The rate-limit headers every counted response carries."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(int(self.resets_at.timestamp())),
        }


class QuotaExhausted(MeteringError):
    """429 rate_limited, with the headers that say when to come back."""

    def __init__(self, quota: Quota, month: str, at: datetime) -> None:
        super().__init__(
            ErrorCode.RATE_LIMITED,
            f"The organization has used its {quota.limit} API calls for {month}; "
            f"calls are allowed again from {quota.resets_at.strftime('%Y-%m-%dT%H:%M:%SZ')}.",
            details={"limit": "api_calls_monthly", "max": quota.limit, "month": month},
        )
        wait = (quota.resets_at - at.astimezone(UTC)).total_seconds()
        self.response_headers = {**quota.headers(), "Retry-After": str(max(1, math.ceil(wait)))}


def next_month_start(at: datetime) -> datetime:
    """The first instant of the UTC calendar month after `at`."""
    first = at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


@dataclass
class _Counter:
    month: str
    known_total: int = 0
    unflushed: int = 0
    last_flush: float = 0.0


class ApiCallLimiter:
    """Counts and limits API calls per organization and calendar month (UTC)."""

    def __init__(self, catalog: CatalogRepository, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.catalog = catalog
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._counters: dict[str, _Counter] = {}

    def _limit(self, organization_id: str) -> int | None:
        """The plan's monthly limit (the catalog caches organizations and plans for a minute)."""
        plan = self.catalog.get_organization_plan(organization_id)
        return plan.limits.api_calls_monthly if plan else None

    def check(self, organization_id: str, at: datetime) -> Quota | None:
        """Count one call and return the month's quota (None without a limit), or raise 429 when it is used up."""
        limit = self._limit(organization_id)
        if limit is None:
            return None
        month = at.astimezone(UTC).strftime("%Y-%m")
        with self._lock:
            counter = self._counters.get(organization_id)
        if counter is None or counter.month != month:
            total = self.catalog.get_api_calls(organization_id, month)
            with self._lock:
                counter = self._counters[organization_id] = _Counter(month, total, 0, self.monotonic())
        with self._lock:
            if counter.known_total + counter.unflushed >= limit:
                raise QuotaExhausted(Quota(limit, limit, next_month_start(at)), month, at)
            counter.unflushed += 1
            used = counter.known_total + counter.unflushed
            flush = 0
            if counter.unflushed >= FLUSH_EVERY_CALLS or self.monotonic() - counter.last_flush >= FLUSH_EVERY_SECONDS:
                flush, counter.unflushed, counter.last_flush = counter.unflushed, 0, self.monotonic()
                counter.known_total += flush
        if flush:
            total = self.catalog.add_api_calls(organization_id, month, flush)
            with self._lock:
                counter.known_total = max(counter.known_total, total)
                used = max(used, total)
        return Quota(limit, min(used, limit), next_month_start(at))
