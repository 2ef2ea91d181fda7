"""`make bench`: the benchmark suite. Prints one table and writes docs/benchmarks.md.

Every number comes from this run (nothing here is a recorded result):
1. ingest throughput over HTTP against the real local stack (a subprocess), next to
   the emulator's raw rate of conditional PutItem calls;
2. AWS cost per event, counted from the calls the code really makes (botocore hooks),
   for single and batch ingestion, each including the aggregation;
3. the DynamoDB items read and the latency of a 30-day usage summary at 1,000 and
   100,000 events;
4. the cold start (importing app.py and boto3 in a fresh interpreter) and the size
   of the Lambda package.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError

from chalicelib.config import Settings
from chalicelib.container import Container, set_container
from chalicelib.domain.models import ServiceLine
from chalicelib.domain.usage import UsageDraft
from chalicelib.local.emulator import Emulator
from chalicelib.local.runtime import make_context, sqs_event
from chalicelib.services import catalog_admin
from chalicelib.services.ingest import ingest
from chalicelib.storage import clients, keys
from chalicelib.storage.catalog_repo import DynamoCatalogRepository
from chalicelib.storage.events_repo import DynamoEventStore
from chalicelib.storage.rollups_repo import DynamoRollupStore
from chalicelib.storage.schema import TABLES, IndexSpec, TableSpec

if TYPE_CHECKING:
    from chalice.app import Chalice
    from mypy_boto3_dynamodb import DynamoDBClient

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PACKAGE_ZIP = ROOT / "build" / "package-dev" / "deployment.zip"

DEMO_KEY = "mk_demo_ORG2609050_full_access_0001"
ORG = "ORG-26-090500"
LINE = "LIN-26-084729"
METER = "talent.hours"
# The demo organization's two service lines and the meters each permits.
SUMMARY_LINES: dict[str, tuple[str, ...]] = {
    "LIN-26-084729": ("talent.hours", "talent.days"),
    "LIN-26-091100": ("agent.runs", "agent.tokens", "agent.run_seconds"),
}
SUMMARY_DAYS = 30

# Bounded work, so the whole suite runs in a few minutes on 2 cores.
CLIENT_THREADS = 4
HTTP_SINGLE_REQUESTS = 800
HTTP_SINGLE_SECONDS = 20.0  # whichever comes first
HTTP_BATCH_REQUESTS = 60
HTTP_BATCH_SECONDS = 30.0
BATCH_SIZE = 100
RAW_PUTS = 800
RAW_ITEM_BYTES = 600
COST_SINGLE_EVENTS = 300
COST_BATCH_EVENTS = 1000
SQS_BATCH = 10
SUMMARY_SIZES = (1_000, 100_000)
SUMMARY_REQUESTS = 20
COLD_RUNS = 5

# On-demand prices, US East (docs/benchmarks.md states them).
PRICE_WRU = 0.625  # $ per million write request units
PRICE_RRU = 0.125  # $ per million read request units
PRICE_SQS = 0.40  # $ per million requests (64 KB chunks)
PRICE_LAMBDA = 0.20  # $ per million invocations (GB-seconds left out)
WRU_TARGET = 2.5  # the target for the batch path, per event
PARTITION_WCU = 1000  # about 1,000 write units per second per partition
SQS_CHUNK = 64 * 1024

DDB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
DDB_READS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan"})


_STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# DynamoDB's size and capacity rules
# --------------------------------------------------------------------------------------------


def number_size(text: str) -> int:
    """A number's size: 1 byte per two significant digits, plus 1 (leading and trailing zeros trimmed)."""
    mantissa = text.strip().lstrip("+-").lower().split("e")[0].replace(".", "")
    digits = mantissa.strip("0")
    return (len(digits) + 1) // 2 + 1


def value_size(value: Mapping[str, Any]) -> int:
    """The size of one attribute value in DynamoDB's wire format ({"S": ...}, {"L": [...]}, ...)."""
    ((kind, raw),) = value.items()
    if kind == "S":
        return len(str(raw).encode())
    if kind == "N":
        return number_size(str(raw))
    if kind == "B":
        return len(raw)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in raw.items())
    if kind == "SS":
        return sum(len(s.encode()) for s in raw)
    if kind == "NS":
        return sum(number_size(n) for n in raw)
    if kind == "BS":
        return sum(len(b) for b in raw)
    raise ValueError(f"unknown attribute type {kind}")


def item_size(item: Mapping[str, Any]) -> int:
    """An item's size: the UTF-8 lengths of its attribute names plus the sizes of their values."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def read_units(size: int, consistent: bool) -> float:
    return max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)


def item_kind(label: str, pk: str, sk: str) -> str:
    if label == "events":
        return "event" if pk.startswith("EV#") else "pending record" if pk.startswith("PENDING#") else "events item"
    if label == "rollups":
        if pk.startswith("APPLIED#"):
            return "applied marker"
        return "day rollup" if sk.startswith("D#") else "hour rollup" if sk.startswith("H#") else "rollups item"
    if pk.startswith("KEY"):
        return "API key"
    if sk.startswith("LIN#"):
        return "service line"
    if pk in ("METER", "PLAN"):
        return pk.lower()
    return "organization" if sk == "ORG" else "catalog item"


def key_text(item: Mapping[str, Any]) -> tuple[str, str]:
    return str(item["pk"]["S"]), str(item["sk"]["S"])


def index_keys(item: Mapping[str, Any] | None, index: IndexSpec) -> tuple[str, str] | None:
    """The item's key in a global secondary index, or None when the item is not in it."""
    if item is None or index.hash_key not in item or index.range_key not in item:
        return None
    return json.dumps(item[index.hash_key]), json.dumps(item[index.range_key])


# --------------------------------------------------------------------------------------------
# The call meter: botocore hooks that cost every DynamoDB and SQS call by AWS's rules
# --------------------------------------------------------------------------------------------


@dataclass
class Write:
    """One item write: the table, the item before (looked up) and after (sent or looked up)."""

    table: str
    key: dict[str, Any]
    verb: str  # put, update, delete, check
    transactional: bool
    condition: str = ""
    new: dict[str, Any] | None = None
    old: dict[str, Any] | None = None

    @property
    def creates_only(self) -> bool:
        """A put conditioned on the item's absence: when it succeeds, there was no old item."""
        return self.verb == "put" and self.condition.replace(" ", "") == "attribute_not_exists(pk)"


@dataclass
class Tally:
    """What the recorded calls cost."""

    ddb_requests: Counter[str] = field(default_factory=Counter)
    sqs_requests: Counter[str] = field(default_factory=Counter)
    sqs_billed: Counter[str] = field(default_factory=Counter)
    wru: dict[str, float] = field(default_factory=dict)
    rru: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=dict)
    items_read: int = 0
    failed_writes: int = 0
    rollup_updates: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add_wru(self, category: str, units: float, size: int) -> None:
        self.wru[category] = self.wru.get(category, 0.0) + units
        self.sizes.setdefault(category, []).append(size)

    def add_rru(self, category: str, units: float) -> None:
        self.rru[category] = self.rru.get(category, 0.0) + units

    @property
    def total_wru(self) -> float:
        return sum(self.wru.values())

    @property
    def total_rru(self) -> float:
        return sum(self.rru.values())


