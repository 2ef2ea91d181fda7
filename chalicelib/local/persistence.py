"""The local stack's tables on disk: snapshots of the emulated DynamoDB, loaded at the next start.

A snapshot is one gzip file of JSON lines. The first line is a header (format,
version, time, item count per table); each further line is one item,
``[table number, name, type, value, name, type, value, ...]``, with DynamoDB's
type letters (``S``, ``N``, ``M``...) and values as DynamoDB's JSON has them, so
`zcat` shows it and it does not depend on the emulator's classes. A flat list
per item makes no small dict per attribute: 110,000 items encode in 2.3 s
instead of 3.9 s with DynamoDB's ``{"name": {"S": ...}}`` maps.

Writing goes to a temporary file in the same directory, which is flushed to
disk and renamed over the previous snapshot, then the directory is flushed: a
crash while writing leaves the previous snapshot whole.

This is the only module that knows moto's backend layout: it copies and fills
the tables' ``items`` directly, since Scan and PutItem through boto3 would take
minutes for 100,000 events.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import gzip
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

FORMAT = "usage-metering-local-dynamodb"
VERSION = 1
SNAPSHOT_FILE = "dynamodb.jsonl.gz"
PREVIOUS_FILE = "dynamodb.previous.jsonl.gz"
LOCK_FILE = ".lock"
# moto changes these values in place (ADD to a set, SET of a nested path or list element);
# every other attribute value it replaces with a new object on update.
_CONTAINER_TYPES = frozenset({"SS", "NS", "BS", "L", "M"})
_LINES_PER_WRITE = 2000
_ITEMS_PER_RESTORE = 5000


class SnapshotError(Exception):
    """A snapshot that cannot be loaded: another format or version, or a damaged file."""


@dataclass(frozen=True)
class SnapshotInfo:
    """What one save or load did."""

    path: Path
    items: dict[str, int]
    bytes: int
    seconds: float
    locked_seconds: float = 0.0

    @property
    def total_items(self) -> int:
        return sum(self.items.values())

    def describe(self) -> str:
        return f"{self.total_items:,} items, {self.bytes / 1e6:.1f} MB, {self.seconds:.2f} s"


# -- moto's backend ---------------------------------------------------------------------------------


def _backend(region: str) -> Any:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[DEFAULT_ACCOUNT_ID][region]


def _table_items(table: Any) -> Iterator[Any]:
    """Every item of a moto table (`items` maps a hash key to an item, or to a map of range keys to items)."""
    if table.range_key_attr is None:
        yield from table.items.values()
    else:
        for by_range in table.items.values():
            yield from by_range.values()


def capture(region: str, tables: Iterable[str], lock: AbstractContextManager[Any]) -> dict[str, list[dict[str, Any]]]:
    """A consistent copy of the tables' items, taken while holding the emulator's DynamoDB lock.

    Each item's attribute map is copied; the values are shared with the copy (moto replaces
    a value on update, never changes it), except sets, lists and maps, which moto can change
    in place and which are converted to DynamoDB JSON under the lock. The garbage collector
    is held off meanwhile: a full pass over the emulator's heap takes about a second.
    """
    backend = _backend(region)
    copied: dict[str, list[dict[str, Any]]] = {}
    collecting = gc.isenabled()
    with lock:
        gc.disable()
        try:
            for name in tables:
                table = backend.tables.get(name)
                if table is None:
                    continue
                rows: list[dict[str, Any]] = []
                for item in _table_items(table):
                    attrs = dict(item.attrs)
                    for key, value in attrs.items():
                        if value.type in _CONTAINER_TYPES:
                            attrs[key] = _frozen(value)
                    rows.append(attrs)
                copied[name] = rows
        finally:
            if collecting:
                gc.enable()
    return copied


@dataclass(frozen=True)
class _Frozen:
    """A set, list or map attribute value already converted to DynamoDB JSON."""

    type: str
    value: Any


def _frozen(value: Any) -> _Frozen:
    return _Frozen(value.type, _json_value(value))


def _json_value(value: Any) -> Any:
    """The value part of a moto attribute value in DynamoDB JSON (``{"S": "x"}`` -> ``"x"``)."""
    kind, inner = value.type, value.value
    if kind == "M":
        return {k: {v.type: _json_value(v)} for k, v in inner.items()}
    if kind == "L":
        return [{v.type: _json_value(v)} for v in inner]
    if kind == "B":
        return _b64(inner)
    if kind == "BS":
        return [_b64(v) for v in inner]
    if kind in ("SS", "NS"):
        return list(inner)
    return inner


def _b64(value: Any) -> str:
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else str(value)


def restore_items(region: str, table: str, rows: Iterable[list[Any]]) -> int:
    """Put items (flat rows as in the file, without the table number) into an existing moto table.

    The items bypass moto's PutItem checks (they passed them when first written) and its
    secondary-index bookkeeping: restore into tables no request has read yet.
    """
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

    target = _backend(region).tables[table]
    hash_attr, range_attr = target.hash_key_attr, target.range_key_attr
    new_value = DynamoType.__new__
    count = 0
    for row in rows:
        values: dict[str, Any] = {}
        for name, kind, inner in zip(row[0::3], row[1::3], row[2::3], strict=True):
            if kind in _CONTAINER_TYPES:
                values[name] = DynamoType({kind: inner})
            else:
                value = new_value(DynamoType)
                value.type = kind
                value.value = inner
                values[name] = value
        attrs = LimitedSizeDict()
        dict.update(attrs, values)  # without its per-key size check: O(attributes^2) per item
        item = object.__new__(Item)
        item.hash_key = attrs[hash_attr]
        item.range_key = attrs[range_attr] if range_attr else None
        item.attrs = attrs
        if range_attr:
            target.items[item.hash_key][item.range_key] = item
        else:
            target.items[item.hash_key] = item
        count += 1
    return count


# -- the file -----------------------------------------------------------------------------------------


def snapshot_path(data_dir: Path) -> Path:
    return data_dir / SNAPSHOT_FILE


def _flat(table_number: int, attrs: Mapping[str, Any]) -> list[Any]:
    row: list[Any] = [table_number]
    for name, value in attrs.items():
        kind = value.type
        row += (name, kind, _b64(value.value) if kind == "B" else value.value)
    return row


def write_snapshot(
    data_dir: Path, copied: Mapping[str, list[dict[str, Any]]], taken_at: datetime | None = None
) -> tuple[Path, int]:
    """Write a snapshot atomically: a temporary file, fsync, rename over the old one, fsync of the directory.

    `taken_at` (stored in the header): every write completed before it is in the copy.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    target = snapshot_path(data_dir)
    names = list(copied)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "taken_at": (taken_at or datetime.now(UTC)).isoformat(),
        "tables": names,
        "items": [len(copied[name]) for name in names],
    }
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    tmp = data_dir / f".{SNAPSHOT_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                lines = [encode(header)]
                for number, name in enumerate(names):
                    for attrs in copied[name]:
                        lines.append(encode(_flat(number, attrs)))
                        if len(lines) >= _LINES_PER_WRITE:
                            lines.append("")
                            gz.write("\n".join(lines).encode())
                            lines.clear()
                lines.append("")
                gz.write("\n".join(lines).encode())
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(data_dir)
    return target, target.stat().st_size


