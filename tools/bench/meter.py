"""The call meter: botocore hooks that cost every DynamoDB and SQS call by AWS's published rules."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3

from chalicelib.config import Settings
from chalicelib.storage import clients
from chalicelib.storage.schema import TABLES, IndexSpec, TableSpec
from tools.bench.common import DDB_READS, DDB_WRITES, SQS_CHUNK

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


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
# The call timeline: when each DynamoDB and SQS call of a request started and ended
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One AWS call: service, operation, and when it started and ended (perf_counter seconds)."""

    service: str
    operation: str
    started: float
    ended: float


def in_sequence(calls: Sequence[Call]) -> int:
    """The longest chain of calls each of which started after the previous one ended.

    Calls overlapped with each other (sent from threads at the same time) count once; a request's
    latency on AWS grows with this number of round trips, not with the total.
    """
    chain, last_end = 0, -math.inf
    for call in sorted(calls, key=lambda c: c.ended):  # greedy by end time: the largest non-overlapping set
        if call.started >= last_end:
            chain += 1
            last_end = call.ended
    return chain


class CallTimeline:
    """Records the DynamoDB and SQS calls of the shared clients (chalicelib.storage.clients.on_event)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self.recording = False

    def install(self) -> None:
        for service in ("dynamodb", "sqs"):
            clients.on_event(f"before-call.{service}", self._before)
            clients.on_event(f"after-call.{service}", self._after)

    def uninstall(self) -> None:
        clients.clear_events()

    def take(self) -> list[Call]:
        """The calls recorded since the last take."""
        with self._lock:
            calls, self._calls = self._calls, []
        return calls

    def _before(self, context: dict[str, Any], **_: Any) -> None:
        context["bench_started"] = time.perf_counter()

    def _after(self, context: dict[str, Any], model: Any, **_: Any) -> None:
        started = context.get("bench_started")
        if not self.recording or started is None:
            return
        call = Call(model.service_model.endpoint_prefix, model.name, started, time.perf_counter())
        with self._lock:
            self._calls.append(call)