class CallMeter:
    """Costs every DynamoDB and SQS call made through boto3's default session while recording.

    Items written are sized from the request; items an update or delete touches are looked
    up with an unhooked client (its own session), before the call and, for updates, after it.
    """

    def __init__(self, settings: Settings) -> None:
        self.region = settings.region
        self.tables: dict[str, tuple[str, TableSpec]] = {
            settings.events_table: ("events", TABLES["events"]),
            settings.rollups_table: ("rollups", TABLES["rollups"]),
            settings.catalog_table: ("catalog", TABLES["catalog"]),
        }
        self.recording = False
        self.tally = Tally()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._session: Any = None
        self._lookup: DynamoDBClient | None = None

    def install(self) -> None:
        """Hook boto3's default session (moto replaced it when the emulator started); clients are made anew."""
        self._lookup = boto3.session.Session().client("dynamodb", region_name=self.region)
        self._session = boto3._get_default_session()
        self._session.events.register("before-parameter-build", self._before, unique_id="bench-meter-before")
        self._session.events.register("after-call", self._after, unique_id="bench-meter-after")
        clients.reset_clients()

    def uninstall(self) -> None:
        if self._session is not None:
            self._session.events.unregister("before-parameter-build", unique_id="bench-meter-before")
            self._session.events.unregister("after-call", unique_id="bench-meter-after")
            self._session = None

    def reset(self) -> Tally:
        with self._lock:
            tally, self.tally = self.tally, Tally()
        return tally

    # -- hooks ---------------------------------------------------------------------------
    def _before(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self._local.params = params
        self._local.writes = None
        if not self.recording or model.service_model.endpoint_prefix != "dynamodb" or model.name not in DDB_WRITES:
            return
        writes = self._planned_writes(model.name, params)
        self._fill(writes, lambda w: not w.creates_only, "old")
        self._local.writes = writes

    def _after(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if not self.recording:
            return
        params: dict[str, Any] = getattr(self._local, "params", None) or {}
        service, name = model.service_model.endpoint_prefix, model.name
        if service == "sqs":
            self._count_sqs(name, params, parsed)
        elif service == "dynamodb":
            writes: list[Write] | None = getattr(self._local, "writes", None)
            if name in DDB_WRITES and writes is not None and "Error" not in parsed:
                self._fill(writes, lambda w: w.verb == "update", "new")
            with self._lock:
                self.tally.ddb_requests[name] += 1
                if name in DDB_WRITES and writes is not None:
                    if "Error" in parsed:
                        self._count_failed(writes, parsed)
                    else:
                        for write in writes:
                            self._count_write(write)
                elif name in DDB_READS:
                    self._count_read(name, params, parsed)

    # -- writes --------------------------------------------------------------------------
    def _planned_writes(self, name: str, params: dict[str, Any]) -> list[Write]:
        def put(table: str, op: Mapping[str, Any], txn: bool) -> Write:
            item = dict(op["Item"])
            return Write(table, self._key_of(table, item), "put", txn, str(op.get("ConditionExpression", "")), item)

        writes: list[Write] = []
        if name == "PutItem":
            writes.append(put(params["TableName"], params, False))
        elif name == "UpdateItem":
            writes.append(Write(params["TableName"], dict(params["Key"]), "update", False))
        elif name == "DeleteItem":
            writes.append(Write(params["TableName"], dict(params["Key"]), "delete", False))
        elif name == "BatchWriteItem":
            for table, requests in params["RequestItems"].items():
                for request in requests:
                    if "PutRequest" in request:
                        writes.append(put(table, request["PutRequest"], False))
                    else:
                        writes.append(Write(table, dict(request["DeleteRequest"]["Key"]), "delete", False))
        elif name == "TransactWriteItems":
            for entry in params["TransactItems"]:
                ((kind, op),) = entry.items()
                if kind == "Put":
                    writes.append(put(op["TableName"], op, True))
                elif kind == "Update":
                    writes.append(Write(op["TableName"], dict(op["Key"]), "update", True))
                elif kind == "Delete":
                    writes.append(Write(op["TableName"], dict(op["Key"]), "delete", True))
                else:  # ConditionCheck: costs like a write of the item checked
                    writes.append(Write(op["TableName"], dict(op["Key"]), "check", True))
        return writes

    def _key_of(self, table: str, item: Mapping[str, Any]) -> dict[str, Any]:
        spec = self.tables[table][1] if table in self.tables else TABLES["events"]
        return {spec.hash_key: item[spec.hash_key], spec.range_key: item[spec.range_key]}

    def _fill(self, writes: list[Write], wanted: Callable[[Write], bool], side: str) -> None:
        """Look the items of the wanted writes up (strongly consistent, unhooked) into `old` or `new`."""
        targets = [w for w in writes if wanted(w)]
        if not targets or self._lookup is None:
            return
        found: dict[tuple[str, str, str], dict[str, Any]] = {}
        by_table: dict[str, list[dict[str, Any]]] = {}
        for write in targets:
            keys = by_table.setdefault(write.table, [])
            if write.key not in keys:
                keys.append(write.key)
        for table, keys in by_table.items():
            for start in range(0, len(keys), 100):
                request: dict[str, Any] = {table: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
                while request:
                    response = self._lookup.batch_get_item(RequestItems=request)
                    for item in response.get("Responses", {}).get(table, []):
                        found[(table, *key_text(item))] = dict(item)
                    request = dict(response.get("UnprocessedKeys") or {})
        for write in targets:
            looked_up = found.get((write.table, *key_text(write.key)))
            if side == "old":
                write.old = looked_up
            else:
                write.new = looked_up

    def _count_write(self, write: Write) -> None:
        label, spec = self.tables.get(write.table, ("other", TABLES["events"]))
        pk, sk = key_text(write.key)
        kind = item_kind(label, pk, sk)
        old_size = item_size(write.old) if write.old else 0
        new_size = item_size(write.new) if write.new else 0
        size = old_size if write.verb == "delete" else max(old_size, new_size)
        units = write_units(size) * (2 if write.transactional else 1)
        suffix = " in a transaction (x2)" if write.transactional else ""
        self.tally.add_wru(f"{kind} {write.verb}{suffix}", units, size)
        if write.verb == "update" and label == "rollups":
            self.tally.rollup_updates[(pk, sk)] += 1
        after = None if write.verb == "delete" else write.new
        for index in spec.indexes:
            before_keys, after_keys = index_keys(write.old, index), index_keys(after, index)
            index_units = 0
            if before_keys is not None and after_keys is not None and before_keys != after_keys:
                index_units = write_units(old_size) + write_units(new_size)  # moved: delete + put
            elif after_keys is not None:
                index_units = write_units(new_size)  # new entry, or its projected attributes changed
            elif before_keys is not None:
                index_units = write_units(old_size)  # the entry is removed
            if index_units:
                self.tally.add_wru(f"{kind} {index.name} index entry", index_units, new_size or old_size)

    def _count_failed(self, writes: list[Write], parsed: dict[str, Any]) -> None:
        """A refused write still consumes capacity: the existing item's size (or 1), twice in a transaction."""
        self.tally.failed_writes += len(writes)
        existing = parsed.get("Item")
        for write in writes:
            size = item_size(existing) if existing else 0
            units = write_units(size) * (2 if write.transactional else 1)
            self.tally.add_wru("refused conditional write", units, size)

    # -- reads ---------------------------------------------------------------------------
    def _read_kind(self, table: str, item: Mapping[str, Any] | None) -> str:
        label = self.tables.get(table, ("other", TABLES["events"]))[0]
        if item is None or "pk" not in item or "sk" not in item:
            return f"{label} (nothing found)"
        return item_kind(label, *key_text(item))

    def _count_read(self, name: str, params: dict[str, Any], parsed: dict[str, Any]) -> None:
        if name == "GetItem":
            item = parsed.get("Item")
            consistent = bool(params.get("ConsistentRead"))
            units = read_units(item_size(item) if item else 0, consistent)
            self.tally.items_read += 1 if item else 0
            self.tally.add_rru(f"{self._read_kind(params['TableName'], item)} GetItem", units)
        elif name == "BatchGetItem":
            unprocessed = parsed.get("UnprocessedKeys") or {}
            for table, request in params["RequestItems"].items():
                consistent = bool(request.get("ConsistentRead"))
                items = parsed.get("Responses", {}).get(table, [])
                missing = len(request["Keys"]) - len(items) - len(unprocessed.get(table, {}).get("Keys", []))
                units = sum(read_units(item_size(i), consistent) for i in items)
                units += max(0, missing) * read_units(0, consistent)  # a key not found still costs a read
                self.tally.items_read += len(items)
                self.tally.add_rru(f"{self._read_kind(table, items[0] if items else None)} BatchGetItem", units)
        else:  # Query, Scan: the returned items' sizes summed, then rounded up to 4 KB, per request
            items = parsed.get("Items", [])
            consistent = bool(params.get("ConsistentRead")) and "IndexName" not in params
            units = read_units(sum(item_size(i) for i in items), consistent)
            self.tally.items_read += len(items)
            self.tally.add_rru(f"{self._read_kind(params['TableName'], items[0] if items else None)} {name}", units)

    # -- SQS -----------------------------------------------------------------------------
    def _count_sqs(self, name: str, params: dict[str, Any], parsed: dict[str, Any]) -> None:
        def payload(body: str, attributes: Mapping[str, Any] | None) -> int:
            size = len(body.encode())
            for attr_name, attr in (attributes or {}).items():
                size += len(attr_name) + len(attr.get("DataType", "")) + len(str(attr.get("StringValue", "")))
            return size

        if name == "SendMessage":
            size = payload(params.get("MessageBody", ""), params.get("MessageAttributes"))
        elif name == "SendMessageBatch":
            size = sum(payload(e.get("MessageBody", ""), e.get("MessageAttributes")) for e in params["Entries"])
        elif name == "ReceiveMessage":
            size = sum(payload(m.get("Body", ""), m.get("MessageAttributes")) for m in parsed.get("Messages", []))
        else:
            size = 0
        with self._lock:
            self.tally.sqs_requests[name] += 1
            self.tally.sqs_billed[name] += max(1, math.ceil(size / SQS_CHUNK))


# --------------------------------------------------------------------------------------------
# 1. Ingest throughput over HTTP, and the emulator's raw conditional-put rate
# --------------------------------------------------------------------------------------------


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


def quantity(i: int) -> Decimal:
    """Quantities with decimals: 0.25 to 24.25 hours."""
    return Decimal(i % 97 + 1) / 4


def event_body(key: str, i: int, line: str = LINE, meter: str = METER) -> dict[str, Any]:
    return {"service_line_id": line, "meter": meter, "quantity": quantity(i), "idempotency_key": key}


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=lambda d: float(d) if d % 1 else int(d)).encode()


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


@dataclass
class IngestResults:
    single: HttpRun
    batch: HttpRun
    single_catch_up_s: float
    batch_catch_up_s: float
    raw_puts_per_s: float
    raw_puts: int
    raw_item_bytes: int


def measure_http_ingest() -> tuple[HttpRun, HttpRun, float, float]:
    """Batch, then single ingestion over HTTP; the stack's aggregator catches up after each run.

    Every idempotency key is new, so each event should be stored (201, or "accepted" in a batch).
    An answer that replays a stored event instead is counted, not hidden: the rates count only
    events stored, and the rollups must add up to the quantities of the events stored.
    """
    run = uuid.uuid4().hex[:8]
    single_path, batch_path = "/v1/metering/events", "/v1/metering/events/batch"
    with local_stack() as (host, port):
        # Warm-up (not timed): the first requests create clients and fill caches.
        warm = [dumps(event_body(f"bench-{run}-w{i}", i)) for i in range(2 * CLIENT_THREADS)]
        stored = post_concurrently(host, port, single_path, warm, judge_single).quantity
        wait_rolled_up(host, port, stored)

        log(f"HTTP: up to {HTTP_BATCH_REQUESTS} batch requests of {BATCH_SIZE} events or {HTTP_BATCH_SECONDS} s")
        batches = [
            dumps({"events": [event_body(f"bench-{run}-b{b}-{i}", i) for i in range(BATCH_SIZE)]})
            for b in range(HTTP_BATCH_REQUESTS)
        ]
        batch = post_concurrently(host, port, batch_path, batches, judge_batch, HTTP_BATCH_SECONDS)
        stored += batch.quantity
        batch_catch_up = wait_rolled_up(host, port, stored)

        log(f"HTTP: up to {HTTP_SINGLE_REQUESTS} single-event requests or {HTTP_SINGLE_SECONDS} s")
        bodies = [dumps(event_body(f"bench-{run}-s{i}", i)) for i in range(HTTP_SINGLE_REQUESTS)]
        single = post_concurrently(host, port, single_path, bodies, judge_single, HTTP_SINGLE_SECONDS)
        stored += single.quantity
        single_catch_up = wait_rolled_up(host, port, stored)
    return single, batch, single_catch_up, batch_catch_up


def raw_item(i: int, run: str) -> dict[str, Any]:
    """An event-sized item (RAW_ITEM_BYTES by DynamoDB's rules) in the events table, indexed by by_line."""
    item: dict[str, Any] = {
        "pk": {"S": keys.event_pk(ORG, f"K#raw-{run}-{i:06d}")},
        "sk": {"S": keys.EVENT_SK},
        "gsi1pk": {"S": keys.line_index_pk(ORG, LINE)},
        "gsi1sk": {"S": keys.line_index_sk("2026-01-01", f"USAGE-26-{run}{i:06d}")},
        "quantity": {"N": str(quantity(i))},
        "payload": {"S": ""},
    }
    item["payload"] = {"S": "x" * (RAW_ITEM_BYTES - item_size(item))}
    return item


def measure_raw_puts() -> tuple[float, int]:
    """Conditional PutItem calls per second on the in-process emulator, from CLIENT_THREADS threads."""
    emulator = Emulator()
    settings = emulator.start()
    try:
        table = settings.events_table
        run = uuid.uuid4().hex[:8]
        client = clients.dynamodb()

        def put(i: int) -> None:
            client.put_item(TableName=table, Item=raw_item(i, run), ConditionExpression="attribute_not_exists(pk)")

        for i in range(20):  # warm-up
            put(RAW_PUTS + i)
        barrier = threading.Barrier(CLIENT_THREADS + 1)

        def worker(offset: int) -> None:
            barrier.wait()
            for i in range(offset, RAW_PUTS, CLIENT_THREADS):
                put(i)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        count = count_items(table)
        if count != RAW_PUTS + 20:
            raise RuntimeError(f"raw puts: {count} items stored of {RAW_PUTS + 20}")
        return RAW_PUTS / seconds, item_size(raw_item(0, run))
    finally:
        emulator.stop()


# --------------------------------------------------------------------------------------------
# 2. Cost per event, counted from the calls the code makes
# --------------------------------------------------------------------------------------------


@dataclass
class PhaseCost:
    name: str
    events: int
    http_requests: int
    invocations: int
    tally: Tally

    def per_event(self, value: float) -> float:
        return value / self.events

    @property
    def ddb_requests(self) -> float:
        return self.per_event(sum(self.tally.ddb_requests.values()))

    @property
    def wru(self) -> float:
        return self.per_event(self.tally.total_wru)

    @property
    def rru(self) -> float:
        return self.per_event(self.tally.total_rru)

    @property
    def sqs_billed(self) -> float:
        return self.per_event(sum(self.tally.sqs_billed.values()))

    @property
    def lambdas(self) -> float:
        return self.per_event(self.http_requests + self.invocations)

    def dollars_per_million(self) -> dict[str, float]:
        """$ per million events: units per event x $ per million units."""
        return {
            "DynamoDB writes": self.wru * PRICE_WRU,
            "DynamoDB reads": self.rru * PRICE_RRU,
            "SQS": self.sqs_billed * PRICE_SQS,
            "Lambda requests": self.lambdas * PRICE_LAMBDA,
        }

    @property
    def max_updates_per_rollup(self) -> int:
        return max(self.tally.rollup_updates.values(), default=0)


def drain(app: Chalice, container: Container, expected: int, meter: CallMeter) -> int:
    """Deliver the queued messages to the real aggregator in batches of SQS_BATCH, as Lambda's event source would.

    The event source's ReceiveMessage and DeleteMessageBatch calls are recorded; returns the invocations.
    """
    sqs = clients.sqs()
    url = container.queue.url
    meter.recording = False
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    meter.recording = True
    handler = app.handler_map["aggregate_usage"]
    delivered = invocations = empty = 0
    while delivered < expected:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=SQS_BATCH, AttributeNames=["All"]).get(
            "Messages", []
        )
        if not messages:
            empty += 1
            if empty > 20:
                raise RuntimeError(f"the queue ran dry after {delivered} of {expected} messages")
            continue
        result = handler(sqs_event(messages, arn, container.settings.region), make_context("aggregate_usage"))
        invocations += 1
        if result["batchItemFailures"]:
            raise RuntimeError(f"the aggregator failed messages: {result['batchItemFailures']}")
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
        delivered += len(messages)
    meter.recording = False
    if sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=SQS_BATCH).get("Messages"):
        raise RuntimeError("more messages were queued than requests were made")
    return invocations


