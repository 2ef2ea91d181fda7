"""The batching client: `record()` queues an event, sender threads post batches, retries keep the keys."""

from __future__ import annotations

import atexit
import email.utils
import http.client
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("usage_metering_client")

BATCH_PATH = "/v1/metering/events/batch"
MAX_BATCH_EVENTS = 100
# The service refuses batch bodies over 1 MiB; events are packed below this, leaving room for the envelope.
MAX_BATCH_BYTES = 1_000_000
MAX_KEY_LENGTH = 128
# Per-event answers that say "not stored, try again": the same key is sent again.
RETRYABLE_ITEM_CODES = frozenset({"service_unavailable", "internal_error"})
# Whole-request answers that are retried: timeouts, throttling and server errors.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "usage-metering-client/0.1.0"

Number = Decimal | int | float | str


class QueueFull(Exception):
    """The queue stayed full for `queue_full_timeout` seconds: this event was NOT recorded."""


class ClientClosed(RuntimeError):
    """`record()` after `close()`."""


@dataclass(frozen=True)
class Delivered:
    """An event the service acknowledged: stored by this send, or earlier under the same key (`duplicate`)."""

    idempotency_key: str
    event_id: str | None
    duplicate: bool


@dataclass(frozen=True)
class FailedEvent:
    """An event that will not be sent again: the service refused it for itself, or it was given up on."""

    idempotency_key: str
    event: dict[str, Any]
    code: str
    message: str
    http_status: int | None = None
    field: str | None = None


@dataclass(frozen=True)
class Stats:
    """Counters since the client was made; `pending` is recorded and not yet acknowledged or failed."""

    recorded: int
    accepted: int
    duplicate: int
    failed: int
    pending: int
    queue_full: int
    requests: int
    retried_events: int


@dataclass(slots=True)
class _Pending:
    seq: int
    key: str
    body: bytes
    event: dict[str, Any]
    queued_at: float
    first_sent: float | None = None


@dataclass(slots=True)
class _Waiter:
    target: int
    remaining: int


class _BadAnswer(Exception):
    """A 200 whose body is not one result per event: retried like a server error."""


def _quantity_text(quantity: Number) -> tuple[str, Decimal]:
    """The quantity as a plain-notation JSON number, and as the exact decimal it is."""
    if isinstance(quantity, bool) or not isinstance(quantity, Decimal | int | float | str):
        raise TypeError(f"quantity must be a Decimal, int, float or numeric string, not {type(quantity).__name__}")
    try:
        exact = Decimal(repr(quantity)) if isinstance(quantity, float) else Decimal(quantity)
    except InvalidOperation:
        raise ValueError(f"quantity is not a number: {quantity!r}") from None
    if not exact.is_finite():
        raise ValueError(f"quantity must be finite: {quantity!r}")
    return format(exact, "f"), exact


def _check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= ch <= "~" for ch in key):
        raise ValueError("idempotency_key must be 1-128 printable ASCII characters")
    return key


def _retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _error_of(answer: Any, status: int) -> tuple[str, str, str | None]:
    """Code, message and field of a native error envelope (or of an error item)."""
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        return str(error.get("code", f"http_{status}")), str(error.get("message", "")), error.get("field")
    return f"http_{status}", f"HTTP {status}", None


