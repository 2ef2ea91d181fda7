"""Backfill import (CSV or JSON Lines, through the batch API) and usage export to CSV.

Import is resumable: every row gets an idempotency key (its own `idempotency_key`,
or one derived from the file's row number and content), so re-running the same
file creates no duplicates; a state file beside the input remembers how far a
run got, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from chalicelib import jsonutil

BATCH_SIZE = 100
EXPORT_COLUMNS = [
    "id",
    "service_line_id",
    "meter",
    "quantity",
    "unit",
    "period_date",
    "recorded_at",
    "source",
    "metadata",
]
_EVENT_FIELDS = ("service_line_id", "meter", "quantity", "period_date", "idempotency_key", "source", "metadata")


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ApiClient:
    """A small client of the native API with retries (safe: writes carry idempotency keys)."""

    def __init__(self, base_url: str, api_key: str, retries: int = 4, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.retries = retries
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = jsonutil.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as response:
                    return jsonutil.loads(response.read())
            except urllib.error.HTTPError as err:
                payload = err.read()
                parsed = jsonutil.loads(payload) if payload else None
                if (err.code < 500 and err.code != 429) or attempt == self.retries:
                    raise ApiError(err.code, parsed) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == self.retries:
                    raise
            time.sleep(min(8.0, 0.25 * 2**attempt))
        raise AssertionError("unreachable")


@dataclass
class ImportState:
    """How far an import of one file got (kept beside the file)."""

    file_sha256: str
    rows_done: int = 0


@dataclass
class Row:
    number: int  # 1-based data row number
    event: dict[str, Any] | None
    error: str | None = None
    raw: str = ""


@dataclass
class ImportReport:
    rows: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    skipped_already_imported: int = 0
    rejections: list[tuple[int, str, str]] = field(default_factory=list)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _derive_key(digest_of_row: str, number: int) -> str:
    return f"import-{number}-{digest_of_row[:40]}"


def _finish_event(event: dict[str, Any], number: int, raw: str) -> dict[str, Any]:
    if not event.get("idempotency_key"):
        event["idempotency_key"] = _derive_key(hashlib.sha256(raw.encode()).hexdigest(), number)
    return event


def read_rows(path: Path) -> Iterator[Row]:
    """Rows of a CSV (header: service_line_id, meter, quantity, [period_date, idempotency_key,
    source, metadata as JSON]) or JSON Lines file (one event object per line)."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            number = 0
            for line in fh:
                if not line.strip():
                    continue
                number += 1
                try:
                    parsed = jsonutil.loads(line)
                    if not isinstance(parsed, dict):
                        raise ValueError("a line must be a JSON object")
                    yield Row(number, _finish_event(parsed, number, line.strip()), raw=line.strip())
                except ValueError as exc:
                    yield Row(number, None, f"invalid JSON line: {exc}", raw=line.strip())
        return
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"service_line_id", "meter", "quantity"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: the CSV header lacks {', '.join(sorted(missing))}")
        for number, record in enumerate(reader, start=1):
            raw = json.dumps(record, sort_keys=True)
            try:
                event: dict[str, Any] = {}
                for name in _EVENT_FIELDS:
                    value = (record.get(name) or "").strip()
                    if not value:
                        continue
                    if name == "quantity":
                        try:
                            number_value = jsonutil.loads(value)
                        except ValueError:
                            number_value = None
                        if isinstance(number_value, bool) or not isinstance(number_value, (int, Decimal)):
                            raise ValueError(f"quantity {value!r} is not a number")
                        event[name] = number_value
                    elif name == "metadata":
                        event[name] = jsonutil.loads(value)
                    else:
                        event[name] = value
                yield Row(number, _finish_event(event, number, raw), raw=raw)
            except ValueError as exc:
                yield Row(number, None, str(exc), raw=raw)


def _state_path(path: Path) -> Path:
    return path.with_name(path.name + ".import-state.json")


def import_file(
    client: ApiClient,
    path: Path,
    rejected_out: Path | None = None,
    progress: IO[str] | None = sys.stderr,
    batch_size: int = BATCH_SIZE,
) -> ImportReport:
    """Import a file through `POST /v1/metering/events/batch`; resumes a run of the same file."""
    digest = file_digest(path)
    state_file = _state_path(path)
    state = ImportState(digest)
    if state_file.exists():
        saved = json.loads(state_file.read_text())
        if saved.get("file_sha256") == digest:
            state = ImportState(digest, int(saved.get("rows_done", 0)))
    report = ImportReport(skipped_already_imported=state.rows_done)
    total = sum(1 for _ in read_rows(path))
    pending: list[Row] = []
    # A resumed run adds to the rows an earlier run of the same file rejected.
    append_rejections = state.rows_done > 0

    def write_rejections(rows: list[tuple[int, str, str]]) -> None:
        nonlocal append_rejections
        if rejected_out is None or not rows:
            return
        appending = append_rejections and rejected_out.exists()
        with rejected_out.open("a" if appending else "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            if not appending:
                writer.writerow(["row", "reason", "content"])
            writer.writerows([number, reason, raw] for number, raw, reason in rows)
        append_rejections = True

    def flush() -> None:
        already_rejected = len(report.rejections)
        events = [r for r in pending if r.event is not None]
        for r in pending:
            if r.event is None:
                report.rejections.append((r.number, r.raw, r.error or "unreadable row"))
        if events:
            answer = client.request("POST", "/v1/metering/events/batch", {"events": [r.event for r in events]})
            for row, result in zip(events, answer["data"], strict=True):
                status = result["status"]
                if status == "accepted":
                    report.accepted += 1
                elif status == "duplicate":
                    report.duplicate += 1
                else:
                    error = result.get("error", {})
                    report.rejections.append((row.number, row.raw, f"{error.get('code')}: {error.get('message')}"))
        write_rejections(report.rejections[already_rejected:])  # before the progress that skips these rows
        state.rows_done = pending[-1].number
        state_file.write_text(json.dumps(asdict(state)))
        pending.clear()
        if progress is not None:
            progress.write(f"\rimported {state.rows_done}/{total} rows")
            progress.flush()

    for row in read_rows(path):
        report.rows += 1
        if row.number <= report.skipped_already_imported:
            continue
        pending.append(row)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    if progress is not None:
        progress.write("\n")
    report.rejected = len(report.rejections)
    return report


def export_usage(client: ApiClient, out: IO[str], filters: dict[str, str]) -> int:
    """Write every event matching the filters of `GET /v1/usage` as CSV; returns the rows written."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    rows = 0
    cursor: str | None = None
    while True:
        query = {k: v for k, v in filters.items() if v} | {"limit": "100"}
        if cursor:
            query["cursor"] = cursor
        page = client.request("GET", "/v1/usage?" + urllib.parse.urlencode(query))
        for event in page["data"]:
            writer.writerow(
                [event[c] if c != "metadata" else jsonutil.dumps(event.get("metadata") or {}) for c in EXPORT_COLUMNS]
            )
            rows += 1
        cursor = page["meta"]["cursor"]
        if not page["meta"]["has_more"]:
            return rows
