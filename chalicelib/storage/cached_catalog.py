"""A short-lived, per-container cache of the catalog items every request reads: API keys and service lines.

The request path reads the caller's API key and, to ingest, the event's service line. Each read is a
round trip the caller waits for; both change rarely. So a container keeps what it read for
`catalog_ttl()` seconds (30 by default, `METERING_CATALOG_TTL_SECONDS`; 0 turns the cache off):

- a revoked key keeps working, and a paused line keeps taking usage, in a container that read it
  before, for at most that long; a resumed line is refused as paused for at most that long;
- a change made through the same container (the API's pause and resume, the CLI's revoke in-process)
  forgets the item at once;
- only items that exist are kept: an unknown key or line is read again every time, so a key or line
  just created elsewhere works at once, and guessed keys cannot fill the cache;
- at most `MAX_ENTRIES` items; past that the cache starts over.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_TTL_SECONDS = 30.0
MAX_ENTRIES = 10_000


def catalog_ttl() -> float:
    """Seconds a container trusts an API key or service line it read (the environment's, or 30)."""
    raw = os.environ.get("METERING_CATALOG_TTL_SECONDS")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_TTL_SECONDS
    except ValueError:
        return DEFAULT_TTL_SECONDS


class TtlCache(Generic[T]):
    """Values by key for `ttl` seconds of `clock` (monotonic by default); None is never kept."""

    def __init__(self, ttl: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = catalog_ttl() if ttl is None else ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, T]] = {}

    def get(self, key: str, load: Callable[[], T | None]) -> T | None:
        """The value kept for `key` if younger than the TTL, else `load()` (kept unless None)."""
        now = self.clock()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = load()
        if value is not None and self.ttl > 0:
            with self._lock:
                if len(self._items) >= MAX_ENTRIES:
                    self._items.clear()
                self._items[key] = (now, value)
        return value

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
