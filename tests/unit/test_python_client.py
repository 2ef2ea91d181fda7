"""The Python client's batching, retries, flush, queue policy and exit handling, against a fake service
on loopback that stores events by idempotency key as the real batch endpoint does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from usage_metering_client import Client, ClientClosed, Delivered, FailedEvent, QueueFull

LINE = "LIN-26-084729"
KEY = "mk_test_key"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "flush_interval": 0.05, "exit_handler": False}

# What the fake answers a request with; None is the normal answer.
Reply = tuple[int, dict[str, str], Any] | str | None


@dataclass
class FakeService:
    """POST /v1/metering/events/batch by the real rules that matter here: one result per event, in order;
    a key already stored is a `duplicate`; `refuse` rejects a key for itself; `unavailable` answers a key
    `service_unavailable` that many times. `script` overrides whole answers, one per request."""

    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    script: deque[Reply] = field(default_factory=deque)
    refuse: dict[str, tuple[str, str]] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)
    gate: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def __post_init__(self) -> None:
        self.gate.set()

    def answer(self, events: list[dict[str, Any]]) -> tuple[int, dict[str, str], Any] | str:
        with self.lock:
            self.batches.append(events)
            self.times.append(time.monotonic())
            scripted = self.script.popleft() if self.script else None
            if scripted is not None and scripted != "store_then_drop":
                return scripted
            results = []
            for index, event in enumerate(events):
                key = event["idempotency_key"]
                if key in self.refuse:
                    code, message = self.refuse[key]
                    results.append({"index": index, "status": "rejected", "error": {"code": code, "message": message}})
                elif self.unavailable.get(key, 0) > 0:
                    self.unavailable[key] -= 1
                    error = {"code": "service_unavailable", "message": "retry"}
                    results.append({"index": index, "status": "rejected", "error": error})
                elif key in self.stored:
                    results.append({"index": index, "status": "duplicate", "data": {"id": f"USAGE-{key}"}})
                else:
                    self.stored[key] = event
                    results.append({"index": index, "status": "accepted", "data": {"id": f"USAGE-{key}"}})
            if scripted == "store_then_drop":
                return "drop"
            return 200, {}, {"data": results}

    def all_sent_keys(self) -> list[str]:
        with self.lock:
            return [e["idempotency_key"] for batch in self.batches for e in batch]


def serve(service: FakeService) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            service.gate.wait()
            assert self.path == "/stage/v1/metering/events/batch", self.path
            with service.lock:
                service.headers.append(dict(self.headers))
            reply = service.answer(json.loads(body, parse_float=Decimal)["events"])
            if reply == "drop":
                self.close_connection = True
                return
            assert not isinstance(reply, str)
            status, headers, payload = reply
            raw = json.dumps(payload, default=str).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()  # its shutdown waits a poll
    service.url = f"http://127.0.0.1:{server.server_address[1]}/stage"
    return server


@pytest.fixture
def service() -> Iterator[FakeService]:
    fake = FakeService()
    server = serve(fake)
    try:
        yield fake
    finally:
        fake.gate.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def make_client(service: FakeService) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(**options: Any) -> Client:
        client = Client(service.url, KEY, **{**FAST, **options})
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=2)


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def record_many(client: Client, count: int, prefix: str = "") -> list[str]:
    return [client.record(LINE, "talent.hours", Decimal(i) / 4, metadata={"n": f"{prefix}{i}"}) for i in range(count)]


# -- batching ------------------------------------------------------------------------------------


def test_record_returns_a_key_at_once_and_flush_delivers_every_event_once_in_batches_of_100(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    service.gate.clear()  # the service does not answer yet
    client = make_client(flush_interval=60)
    keys = record_many(client, 250)
    assert len(set(keys)) == 250 and all(k.startswith("umc-") for k in keys)
    assert client.stats().pending == 250  # recorded while nothing was answered
    service.gate.set()
    assert client.flush(timeout=10)
    assert sorted(service.stored) == sorted(keys)
    assert [len(b) for b in service.batches] == [100, 100, 50]
    stats = client.stats()
    assert (stats.recorded, stats.accepted, stats.pending, stats.failed) == (250, 250, 0, 0)
    assert service.headers[0]["Authorization"] == f"Bearer {KEY}"


def test_a_full_batch_is_sent_without_waiting_for_the_interval(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    client = make_client(flush_interval=3600)
    record_many(client, 100)
    wait_until(lambda: len(service.stored) == 100)
    assert [len(b) for b in service.batches] == [100]


def test_a_partial_batch_is_sent_once_its_oldest_event_has_waited_the_interval(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    client = make_client(flush_interval=0.2)
    keys = record_many(client, 3)
    wait_until(lambda: len(service.stored) == 3)
    assert sorted(service.stored) == sorted(keys)


def test_the_event_is_sent_as_recorded_with_exact_decimals_and_the_date_of_the_record_call(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    client = make_client()
    a = client.record(LINE, "talent.hours", Decimal("0.000000001"), metadata={"talent_id": "SCR-1", "ok": True})
    b = client.record(LINE, "agent.runs", 3, period_date=date(2026, 11, 2), source="gateway")
    c = client.record(LINE, "talent.hours", 0.1, period_date="2026-11-03", idempotency_key="my-own-key")
    d = client.record(LINE, "talent.hours", "12.50")
    assert client.flush(timeout=5)
    today = datetime.now(UTC).date().isoformat()
    assert c == "my-own-key"
    assert service.stored[a] == {
        "quantity": Decimal("0.000000001"),
        "service_line_id": LINE,
        "meter": "talent.hours",
        "period_date": today,
        "idempotency_key": a,
        "metadata": {"talent_id": "SCR-1", "ok": True},
    }
    assert service.stored[b]["quantity"] == 3 and service.stored[b]["period_date"] == "2026-11-02"
    assert service.stored[b]["source"] == "gateway"
    assert service.stored[c]["quantity"] == Decimal("0.1") and service.stored[c]["period_date"] == "2026-11-03"
    assert service.stored[d]["quantity"] == Decimal("12.50")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "abc", True, None])
def test_a_quantity_that_cannot_be_sent_is_refused_by_record_itself(
    bad: Any, make_client: Callable[..., Client]
) -> None:
    client = make_client()
    with pytest.raises((TypeError, ValueError)):
        client.record(LINE, "talent.hours", bad)
    with pytest.raises(ValueError):
        client.record(LINE, "talent.hours", 1, idempotency_key="é")
    with pytest.raises(TypeError):
        client.record(LINE, "talent.hours", 1, metadata={"x": object()})  # type: ignore[dict-item]
    assert client.stats().recorded == 0


# -- retries ---------------------------------------------------------------------------------------


def test_429_is_retried_after_retry_after_with_the_same_keys(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    limited = {"error": {"code": "rate_limited", "message": "slow down"}}
    service.script.append((429, {"Retry-After": "1"}, limited))
    client = make_client()
    keys = record_many(client, 5)
    assert client.flush(timeout=10)
    assert len(service.batches) == 2
    assert [e["idempotency_key"] for e in service.batches[0]] == [e["idempotency_key"] for e in service.batches[1]]
    assert service.times[1] - service.times[0] >= 1.0  # Retry-After was honoured, not the 10 ms backoff
    assert sorted(service.stored) == sorted(keys)


def test_server_errors_and_lost_answers_are_retried_and_nothing_is_counted_twice(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    unavailable = {"error": {"code": "service_unavailable", "message": "retry"}}
    service.script.extend([(503, {}, unavailable), (500, {}, "not json"), "drop", "store_then_drop", (502, {}, None)])
    delivered: list[Delivered] = []
    client = make_client(on_delivered=delivered.append)
    keys = record_many(client, 40)
    assert client.flush(timeout=10)
    assert len(service.batches) == 6  # five failed attempts, then the answer
    assert all(len(b) == 40 for b in service.batches)
    assert sorted(service.stored) == sorted(keys)  # each stored once, by the fourth attempt
    # The answer to the attempt that stored them was lost: the retry finds them stored.
    assert {d.idempotency_key for d in delivered} == set(keys) and all(d.duplicate for d in delivered)
    assert client.failed == [] and client.stats().duplicate == 40


def test_backoff_grows_exponentially(service: FakeService, make_client: Callable[..., Client]) -> None:
    service.script.extend([(503, {}, None)] * 4)
    client = make_client(backoff_base=0.1, backoff_max=10)
    record_many(client, 1)
    assert client.flush(timeout=20)
    gaps = [b - a for a, b in zip(service.times, service.times[1:], strict=False)]
    # attempt n waits between half and all of 0.1 * 2^n
    for n, gap in enumerate(gaps[:4]):
        assert 0.1 * 2**n / 2 <= gap, gaps


def test_an_event_the_service_refuses_is_reported_once_and_never_sent_again(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    errors: list[FailedEvent] = []
    client = make_client(on_error=errors.append)
    keys = record_many(client, 10)
    service.refuse[keys[3]] = ("service_line_inactive", "paused")
    service.refuse[keys[7]] = ("idempotency_conflict", "another payload")
    service.unavailable[keys[5]] = 2  # per-event 503: sent again
    assert client.flush(timeout=10)
    assert errors == client.failed
    assert {(f.idempotency_key, f.code) for f in errors} == {
        (keys[3], "service_line_inactive"),
        (keys[7], "idempotency_conflict"),
    }
    assert errors[0].event["metadata"] == {"n": "3"} or errors[1].event["metadata"] == {"n": "3"}
    assert sorted(service.stored) == sorted(set(keys) - {keys[3], keys[7]})
    sent = service.all_sent_keys()
    assert sent.count(keys[3]) == 1 and sent.count(keys[7]) == 1 and sent.count(keys[5]) == 3
    stats = client.stats()
    assert (stats.accepted, stats.failed, stats.pending) == (8, 2, 0)


def test_a_refused_request_fails_its_events_without_retrying(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    service.script.append((401, {}, {"error": {"code": "unauthorized", "message": "A valid API key is required."}}))
    client = make_client()
    keys = record_many(client, 3)
    assert client.flush(timeout=5)
    assert [(f.idempotency_key, f.code, f.http_status) for f in client.failed] == [
        (k, "unauthorized", 401) for k in keys
    ]
    assert len(service.batches) == 1 and service.stored == {}


def test_a_batch_too_large_for_the_service_is_split(service: FakeService, make_client: Callable[..., Client]) -> None:
    service.script.append((413, {}, {"error": {"code": "payload_too_large", "message": "too large"}}))
    client = make_client()
    keys = record_many(client, 10)
    assert client.flush(timeout=5)
    assert [len(b) for b in service.batches] == [10, 5, 5]
    assert sorted(service.stored) == sorted(keys)


def test_an_event_unacknowledged_past_give_up_after_fails_instead_of_being_retried_forever(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    service.script.extend([(503, {}, None)] * 1000)
    client = make_client(give_up_after=0.3)
    keys = record_many(client, 2)
    assert client.flush(timeout=10)
    assert [(f.idempotency_key, f.code) for f in client.failed] == [(k, "given_up") for k in keys]


def test_a_retry_after_longer_than_give_up_after_does_not_hold_events_past_it(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    quota = {"error": {"code": "rate_limited", "message": "monthly API calls used"}}
    service.script.append((429, {"Retry-After": "86400"}, quota))
    client = make_client(give_up_after=0.5)
    keys = record_many(client, 2)
    assert client.flush(timeout=10)  # not a day
    assert [(f.idempotency_key, f.code) for f in client.failed] == [(k, "given_up") for k in keys]
    assert len(service.batches) == 1


# -- flush, queue, close, exit ----------------------------------------------------------------------


def test_flush_waits_for_what_was_recorded_before_it_and_times_out_while_the_service_is_down(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    service.gate.clear()
    client = make_client()
    record_many(client, 5)
    assert client.flush(timeout=0.3) is False
    assert client.stats().pending == 5
    service.gate.set()
    assert client.flush(timeout=10) is True
    assert len(service.stored) == 5


def test_a_full_queue_blocks_record_then_raises_queue_full_and_records_nothing(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    service.script.extend([(503, {}, None)] * 1000)  # down for long
    client = make_client(max_queue_size=10, batch_size=5, queue_full_timeout=0.2)
    keys = record_many(client, 10)
    started = time.monotonic()
    with pytest.raises(QueueFull):
        client.record(LINE, "talent.hours", 1)
    assert time.monotonic() - started >= 0.2  # it waited for room first
    assert client.stats().queue_full == 1 and client.stats().recorded == 10
    service.script.clear()  # the service is back: room frees up
    assert client.flush(timeout=10)
    more = client.record(LINE, "talent.hours", 1)
    assert client.flush(timeout=10)
    assert sorted(service.stored) == sorted([*keys, more])


def test_room_freed_while_record_waits_lets_it_record(service: FakeService, make_client: Callable[..., Client]) -> None:
    service.gate.clear()
    client = make_client(max_queue_size=5, batch_size=5, queue_full_timeout=10)
    record_many(client, 5)
    threading.Timer(0.3, service.gate.set).start()
    key = client.record(LINE, "talent.hours", 1)  # waits until the first five are acknowledged
    assert client.flush(timeout=10)
    assert key in service.stored and len(service.stored) == 6


def test_close_flushes_and_then_refuses_records(service: FakeService, make_client: Callable[..., Client]) -> None:
    client = make_client(flush_interval=3600)
    keys = record_many(client, 7)
    assert client.close(timeout=5)
    assert sorted(service.stored) == sorted(keys)
    with pytest.raises(ClientClosed):
        client.record(LINE, "talent.hours", 1)


def test_close_that_times_out_returns_what_was_not_acknowledged(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    service.script.extend([(503, {}, None)] * 1000)
    client = make_client()
    keys = record_many(client, 3)
    assert client.close(timeout=0.3) is False
    assert sorted(e["idempotency_key"] for e in client.unsent()) == sorted(keys)


def test_several_sender_threads_deliver_everything_once(
    service: FakeService, make_client: Callable[..., Client]
) -> None:
    client = make_client(threads=4)
    keys: list[str] = []
    writers = [threading.Thread(target=lambda p=p: keys.extend(record_many(client, 500, f"{p}-"))) for p in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert client.flush(timeout=30)
    assert sorted(service.stored) == sorted(keys) and len(keys) == 2000
    assert all(len(b) <= 100 for b in service.batches)


def test_events_recorded_just_before_the_interpreter_exits_are_sent(service: FakeService, tmp_path: Path) -> None:
    script = tmp_path / "exits.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from usage_metering_client import Client
            client = Client({service.url!r}, "k", flush_interval=3600)
            for i in range(150):
                client.record("{LINE}", "talent.hours", i)
            print("recorded")  # no flush, no close: the exit hook sends them
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(service.stored) == 150
    assert sorted(e["quantity"] for e in service.stored.values()) == list(range(150))