def _fsync_dir(directory: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory; its renames are durable once done
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_header(path: Path) -> dict[str, Any]:
    """A snapshot's header line; SnapshotError for another format or version."""
    try:
        with gzip.open(path, "rb") as fh:
            header = json.loads(fh.readline())
    except (OSError, EOFError, ValueError) as exc:
        raise SnapshotError(f"{path} is not a readable snapshot ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotError(f"{path} is not a usage-metering local snapshot")
    if header.get("version") != VERSION:
        raise SnapshotError(
            f"{path} is a version {header.get('version')} snapshot and this code reads version {VERSION}: "
            "start with FRESH=1 to begin with empty tables (the file is kept as "
            f"{PREVIOUS_FILE}), or run the code that wrote it"
        )
    return header


def load(data_dir: Path, region: str, tables: Iterable[str]) -> SnapshotInfo | None:
    """Load the snapshot in `data_dir` into the stage's tables (created, empty); None if there is none.

    Items of tables not named in `tables` are skipped. SnapshotError if the file is of
    another format or version, damaged or incomplete.
    """
    path = snapshot_path(data_dir)
    if not path.exists():
        return None
    started = time.perf_counter()
    header = read_header(path)
    names: list[str] = header["tables"]
    wanted = set(tables)
    counts = dict.fromkeys((name for name in names if name in wanted), 0)
    batches: dict[int, list[list[Any]]] = {n: [] for n, name in enumerate(names) if name in wanted}
    collecting = gc.isenabled()
    gc.disable()  # millions of long-lived objects: collection passes while loading would only slow it
    try:
        with gzip.open(path, "rb") as fh:
            fh.readline()
            for line in fh:
                row = json.loads(line)
                batch = batches.get(row[0])
                if batch is None:
                    continue
                batch.append(row[1:])
                if len(batch) >= _ITEMS_PER_RESTORE:
                    counts[names[row[0]]] += restore_items(region, names[row[0]], batch)
                    batch.clear()
        for number, batch in batches.items():
            counts[names[number]] += restore_items(region, names[number], batch)
    except (OSError, EOFError, ValueError, IndexError, TypeError) as exc:
        raise SnapshotError(f"{path} is damaged ({exc})") from exc
    finally:
        if collecting:
            gc.enable()
    expected = {name: n for name, n in zip(names, header["items"], strict=True) if name in wanted}
    if counts != expected:
        raise SnapshotError(f"{path} is incomplete: its header lists {expected} items, the file holds {counts}")
    return SnapshotInfo(path, counts, path.stat().st_size, time.perf_counter() - started)


def claim(data_dir: Path) -> IO[str]:
    """Lock the data directory for this process (created if missing); SnapshotError if another holds it.

    The lock lasts until the returned file is closed or the process ends.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 -- held open for the run
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one stack per directory is then up to the user
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise SnapshotError(f"{data_dir} is in use by another local stack (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def set_aside(data_dir: Path) -> Path | None:
    """Rename the current snapshot to PREVIOUS_FILE (a fresh start keeps the old data one step back)."""
    path = snapshot_path(data_dir)
    if not path.exists():
        return None
    previous = data_dir / PREVIOUS_FILE
    os.replace(path, previous)
    _fsync_dir(data_dir)
    return previous


def save(data_dir: Path, region: str, tables: Iterable[str], lock: AbstractContextManager[Any]) -> SnapshotInfo:
    """Copy the tables while holding `lock`, then write the copy to disk without it."""
    taken_at = datetime.now(UTC)  # every write completed before this is in the copy
    started = time.perf_counter()
    copied = capture(region, tables, lock)
    locked = time.perf_counter() - started
    path, size = write_snapshot(data_dir, copied, taken_at)
    counts = {name: len(rows) for name, rows in copied.items()}
    return SnapshotInfo(path, counts, size, time.perf_counter() - started, locked)


# -- the periodic writer --------------------------------------------------------------------------------


SNAPSHOT_SHARE_FACTOR = 9  # the interval is at least 9x the last save's duration: saves take <= 10% of the time


class Snapshotter(threading.Thread):
    """Saves a snapshot every `interval` seconds when a write happened since the last one.

    A save that takes long (a large table) stretches the interval to SNAPSHOT_SHARE_FACTOR times its
    duration, so snapshots never take more than a tenth of the process's time (at 100,000 events a
    save takes a few seconds, so a snapshot follows a change within about a minute).
    """

    def __init__(
        self,
        interval: float,
        save_now: Callable[[], SnapshotInfo],
        on_error: Callable[[Exception], None],
    ) -> None:
        super().__init__(name="snapshotter", daemon=True)
        self.interval = interval
        self._save = save_now
        self._on_error = on_error
        self._stop_event = threading.Event()
        self._changed = threading.Event()
        self._save_lock = threading.Lock()
        self.saved = 0
        self.last: SnapshotInfo | None = None

    def mark_changed(self) -> None:
        """Record that a write reached the tables; call it once the write is applied."""
        self._changed.set()

    @property
    def changed(self) -> bool:
        return self._changed.is_set()

    def save(self, force: bool = False) -> SnapshotInfo | None:
        """Save now if something changed (or if forced); the change mark is cleared before the copy."""
        with self._save_lock:
            if not force and not self._changed.is_set():
                return None
            self._changed.clear()
            try:
                info = self._save()
            except BaseException:
                self._changed.set()  # the previous snapshot is intact; try again next time
                raise
            self.saved += 1
            self.last = info
            return info

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(
            max(self.interval, SNAPSHOT_SHARE_FACTOR * self.last.seconds if self.last else 0.0)
        ):
            try:
                self.save()
            except Exception as exc:
                self._on_error(exc)