class _Connection:
    """One keep-alive HTTP(S) connection of a sender thread; reopened after any failure."""

    def __init__(self, base_url: str, api_key: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http or https URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self.path = parts.path.rstrip("/") + BATCH_PATH
        self._timeout = timeout
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._conn: http.client.HTTPConnection | None = None
        self.reused = False

    def post(self, body: bytes) -> tuple[int, float | None, Any]:
        """Status, Retry-After seconds and decoded JSON answer (None if not JSON); raises on network errors."""
        self.reused = self._conn is not None
        if self._conn is None:
            factory = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = factory(self._host, self._port, timeout=self._timeout)
        try:
            self._conn.request("POST", self.path, body=body, headers=self._headers)
            response = self._conn.getresponse()
            raw = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        return response.status, _retry_after(response.getheader("Retry-After")), answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Client:
    """Records usage events and sends them in batches from background threads.

    `record()` returns at once with the event's idempotency key. Sender threads post batches of up to
    `batch_size` events when that many are queued, when the oldest has waited `flush_interval` seconds, or
    when `flush()` or `close()` asks. Throttling (429, honouring `Retry-After`), 408, 5xx, network errors
    and per-event `service_unavailable` answers are retried with exponential backoff and jitter under the
    same keys, so nothing is counted twice; an event not acknowledged `give_up_after` seconds after its
    first send is failed (the service keeps keys 48 hours). Events the service refuses for themselves
    (validation, conflict, unknown line...) are never sent again: they go to `failed` and `on_error`.

    At most `max_queue_size` events are held unacknowledged. When that many are held, `record()` waits up
    to `queue_full_timeout` seconds for room and then raises `QueueFull` without recording the event: the
    caller decides (retry later, spill to disk, drop). Nothing is dropped silently.

    `close()` (also called at interpreter exit, and by `with Client(...)`) flushes for up to
    `close_timeout` seconds; what is still held after that is logged and returned by `unsent()`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        batch_size: int = MAX_BATCH_EVENTS,
        flush_interval: float = 1.0,
        max_queue_size: int = 10_000,
        queue_full_timeout: float = 1.0,
        threads: int = 1,
        timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        give_up_after: float = 24 * 3600.0,
        close_timeout: float = 10.0,
        key_prefix: str = "umc-",
        on_error: Callable[[FailedEvent], None] | None = None,
        on_delivered: Callable[[Delivered], None] | None = None,
        exit_handler: bool = True,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be 1-{MAX_BATCH_EVENTS}")
        if max_queue_size < batch_size:
            raise ValueError("max_queue_size must be at least batch_size")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        if len(key_prefix) > MAX_KEY_LENGTH - 32:
            raise ValueError("key_prefix leaves no room for the key")
        self.base_url = base_url
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue_size = max_queue_size
        self.queue_full_timeout = queue_full_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.give_up_after = give_up_after
        self.close_timeout = close_timeout
        self.key_prefix = key_prefix
        self.on_error = on_error
        self.on_delivered = on_delivered
        self.failed: list[FailedEvent] = []
        self._api_key = api_key
        self._timeout = timeout
        _Connection(base_url, api_key, timeout)  # checks the URL now rather than in a thread
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._unsettled: dict[int, _Pending] = {}
        self._waiters: list[_Waiter] = []
        self._urgent = 0
        self._seq = 0
        self._closing = False
        self._abort = threading.Event()
        self._counts = {"recorded": 0, "accepted": 0, "duplicate": 0, "failed": 0, "queue_full": 0}
        self._requests = 0
        self._retried = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"usage-metering-client-{n}", daemon=True) for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()
        self._exit_handler = exit_handler
        if exit_handler:
            atexit.register(self._at_exit)

    # -- the caller's side ------------------------------------------------------------------------

    def record(
        self,
        service_line_id: str,
        meter: str,
        quantity: Number,
        period_date: date | str | None = None,
        metadata: Mapping[str, str | int | float | bool] | None = None,
        *,
        idempotency_key: str | None = None,
        source: str | None = None,
    ) -> str:
        """Queue one event and return its idempotency key; never waits for the network.

        `period_date` defaults to today's UTC date at this call (not at the send). The key is made here
        (`key_prefix` + a random UUID) unless given, and every send of the event carries it. Raises
        `QueueFull` (the event is not recorded) when the queue stays full, `ClientClosed` after `close()`,
        and `TypeError`/`ValueError` for a quantity, key or metadata that cannot be sent.
        """
        key = _check_key(idempotency_key) if idempotency_key is not None else f"{self.key_prefix}{uuid.uuid4().hex}"
        text, exact = _quantity_text(quantity)
        if period_date is None:
            day = datetime.now(UTC).date().isoformat()
        elif isinstance(period_date, date):
            day = period_date.isoformat()
        else:
            day = period_date
        fields: dict[str, Any] = {
            "service_line_id": service_line_id,
            "meter": meter,
            "period_date": day,
            "idempotency_key": key,
        }
        if metadata is not None:
            fields["metadata"] = dict(metadata)
        if source is not None:
            fields["source"] = source
        encoded = json.dumps(fields, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        body = ('{"quantity":' + text + "," + encoded[1:]).encode()
        event = {**fields, "quantity": exact}
        with self._cond:
            if self._closing:
                raise ClientClosed("record() after close()")
            if len(self._unsettled) >= self.max_queue_size:
                deadline = time.monotonic() + self.queue_full_timeout
                while len(self._unsettled) >= self.max_queue_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closing:
                        self._counts["queue_full"] += 1
                        raise QueueFull(
                            f"{len(self._unsettled)} events are waiting to be acknowledged "
                            f"(max_queue_size {self.max_queue_size}); this event was not recorded"
                        )
                    self._cond.wait(remaining)
            self._seq += 1
            pending = _Pending(self._seq, key, body, event, time.monotonic())
            self._unsettled[pending.seq] = pending
            self._queue.append(pending)
            self._counts["recorded"] += 1
            if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
                self._cond.notify_all()
        return key

    def flush(self, timeout: float | None = None) -> bool:
        """Send now and wait until every event recorded before this call is acknowledged or failed.

        True when all are; False if `timeout` seconds passed first (they stay queued and are still sent).
        """
        with self._cond:
            if not self._unsettled:
                return True
            waiter = _Waiter(self._seq, len(self._unsettled))
            self._waiters.append(waiter)
            self._urgent += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: waiter.remaining <= 0 or self._abort.is_set(), timeout) and (
                    waiter.remaining <= 0
                )
            finally:
                self._waiters.remove(waiter)
                self._urgent -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Flush for up to `timeout` seconds (default `close_timeout`), then stop the sender threads.

        True if every recorded event was acknowledged or failed; otherwise the rest is logged and
        `unsent()` returns it. `record()` raises `ClientClosed` afterwards. Safe to call twice.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        done = self.flush(self.close_timeout if timeout is None else timeout)
        self._abort.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=1.0)
        if self._exit_handler:
            atexit.unregister(self._at_exit)
            self._exit_handler = False
        left = len(self.unsent())
        if left:
            log.warning("usage_metering_client closed with %d events not acknowledged", left)
        return done or not left

    def unsent(self) -> list[dict[str, Any]]:
        """Events recorded and neither acknowledged nor failed (for example after `close()` timed out)."""
        with self._cond:
            return [p.event for p in self._unsettled.values()]

    def stats(self) -> Stats:
        with self._cond:
            return Stats(
                recorded=self._counts["recorded"],
                accepted=self._counts["accepted"],
                duplicate=self._counts["duplicate"],
                failed=self._counts["failed"],
                pending=len(self._unsettled),
                queue_full=self._counts["queue_full"],
                requests=self._requests,
                retried_events=self._retried,
            )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _at_exit(self) -> None:
        self.close()

    # -- the sender threads -----------------------------------------------------------------------

    def _run(self) -> None:
        connection = _Connection(self.base_url, self._api_key, self._timeout)
        try:
            while (batch := self._take()) is not None:
                try:
                    self._deliver(connection, batch)
                except Exception:  # a bug must not kill the thread and strand the batch silently
                    log.exception("usage_metering_client: sending a batch failed unexpectedly")
                    self._fail(batch, "client_error", "the client failed to send this event", None)
        finally:
            connection.close()

    def _take(self) -> list[_Pending] | None:
        """The next batch when one is due; None when the client is closed and nothing is queued."""
        with self._cond:
            while True:
                if self._abort.is_set():
                    return None
                if self._queue:
                    now = time.monotonic()
                    age = now - self._queue[0].queued_at
                    full = len(self._queue) >= self.batch_size
                    if full or self._urgent or self._closing or age >= self.flush_interval:
                        return self._pop_batch()
                    self._cond.wait(self.flush_interval - age)
                elif self._closing:
                    return None
                else:
                    self._cond.wait()

    def _pop_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._queue and len(batch) < self.batch_size:
            size += len(self._queue[0].body) + 1
            if batch and size > MAX_BATCH_BYTES:
                break
            batch.append(self._queue.popleft())
        return batch

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with jitter: between half and all of base * 2^failures, capped."""
        ceiling = min(self.backoff_max, self.backoff_base * (2**failures))
        return random.uniform(ceiling / 2, ceiling)

    def _deliver(self, connection: _Connection, batch: list[_Pending]) -> None:
        """Send `batch` until every event in it is acknowledged or failed (or the client aborts)."""
        failures = 0
        while batch:
            if self._abort.is_set():
                return
            now = time.monotonic()
            expired = [p for p in batch if p.first_sent is not None and now - p.first_sent > self.give_up_after]
            if expired:
                message = f"not acknowledged within {self.give_up_after:g} s of its first send; given up"
                self._fail(expired, "given_up", message, None)
                batch = [p for p in batch if p.first_sent is None or now - p.first_sent <= self.give_up_after]
                if not batch:
                    return
            for pending in batch:
                if pending.first_sent is None:
                    pending.first_sent = now
            body = b'{"events":[' + b",".join(p.body for p in batch) + b"]}"
            with self._cond:
                self._requests += 1
            delay: float
            try:
                status, retry_after, answer = connection.post(body)
            except (OSError, http.client.HTTPException) as error:
                log.info("usage_metering_client: batch of %d not answered (%s); retrying", len(batch), error)
                # A keep-alive connection the server had closed: one immediate retry on a new one.
                delay = 0.0 if connection.reused and failures == 0 else self._backoff(failures)
            else:
                if status == 200:
                    try:
                        batch = self._apply(batch, answer)
                    except _BadAnswer:
                        log.warning("usage_metering_client: a 200 without one result per event; retrying")
                    if not batch:
                        return
                    delay = self._backoff(failures)
                elif status == 413 and len(batch) > 1:
                    half = len(batch) // 2
                    self._deliver(connection, batch[:half])
                    self._deliver(connection, batch[half:])
                    return
                elif status in RETRYABLE_STATUSES or status >= 500:
                    log.info("usage_metering_client: batch of %d answered %d; retrying", len(batch), status)
                    base = self._backoff(failures)
                    delay = retry_after + random.uniform(0, min(1.0, base)) if retry_after is not None else base
                else:
                    code, message, field = _error_of(answer, status)
                    self._fail(batch, code, message, status, field)
                    return
            failures += 1
            with self._cond:
                self._retried += len(batch)
            # A long Retry-After (a monthly quota) must not hold events past the moment they are given up.
            first = min(p.first_sent for p in batch if p.first_sent is not None)
            delay = min(delay, max(0.0, first + self.give_up_after - time.monotonic()) + 0.001)
            if self._abort.wait(delay):
                return

    def _apply(self, batch: list[_Pending], answer: Any) -> list[_Pending]:
        """Settle what a batch's answer settles; the events to send again."""
        results = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(batch):
            raise _BadAnswer
        again: list[_Pending] = []
        delivered: list[tuple[_Pending, Delivered]] = []
        refused: list[tuple[_Pending, str, str, str | None]] = []
        for index, (pending, result) in enumerate(zip(batch, results, strict=True)):
            if not isinstance(result, dict) or result.get("index", index) != index:
                raise _BadAnswer
            status = result.get("status")
            if status in ("accepted", "duplicate"):
                data = result.get("data")
                event_id = data.get("id") if isinstance(data, dict) else None
                delivered.append((pending, Delivered(pending.key, event_id, status == "duplicate")))
                continue
            code, message, field = _error_of({"error": result.get("error")}, 200)
            if status == "rejected" and code in RETRYABLE_ITEM_CODES:
                again.append(pending)
            else:
                refused.append((pending, code, message, field))
        with self._cond:
            for _, receipt in delivered:
                self._counts["duplicate" if receipt.duplicate else "accepted"] += 1
            self._settle([p for p, _ in delivered])
        if self.on_delivered is not None:
            for _, receipt in delivered:
                self._call(self.on_delivered, receipt)
        for pending, code, message, field in refused:
            self._fail([pending], code, message, 200, field)
        return again

    def _fail(
        self, batch: list[_Pending], code: str, message: str, http_status: int | None, field: str | None = None
    ) -> None:
        failures = [FailedEvent(p.key, p.event, code, message, http_status, field) for p in batch]
        with self._cond:
            live = [p.seq in self._unsettled for p in batch]
            self._settle(batch)
            failures = [f for f, alive in zip(failures, live, strict=True) if alive]
            self._counts["failed"] += len(failures)
            self.failed.extend(failures)
        for failure in failures:
            log.warning(
                "usage_metering_client: event %s refused, not retried: %s %s",
                failure.idempotency_key,
                failure.code,
                failure.message,
            )
            if self.on_error is not None:
                self._call(self.on_error, failure)

    def _settle(self, batch: list[_Pending]) -> None:
        """Forget acknowledged or failed events (the caller holds the lock) and wake who waits on them."""
        for pending in batch:
            if self._unsettled.pop(pending.seq, None) is None:
                continue
            for waiter in self._waiters:
                if pending.seq <= waiter.target:
                    waiter.remaining -= 1
        self._cond.notify_all()

    @staticmethod
    def _call(callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception:
            log.exception("usage_metering_client: a callback raised")
