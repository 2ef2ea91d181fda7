"""The local stack as a subprocess, and concurrent HTTP clients that post to it."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from tools.bench.common import CLIENT_THREADS, DEMO_KEY, LINE, ROOT


@contextmanager
def local_stack(extra_args: Sequence[str] = ()) -> Iterator[StackInfo]:
    """`python -m chalicelib.local.stack --port 0` as a subprocess; yields where it listens, stops it with Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_DATA_DIR", "FRESH", "DEMO_HISTORY_DAYS")}
    env["DEMO_API_KEY"] = DEMO_KEY
    proc = subprocess.Popen(
        [sys.executable, "-m", "chalicelib.local.stack", "--port", "0", *extra_args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stdout = proc.stdout
    assert stdout is not None
    tail: deque[str] = deque(maxlen=100)
    address: list[str] = []
    aws: list[str] = []
    ready = threading.Event()

    def read() -> None:  # keep reading, or a full pipe would block the server
        for line in stdout:
            tail.append(line)
            if line.startswith("usage-metering local stack: "):
                address.append(line.split(": ", 1)[1].strip())
            if line.strip().startswith("aws endpoint: "):
                aws.append(line.split()[2])
            if line.strip().startswith("ready"):
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, name="stack-stdout", daemon=True)
    reader.start()
    try:
        if not ready.wait(120) or not address or proc.poll() is not None:
            raise RuntimeError("the local stack did not start:\n" + "".join(tail))
        url = urlsplit(address[0])
        yield StackInfo(url.hostname or "127.0.0.1", url.port or 80, proc.pid, aws[0] if aws else "")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)


@dataclass(frozen=True)
class StackInfo:
    """A running local stack: where it listens, its process, its AWS endpoint."""

    host: str
    port: int
    pid: int
    aws_url: str

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __iter__(self) -> Iterator[Any]:  # `host, port = stack`
        return iter((self.host, self.port))


@dataclass(frozen=True)
class Answer:
    """What one ingest response says: events newly stored, events answered as replays, their quantity."""

    accepted: int
    replayed: int
    quantity: Decimal


def judge_single(status: int, data: bytes) -> Answer | None:
    if status == 201:
        return Answer(1, 0, Decimal(str(json.loads(data, parse_float=Decimal)["data"]["quantity"])))
    return Answer(0, 1, Decimal(0)) if status == 200 else None


def judge_batch(status: int, data: bytes) -> Answer | None:
    if status != 200:
        return None
    results = json.loads(data, parse_float=Decimal)["data"]
    if any(r["status"] not in ("accepted", "duplicate") for r in results):
        return None
    accepted = [r for r in results if r["status"] == "accepted"]
    total = sum((Decimal(str(r["data"]["quantity"])) for r in accepted), Decimal(0))
    return Answer(len(accepted), len(results) - len(accepted), total)


@dataclass
class HttpRun:
    requests: int
    events: int  # newly stored
    replayed: int  # answered as replays although every idempotency key was new
    replayed_requests: int
    quantity: Decimal
    seconds: float
    latencies: list[float]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


def post_concurrently(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    judge: Callable[[int, bytes], Answer | None],
    budget_s: float = math.inf,
    key: str = DEMO_KEY,
) -> HttpRun:
    """POST the bodies from CLIENT_THREADS threads, each over one keep-alive connection.

    A thread sends no new request once budget_s has passed (requests in flight finish).
    """
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    barrier = threading.Barrier(CLIENT_THREADS + 1)
    latencies: list[float] = []
    answers: list[Answer] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(share: Sequence[bytes]) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=300)
        try:
            conn.connect()
            barrier.wait()
            deadline = time.perf_counter() + budget_s
            for body in share:
                started = time.perf_counter()
                if started > deadline:
                    break
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                took = time.perf_counter() - started
                answer = judge(response.status, data)
                if answer is None:
                    raise RuntimeError(f"POST {path}: {response.status} {data[:300]!r}")
                with lock:
                    latencies.append(took)
                    answers.append(answer)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            conn.close()

    threads = [
        threading.Thread(target=worker, args=(bodies[i::CLIENT_THREADS],), name=f"client-{i}")
        for i in range(CLIENT_THREADS)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"an HTTP client failed: {errors[0]!r}")
    return HttpRun(
        requests=len(answers),
        events=sum(a.accepted for a in answers),
        replayed=sum(a.replayed for a in answers),
        replayed_requests=sum(1 for a in answers if a.replayed),
        quantity=sum((a.quantity for a in answers), Decimal(0)),
        seconds=seconds,
        latencies=latencies,
    )


def get_json(host: str, port: int, path: str) -> Any:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {DEMO_KEY}"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return json.loads(body, parse_float=Decimal)
    finally:
        conn.close()


def rolled_up_quantity(summary: Mapping[str, Any], line: str | None = None) -> Decimal:
    total = Decimal(0)
    for row in summary["data"]["by_service_line"]:
        if line is None or row["service_line_id"] == line:
            total += sum((Decimal(str(m["quantity"])) for m in row["meters"]), Decimal(0))
    return total


def wait_rolled_up(host: str, port: int, expected: Decimal, timeout: float = 240.0) -> float:
    """Seconds until the local stack's aggregator has rolled every accepted event up (checked via the summary)."""
    today = dt.datetime.now(dt.UTC).date()
    path = (
        f"/v1/usage/summary?service_line_id={LINE}"
        f"&from={today - dt.timedelta(days=1)}&to={today + dt.timedelta(days=1)}"
    )
    started = time.perf_counter()
    while True:
        seen = rolled_up_quantity(get_json(host, port, path), LINE)
        if seen == expected:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"the aggregator rolled up {seen} of {expected} after {timeout:.0f} s")
        time.sleep(0.5)