def measure_cost() -> tuple[PhaseCost, PhaseCost]:
    from chalice.test import Client

    from app import app

    emulator = Emulator()
    settings = emulator.start()
    meter = CallMeter(settings)
    try:
        base = Container.from_settings(settings)
        catalog_admin.load_platform_catalog(base.catalog)
        secret = catalog_admin.load_demo_data(base.catalog)["DEMO_API_KEY"].secret
        meter.install()
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        run = uuid.uuid4().hex[:8]
        phases: list[PhaseCost] = []
        plans = [
            ("single", "/v1/metering/events", [event_body(f"cost-{run}-s{i}", i) for i in range(COST_SINGLE_EVENTS)]),
            (
                "batch",
                "/v1/metering/events/batch",
                [
                    {"events": [event_body(f"cost-{run}-b{b}-{i}", i) for i in range(BATCH_SIZE)]}
                    for b in range(COST_BATCH_EVENTS // BATCH_SIZE)
                ],
            ),
        ]
        with Client(app, project_dir=str(ROOT)) as client:
            for name, path, bodies in plans:
                log(f"cost: {name} ingestion of {len(bodies)} requests, then the aggregator")
                # Each phase starts like a fresh Lambda container: empty caches, queue URL not yet known.
                container = Container.from_settings(settings)
                set_container(container)
                meter.reset()
                meter.recording = True
                events = 0
                for body in bodies:
                    response = client.http.post(path, headers=headers, body=dumps(body).decode())
                    judge = judge_single if name == "single" else judge_batch
                    answer = judge(response.status_code, response.body)
                    if answer is None or answer.replayed:
                        raise RuntimeError(f"cost {name}: {response.status_code} {response.body[:300]!r}")
                    events += answer.accepted
                invocations = drain(app, container, len(bodies), meter)
                phases.append(PhaseCost(name, events, len(bodies), invocations, meter.reset()))
        return phases[0], phases[1]
    finally:
        meter.recording = False
        meter.uninstall()
        set_container(None)
        emulator.stop()


# --------------------------------------------------------------------------------------------
# 3. Summary cost at 1,000 and 100,000 events
# --------------------------------------------------------------------------------------------


class MemoryEventsTable:
    """The loader's events table: items in a dict. The summary never reads events, only rollups."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        item, condition = kwargs["Item"], kwargs.get("ConditionExpression")
        if condition not in (None, "attribute_not_exists(pk)"):
            raise ValueError(f"unsupported condition {condition}")
        with self._lock:
            if condition and key_text(item) in self.items:
                error = {"Code": "ConditionalCheckFailedException", "Message": "The conditional request failed"}
                raise ClientError(cast(Any, {"Error": error, "Item": self.items[key_text(item)]}), "PutItem")
            self.items[key_text(item)] = item
        return {}

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            responses = {
                table: [self.items[key_text(k)] for k in request["Keys"] if key_text(k) in self.items]
                for table, request in RequestItems.items()
            }
        return {"Responses": responses, "UnprocessedKeys": {}}

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for requests in RequestItems.values():
                for request in requests:
                    if "PutRequest" in request:
                        self.items[key_text(request["PutRequest"]["Item"])] = request["PutRequest"]["Item"]
                    else:
                        self.items.pop(key_text(request["DeleteRequest"]["Key"]), None)
        return {"UnprocessedItems": {}}


class DirectRollups:
    """The loader's rollups transport: transactions applied to the emulator's own moto backend, without botocore.

    Every condition is checked before anything is applied (the loader is the only writer);
    moto's own TransactWriteItems would deep-copy the table on every call.
    """

    def __init__(self, region: str) -> None:
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        self.backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][region]

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> dict[str, Any]:
        from moto.dynamodb.comparisons import get_filter_expression

        reasons: list[dict[str, str]] = []
        for entry in TransactItems:
            ((_, op),) = entry.items()
            key = op.get("Key") or {"pk": op["Item"]["pk"], "sk": op["Item"]["sk"]}
            condition = op.get("ConditionExpression")
            ok = condition is None or get_filter_expression(
                condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            ).expr(self.backend.get_item(op["TableName"], key))
            reasons.append({"Code": "None" if ok else "ConditionalCheckFailed"})
        if any(r["Code"] != "None" for r in reasons):
            error = {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"}
            raise ClientError(cast(Any, {"Error": error, "CancellationReasons": reasons}), "TransactWriteItems")
        for entry in TransactItems:
            ((kind, op),) = entry.items()
            if kind == "Put":
                self.backend.put_item(op["TableName"], op["Item"])
            elif kind == "Update":
                self.backend.update_item(
                    op["TableName"],
                    op["Key"],
                    update_expression=op["UpdateExpression"],
                    expression_attribute_names=op.get("ExpressionAttributeNames"),
                    expression_attribute_values=op.get("ExpressionAttributeValues"),
                )
            else:
                raise ValueError(f"unsupported transaction action {kind}")
        return {}


class CachedLinesCatalog(DynamoCatalogRepository):
    """The catalog with service lines cached (the loader resolves the same two lines 100,000 times)."""

    def __init__(self, table_name: str) -> None:
        super().__init__(table_name)
        self._lines: dict[tuple[str, str], ServiceLine | None] = {}

    def get_service_line(self, organization_id: str, line_id: str) -> ServiceLine | None:
        if (organization_id, line_id) not in self._lines:
            self._lines[(organization_id, line_id)] = super().get_service_line(organization_id, line_id)
        return self._lines[(organization_id, line_id)]


class MemoryQueue:
    """The loader's queue: bodies kept in memory, delivered to the real aggregator handler."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def send(self, body: str, attributes: dict[str, str] | None = None) -> None:
        self.bodies.append(body)


COMBOS = [(line, meter) for line, meters in SUMMARY_LINES.items() for meter in meters]
SPREAD_EVENTS = 1_000  # enough to touch every (line, meter, day) of SUMMARY_LINES over SUMMARY_DAYS


class SummaryLoader:
    """Loads usage through ingest() in batches of 100 and rolls it up through the aggregator handler."""

    def __init__(self, app: Chalice, container: Container, today: dt.date) -> None:
        events = cast("DynamoDBClient", MemoryEventsTable())
        rollups = cast("DynamoDBClient", DirectRollups(container.settings.region))
        self.app = app
        self.container = container
        self.loading = replace(
            container,
            events=DynamoEventStore(container.settings.events_table, client=events),
            rollups=DynamoRollupStore(container.settings.rollups_table, client=rollups),
        )
        self.catalog = CachedLinesCatalog(container.settings.catalog_table)
        self.today = today
        self.loaded = 0
        self.total = Decimal(0)
        self.seconds = 0.0

    def draft(self, n: int) -> UsageDraft:
        """Event n: the first 1,000 cover every (line, meter, day), 3 days per batch; later ones come
        1,000 at a time (one aggregator run) per (line, day), so the aggregator coalesces them."""
        if n < SPREAD_EVENTS:
            batch, j = divmod(n, BATCH_SIZE)
            day = (batch * 3 + j % 3) % SUMMARY_DAYS
            line, meter = COMBOS[(j // 3) % len(COMBOS)]
        else:
            group = (n - SPREAD_EVENTS) // (BATCH_SIZE * SQS_BATCH)
            line = list(SUMMARY_LINES)[group % len(SUMMARY_LINES)]
            day = (group // len(SUMMARY_LINES)) % SUMMARY_DAYS
            meter = SUMMARY_LINES[line][n % len(SUMMARY_LINES[line])]
        return UsageDraft(
            service_line_id=line,
            meter=meter,
            quantity=quantity(n),
            period_date=self.today - dt.timedelta(days=day),
            event_time=None,
            source="bench",
            metadata={},
            idempotency_key=f"summary-{n:07d}",
        )

    def load_to(self, count: int) -> None:
        started = time.perf_counter()
        queue = MemoryQueue()
        now = dt.datetime.now(dt.UTC)
        while self.loaded < count:
            drafts = [self.draft(n) for n in range(self.loaded, min(count, self.loaded + BATCH_SIZE))]
            outcomes = ingest(list(drafts), ORG, self.catalog, self.loading.events, queue, now)
            if any(o.status != "accepted" for o in outcomes):
                raise RuntimeError(f"summary load: {[o.status for o in outcomes if o.status != 'accepted'][:3]}")
            self.loaded += len(drafts)
            self.total += sum((d.quantity for d in drafts), Decimal(0))
        handler = self.app.handler_map["aggregate_usage"]
        set_container(self.loading)
        try:
            for start in range(0, len(queue.bodies), SQS_BATCH):
                messages = [
                    {
                        "MessageId": str(uuid.uuid4()),
                        "ReceiptHandle": str(uuid.uuid4()),
                        "Body": body,
                        "Attributes": {"ApproximateReceiveCount": "1"},
                    }
                    for body in queue.bodies[start : start + SQS_BATCH]
                ]
                arn = "arn:aws:sqs:us-east-1:123456789012:bench"
                result = handler(sqs_event(messages, arn, "us-east-1"), make_context("aggregate_usage"))
                if result["batchItemFailures"]:
                    raise RuntimeError(f"summary load: the aggregator failed {result['batchItemFailures']}")
        finally:
            set_container(self.container)
        self.seconds += time.perf_counter() - started


@dataclass
class SummaryPoint:
    events: int
    items_read: float
    rru: float
    requests: float
    latency_ms: float
    latency_min_ms: float
    rollups_table_items: int
    reads: list[str]
    load_events_per_s: float


def count_items(table: str) -> int:
    """Items in a table (a COUNT scan, not recorded)."""
    kwargs: dict[str, Any] = {"TableName": table, "Select": "COUNT"}
    total = 0
    while True:
        page = clients.dynamodb().scan(**kwargs)
        total += page["Count"]
        if "LastEvaluatedKey" not in page:
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def measure_summary() -> list[SummaryPoint]:
    from chalice.test import Client

    from app import app

    emulator = Emulator()
    settings = emulator.start()
    meter = CallMeter(settings)
    try:
        container = Container.from_settings(settings)
        catalog_admin.load_platform_catalog(container.catalog)
        secret = catalog_admin.load_demo_data(container.catalog)["DEMO_API_KEY"].secret
        meter.install()
        set_container(container)
        today = dt.datetime.now(dt.UTC).date()
        loader = SummaryLoader(app, container, today)
        path = f"/v1/usage/summary?from={today - dt.timedelta(days=SUMMARY_DAYS - 1)}&to={today}"
        headers = {"Authorization": f"Bearer {secret}"}
        points: list[SummaryPoint] = []
        with Client(app, project_dir=str(ROOT)) as client:
            for size in SUMMARY_SIZES:
                log(f"summary: loading {size:,} events")
                loader.load_to(size)
                log(f"summary: {SUMMARY_REQUESTS} requests at {size:,} events")

                def get() -> Any:
                    response = client.http.get(path, headers=headers)
                    if response.status_code != 200:
                        raise RuntimeError(f"summary: {response.status_code} {response.body[:300]!r}")
                    return json.loads(response.body, parse_float=Decimal)

                if rolled_up_quantity(get()) != loader.total:  # also the warm-up request
                    raise RuntimeError("summary: the rollups do not add up to the events loaded")
                items: list[int] = []
                units: list[float] = []
                calls: list[int] = []
                latencies: list[float] = []
                for _ in range(SUMMARY_REQUESTS):
                    meter.reset()
                    meter.recording = True
                    started = time.perf_counter()
                    get()
                    latencies.append(time.perf_counter() - started)
                    meter.recording = False
                    tally = meter.reset()
                    items.append(tally.items_read)
                    units.append(tally.total_rru)
                    calls.append(sum(tally.ddb_requests.values()))
                points.append(
                    SummaryPoint(
                        events=size,
                        items_read=statistics.median(items),
                        rru=statistics.median(units),
                        requests=statistics.median(calls),
                        latency_ms=statistics.median(latencies) * 1000,
                        latency_min_ms=min(latencies) * 1000,
                        rollups_table_items=count_items(settings.rollups_table),
                        reads=sorted(tally.rru),
                        load_events_per_s=loader.loaded / loader.seconds,
                    )
                )
        return points
    finally:
        meter.recording = False
        meter.uninstall()
        set_container(None)
        emulator.stop()


# --------------------------------------------------------------------------------------------
# 4. Cold start and package size
# --------------------------------------------------------------------------------------------


def import_ms(module: str) -> float:
    """Median time to import a module in a fresh interpreter (cwd = the project), measured in the child."""
    code = f"import time\nt = time.perf_counter()\nimport {module}\nprint(time.perf_counter() - t)\n"
    runs = []
    for _ in range(COLD_RUNS):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
        runs.append(float(out.stdout.strip().splitlines()[-1]) * 1000)
    return statistics.median(runs)


def package_mb() -> tuple[float, int, int]:
    """Build the Lambda package with `make package`; deployment.zip's size in MB (10^6 bytes), files and .pyc files."""
    subprocess.run(["make", "package"], cwd=ROOT, check=True, capture_output=True, text=True)
    with zipfile.ZipFile(PACKAGE_ZIP) as archive:
        names = archive.namelist()
    return PACKAGE_ZIP.stat().st_size / 1e6, len(names), sum(1 for n in names if n.endswith(".pyc"))


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass
class Results:
    ingest: IngestResults
    single: PhaseCost
    batch: PhaseCost
    summary: list[SummaryPoint]
    app_import_ms: float
    boto3_import_ms: float
    zip_mb: float
    zip_files: int
    zip_pyc: int


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def table_rows(r: Results) -> list[tuple[str, str, str, str]]:
    i = r.ingest
    single_ratio = i.single.events_per_s / i.raw_puts_per_s
    batch_ratio = i.batch.events_per_s / i.raw_puts_per_s

    def p50(run: HttpRun) -> str:
        return fmt(statistics.median(run.latencies) * 1000, 0)

    def refused(phase: PhaseCost) -> str:
        count = phase.tally.failed_writes
        return f"; {count} refused conditional writes included" if count else ""

    def replays(run: HttpRun) -> str:
        if not run.replayed_requests:
            return ""
        return f"; {run.replayed_requests} requests answered with another request's event (see text)"

    rows = [
        (
            "1 ingest",
            "single POST /v1/metering/events over HTTP",
            f"{fmt(i.single.events_per_s, 1)} events/s",
            f"{i.single.requests} requests in {i.single.seconds:.0f} s, {CLIENT_THREADS} keep-alive clients; "
            f"p50 {p50(i.single)} ms{replays(i.single)}",
        ),
        (
            "1 ingest",
            "batch POST /v1/metering/events/batch over HTTP",
            f"{fmt(i.batch.events_per_s, 1)} events/s",
            f"{i.batch.requests} requests x {BATCH_SIZE} events in {i.batch.seconds:.0f} s; "
            f"p50 {p50(i.batch)} ms per request{replays(i.batch)}",
        ),
        (
            "1 ingest",
            "raw conditional PutItem, moto in-process",
            f"{fmt(i.raw_puts_per_s, 1)} puts/s",
            f"{i.raw_puts} puts of {i.raw_item_bytes} B, {CLIENT_THREADS} threads",
        ),
        ("1 ingest", "HTTP single ÷ raw puts", fmt(single_ratio), "events/s per raw put/s"),
        ("1 ingest", "HTTP batch ÷ raw puts", fmt(batch_ratio), "events/s per raw put/s"),
    ]
    for phase in (r.single, r.batch):
        dollars = phase.dollars_per_million()
        target = ""
        if phase.name == "batch":
            verdict = "met" if phase.wru <= WRU_TARGET else f"missed by {fmt(phase.wru - WRU_TARGET)}"
            target = f"; target ≤ {WRU_TARGET}: {verdict}"
        runs = f"{phase.invocations} aggregator run{'' if phase.invocations == 1 else 's'}"
        where = f"{phase.events:,} events, {phase.http_requests} requests, {runs}"
        rows += [
            (f"2 cost, {phase.name}", "DynamoDB requests per event", fmt(phase.ddb_requests), where),
            (
                f"2 cost, {phase.name}",
                "DynamoDB write units per event",
                fmt(phase.wru),
                f"indexes and transactions included{refused(phase)}{target}",
            ),
            (f"2 cost, {phase.name}", "DynamoDB read units per event", fmt(phase.rru), ""),
            (
                f"2 cost, {phase.name}",
                "SQS requests per event (64 KB units)",
                fmt(phase.sqs_billed, 3),
                "send, and the event source's receive and delete",
            ),
            (
                f"2 cost, {phase.name}",
                "Lambda invocations per event",
                fmt(phase.lambdas, 3),
                "one per HTTP request and per aggregator run",
            ),
            (
                f"2 cost, {phase.name}",
                "$ per million events",
                f"${fmt(sum(dollars.values()))}",
                ", ".join(f"{k} ${fmt(v, 3)}" for k, v in dollars.items()),
            ),
        ]
    for point in r.summary:
        rows += [
            (
                "3 summary",
                f"items read per 30-day summary, {point.events:,} events",
                fmt(point.items_read, 0),
                f"{fmt(point.requests, 0)} DynamoDB requests, {fmt(point.rru, 1)} RRU",
            ),
            (
                "3 summary",
                f"summary latency p50, {point.events:,} events",
                f"{fmt(point.latency_ms, 1)} ms",
                f"median of {SUMMARY_REQUESTS} (min {fmt(point.latency_min_ms, 1)} ms), chalice.test.Client",
            ),
        ]
    small, large = r.summary[0], r.summary[-1]
    growth = f"{large.events // small.events}x the events"
    rows += [
        ("3 summary", "items read ratio", fmt(large.items_read / small.items_read), growth),
        ("3 summary", "latency ratio", fmt(large.latency_ms / small.latency_ms), growth),
        ("4 cold start", "import app (fresh interpreter)", f"{fmt(r.app_import_ms, 0)} ms", f"median of {COLD_RUNS}"),
        ("4 cold start", "import boto3 alone", f"{fmt(r.boto3_import_ms, 0)} ms", f"median of {COLD_RUNS}"),
        (
            "4 cold start",
            "Lambda package (deployment.zip)",
            f"{fmt(r.zip_mb, 1)} MB",
            f"{r.zip_files:,} files, build/package-dev",
        ),
    ]
    return rows


def render_table(rows: Sequence[tuple[str, str, str, str]]) -> str:
    header = ("section", "measure", "value", "notes")
    lines = ["| " + " | ".join(header) + " |", "|---|---|--:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def breakdown(phase: PhaseCost, units: Mapping[str, float], with_sizes: bool) -> str:
    """A table of units per event by kind of access, largest first."""
    if with_sizes:
        lines = ["| write | units per event | mean item size |", "|---|--:|--:|"]
    else:
        lines = ["| read | units per event |", "|---|--:|"]
    for category, value in sorted(units.items(), key=lambda kv: -kv[1]):
        size = f" {statistics.mean(phase.tally.sizes[category]):,.0f} B |" if with_sizes else ""
        lines.append(f"| {category} | {value / phase.events:.3f} |{size}")
    lines.append(f"| **total** | **{sum(units.values()) / phase.events:.3f}** |{' |' if with_sizes else ''}")
    return "\n".join(lines)


def mean_size(phase: PhaseCost, category: str) -> float:
    sizes = phase.tally.sizes.get(category, [])
    return statistics.mean(sizes) if sizes else 0.0


def bytecode_text(r: Results) -> str:
    project = "from their `__pycache__`" if (ROOT / "chalicelib" / "__pycache__").is_dir() else "from source"
    env = " (PYTHONDONTWRITEBYTECODE is set)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    return (
        f"Here the project's modules load {project}{env} and the installed packages from their "
        f"`.pyc` files; the deployment package holds {r.zip_pyc:,} `.pyc` files."
    )


def money(price: float) -> str:
    return f"${price:.2f}" if round(price, 2) == price else f"${price:.3f}"


def replay_text(i: IngestResults) -> str:
    runs = [(name, run) for name, run in (("single", i.single), ("batch", i.batch)) if run.replayed_requests]
    if not runs:
        return (
            "- **Every answer stored its event.** Every idempotency key is new, and the bench checks\n"
            "  every answer: none was a replay in this run, and the rollups add up to the events stored."
        )
    counts = "; ".join(
        f"{name}: {run.replayed_requests} of {run.requests} requests ({run.replayed} events)" for name, run in runs
    )
    return f"""- **Replayed answers: a defect.** Every idempotency key is new, yet some answers replayed an
  event already stored ({counts}): such a request's own event was not stored by that request.
  The rates count only events stored, and the rollups are checked against those."""


def document(r: Results, table: str, started: dt.datetime, runtime_s: float, load: tuple[float, ...]) -> str:
    i, single, batch = r.ingest, r.single, r.batch
    small, large = r.summary[0], r.summary[-1]
    event_bytes = mean_size(batch, "event put")
    pending_bytes = mean_size(batch, "pending record put")
    index_wru = batch.tally.wru.get("event by_line index entry", 0.0) / batch.events
    line_limit = PARTITION_WCU / index_wru if index_wru else float("nan")
    rate = 10_000
    batches_per_s = rate / BATCH_SIZE
    updates = batch.max_updates_per_rollup
    updates_per_event = updates / batch.events
    pending_units = (
        batch.tally.wru.get("pending record put", 0.0) + batch.tally.wru.get("pending record delete", 0.0)
    ) / (batch.events / BATCH_SIZE)
    dominant = sorted(batch.tally.wru.items(), key=lambda kv: -kv[1])[:3]
    dominant_text = "; ".join(f"{c} ({u / batch.events:.2f})" for c, u in dominant)
    per_event_single = {c: u / single.events for c, u in single.tally.wru.items()}
    single_overhead = sum(u for c, u in per_event_single.items() if c.startswith(("pending record", "applied marker")))
    line_reads = batch.tally.rru.get("service line GetItem", 0.0) / batch.events
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    return f"""# Benchmarks

Generated by `make bench` (`tools/bench.py`) on {started:%Y-%m-%d %H:%M} UTC: {machine};
load average at start {", ".join(f"{x:.2f}" for x in load)}; the run took {runtime_s:.0f} s.
Every number is measured in that run; `make bench` regenerates this file. The machine is
shared, so rates and latencies move from run to run; counts (requests, units, items) do not.

{table}

## Method

1. **Ingest throughput.** `python -m chalicelib.local.stack --port 0` (what `make run`
   starts) runs as a subprocess, its output read by a thread. {CLIENT_THREADS} client threads,
   each with one keep-alive `http.client` connection, post batches of {BATCH_SIZE} (up to
   {HTTP_BATCH_REQUESTS} requests or {HTTP_BATCH_SECONDS:.0f} s), then single events (up to
   {HTTP_SINGLE_REQUESTS:,} requests or {HTTP_SINGLE_SECONDS:.0f} s), with the demo key, line
   `{LINE}`, meter `{METER}`, decimal quantities and unique idempotency keys. A rate is the
   events stored over the wall time from the first request to the last answer. After each run
   the bench waits until the summary adds up to the quantities of every event stored (the
   stack's own aggregator: {i.batch_catch_up_s:.1f} s after the batch run,
   {i.single_catch_up_s:.1f} s after the single run), so a backlog does not spill into the next
   run. The raw rate is {i.raw_puts:,} conditional `PutItem` calls (`attribute_not_exists(pk)`,
   {i.raw_item_bytes}-byte items in the events table, so the `by_line` index is maintained too)
   from {CLIENT_THREADS} threads on `Emulator()` in this process.
2. **Cost per event.** In-process: `Emulator`, `Container`, the catalog and demo data, and
   `chalice.test.Client` over `app`. {single.events:,} events are posted one per request, then
   {batch.events:,} in requests of {BATCH_SIZE}; after each, the queue is drained into
   `app.handler_map["aggregate_usage"]` {SQS_BATCH} messages at a time, with `ReceiveMessage`
   and `DeleteMessageBatch` as Lambda's event source makes them. Each phase starts with a
   fresh container (empty caches, like a new Lambda container). Botocore hooks on boto3's
   default session see every call:
   - write units: 1 per KB (rounded up) of the item by DynamoDB's size rules (attribute names
     plus values; numbers 1 byte per 2 significant digits + 1; lists and maps 3 bytes + 1 per
     element); a put costs the larger of the old and new item, an update the larger of the
     item before and after (both looked up with an unhooked client), a delete the item deleted
     (looked up before); x2 inside `TransactWriteItems`; plus, for every index the item is or
     was in (it has the index's key attributes), the projected item's units (every index
     projects ALL), counted once;
   - read units: 1 per 4 KB strongly consistent, 0.5 eventually consistent; `GetItem` and
     each `BatchGetItem` key rounded up per item; `Query` rounded up per request over the
     items returned;
   - SQS: one request per 64 KB of payload (sends, received messages), one per delete batch;
   - Lambda: one invocation per HTTP request and per aggregator batch.

   Dollars are units per event x the on-demand price per million: DynamoDB
   {money(PRICE_WRU)} per million write units and {money(PRICE_RRU)} per million read units,
   SQS {money(PRICE_SQS)} per million requests, Lambda {money(PRICE_LAMBDA)} per million
   requests. Lambda GB-seconds, API Gateway, CloudWatch and storage are left out.
3. **Summary cost.** The events are ingested by `chalicelib.services.ingest.ingest` in
   batches of {BATCH_SIZE} (not HTTP) over {SUMMARY_DAYS} period dates, 2 service lines and
   their {len(COMBOS)} meters: the first {SPREAD_EVENTS:,} cover every (line, meter, day), the
   rest come {BATCH_SIZE * SQS_BATCH:,} at a time per (line, day). The aggregator handler rolls
   them up, {SQS_BATCH} messages per invocation. To load {large.events:,} events in seconds, the
   loader's transport keeps the events table in memory (the summary never reads it) and
   applies the aggregator's transactions to the emulator's rollups table without botocore
   ({large.load_events_per_s:,.0f} events/s). The summary (`GET /v1/usage/summary`,
   {SUMMARY_DAYS} days) is then requested {SUMMARY_REQUESTS} times through
   `chalice.test.Client` and the normal boto3 clients, after a warm-up request that checks the
   totals equal the quantities ingested. Items read are the items returned by `GetItem`,
   `BatchGetItem` and `Query` during one request (median); the set grows from
   {small.events:,} to {large.events:,} events in the same tables.
4. **Cold start.** `import app` and `import boto3` timed with `time.perf_counter()` inside a
   fresh interpreter (cwd = the project), median of {COLD_RUNS}; the package is built by
   `make package` (`chalice package` with the merged template).

## What the numbers mean, and what limits them

- **Ingest rates are the emulator's, not AWS's.** Every DynamoDB call is Python: botocore
  builds and signs the request, moto parses and answers it, botocore parses the reply. The
  emulator serializes DynamoDB requests with one lock (to keep conditions atomic), and the
  GIL runs the whole stack (HTTP server threads, the 16-thread ingest pool, the SQS poller
  and the aggregator, which works during the runs) on one core's worth of Python. Counting
  ingestion and aggregation, an event costs {fmt(single.ddb_requests, 1)} DynamoDB calls on
  the single path and {fmt(batch.ddb_requests)} on the batch path, against one for a raw put;
  the ratios ({fmt(i.single.events_per_s / i.raw_puts_per_s)} and
  {fmt(i.batch.events_per_s / i.raw_puts_per_s)}) say how much of the emulator's write rate the
  HTTP path turns into events. On AWS each request is its own Lambda invocation and DynamoDB
  scales by partition (below), so the rates do not transfer.
{replay_text(i)}
- **Cost per event is counted, not taken from the design.** The units follow from the items
  the code writes (an event is {event_bytes:,.0f} B, the pending record of a
  {BATCH_SIZE}-event batch {pending_bytes:,.0f} B). On the batch path the largest write costs
  per event are: {dominant_text}; {fmt(batch.wru)} in all, against the target of {WRU_TARGET}.
  On the single path each event is its own batch, so its pending record (put and delete) and
  its applied marker (transactional) cost {fmt(single_overhead)} write units per event on top
  of the event and its index entry. Ingestion reads each distinct service line of a request
  once ({fmt(line_reads)} read units per event on the batch path). Moto reports no
  consumed capacity, so these are DynamoDB's published rules applied to the items, not a bill.
- **Summary reads** come from the day rollups: one `Query` per service line over the period,
  plus the catalog reads of the request (all reads seen: {", ".join(large.reads)}). The items
  read are the (line, meter, day) rollups and a few catalog items, so they stay the same from
  {small.events:,} to {large.events:,} events
  (ratio {fmt(large.items_read / small.items_read)}). The latency is the emulator answering the
  same {fmt(large.requests, 0)} requests at both sizes (ratio
  {fmt(large.latency_ms / small.latency_ms)}); moto answers a `Query` by scanning every item of
  the table, and the rollups table grows with the applied markers ({small.rollups_table_items:,}
  items at {small.events:,} events, {large.rollups_table_items:,} at {large.events:,}), where
  DynamoDB reads only the queried partition.
- **Cold start** is measured with this machine's CPU and warm file caches; Lambda's init also
  starts the runtime, which is not measured here. `import app` includes boto3, Chalice,
  pydantic and aws-lambda-powertools. {bytecode_text(r)}

### Write units per event, single ingestion (measured)

{breakdown(single, single.tally.wru, True)}

### Write units per event, batch ingestion (measured)

{breakdown(batch, batch.tally.wru, True)}

### Read units per event (measured)

Single ingestion:

{breakdown(single, single.tally.rru, False)}

Batch ingestion:

{breakdown(batch, batch.tally.rru, False)}

## Partition keys on AWS

A DynamoDB partition serves about {PARTITION_WCU:,} write units and 3,000 read units per second,
and one item's writes serialize. The emulator has no partitions: this part is arithmetic on
the sizes and counts measured above.

- **Events** are keyed `EV#<organization>#K#<idempotency key>`: each event has its own
  partition key, so a busy organization's writes spread over as many partitions as DynamoDB
  needs; nothing on the write path is keyed by organization alone.
- **The `by_line` index** is keyed by service line; each event adds an index entry of
  {fmt(index_wru)} write units. A line's entries share one index partition, so a line above
  about {line_limit:,.0f} events/s (events under 1 KB) would throttle that index partition,
  and index throttling throttles the table writes behind it. When a line needs more, key the
  index `<line>#<N>` with N = hash(event id) mod S, for S x {PARTITION_WCU:,} events/s.
  Reading a line then takes S `Query` calls per page (each at least 0.5 read units), merged
  by (period_date, id), for listings and for the reconciler; the summary, which reads
  rollups, is unaffected.
- **Pending records** go to `PENDING#0` .. `PENDING#7` by a hash of the batch id. At
  {rate:,} events/s in batches of {BATCH_SIZE}: {batches_per_s:,.0f} batches/s x
  {pending_units:.0f} write units (the put and the delete of a {pending_bytes:,.0f}-byte record)
  = {batches_per_s * pending_units:,.0f} units/s, {batches_per_s * pending_units / 8:,.0f} per shard.
- **Rollups** (`R#<organization>#<line>` / `D#<day>#<meter>`) are hot keys: every event of a line, meter and
  day adds to one item. The aggregator coalesces: a transaction updates each distinct rollup
  key once, whatever the number of events in it. In the batch run above the busiest rollup
  item took {updates} update{"" if updates == 1 else "s"} for {batch.events:,} events
  ({updates_per_event:.4f} per event, {SQS_BATCH} messages per aggregator invocation). At
  {rate:,} events/s in batches of {BATCH_SIZE} ({batches_per_s:,.0f} messages/s) that is
  {rate * updates_per_event:,.0f} updates/s on the item ({rate * updates_per_event * 2:,.0f}
  write units/s, transactional), not {rate:,}. The deployed event source delivers up to 100
  messages per invocation, which lowers the rate per key further, down to what one
  transaction's 100 actions allow. Concurrent invocations that touch the same rollup conflict
  and retry with backoff; the per-line partition key of the rollups table carries only
  these coalesced updates.
- **Applied markers** are keyed by batch id, so they spread like the events.
"""


def main() -> int:
    started_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    load = os.getloadavg()
    real_stdout: TextIO = sys.stdout
    # The app logs and emits metrics as JSON on stdout; the table is the only thing printed there.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (restored below)
    try:
        log("cold start: importing app and boto3 in fresh interpreters")
        app_ms = import_ms("app")
        boto3_ms = import_ms("boto3")
        log("package: make package")
        zip_mb, zip_files, zip_pyc = package_mb()
        log("raw conditional puts on the emulator")
        raw_rate, raw_bytes = measure_raw_puts()
        single, batch, single_catch_up, batch_catch_up = measure_http_ingest()
        ingest_results = IngestResults(single, batch, single_catch_up, batch_catch_up, raw_rate, RAW_PUTS, raw_bytes)
        single_cost, batch_cost = measure_cost()
        summary = measure_summary()
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    results = Results(ingest_results, single_cost, batch_cost, summary, app_ms, boto3_ms, zip_mb, zip_files, zip_pyc)
    table = render_table(table_rows(results))
    runtime = time.perf_counter() - started
    DOC.write_text(document(results, table, started_at, runtime, load), encoding="utf-8")
    print(table)
    log(f"wrote {DOC}; {runtime:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
