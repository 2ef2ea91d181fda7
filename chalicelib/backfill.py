"""Backfill import (CSV or JSON Lines, through the batch API) and usage export to CSV.

Every row's idempotency key is its own `idempotency_key`, or one derived from the row's
content (never from its position), so re-running a file, or an edited copy of it, stores
each event once. A state file beside the input remembers how far an interrupted run got;
Ctrl-C stops cleanly and the same command resumes. Rejected rows are written in the
input's own format with a `reason`, ready to be fixed and imported again as they are.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import random
import re
import shlex
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal

from chalicelib import jsonutil
from chalicelib.domain.usage import canonical_json

if TYPE_CHECKING:
    from rich.progress import Task
    from rich.text import Text

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
    # corrections (voids and adjustments) and the marks on the events they correct; empty on plain usage
    "kind",
    "corrects",
    "correction_reason",
    "created_by",
    "voided_by",
    "adjusted_by",
]
# export column -> the listing's field (a correction's reason is not the rejects file's `reason` column)
CORRECTION_COLUMNS = {
    "kind": "kind",
    "corrects": "corrects",
    "correction_reason": "reason",
    "created_by": "created_by",
    "voided_by": "voided_by",
    "adjusted_by": "adjusted_by",
}
REASON = "reason"  # the column (CSV) or field (JSON Lines) a rejects file adds; ignored on import
UNPARSED = "unparsed_line"  # a JSON Lines reject that was not a JSON object keeps its text here
CONTENT_KEY_PREFIX = "row-"
_EVENT_FIELDS = ("service_line_id", "meter", "quantity", "period_date", "idempotency_key", "source", "metadata")
_REQUIRED_COLUMNS = frozenset({"service_line_id", "meter", "quantity"})
_EXTRA_CELLS = "\x00extra"
# Per-item codes after which the same item may be sent again (it may or may not have been stored).
_RETRYABLE_ITEM_CODES = frozenset({"service_unavailable", "internal_error"})
_ITEM_RETRIES = 3
# How much earlier than our own send (on the server's clock) a record may look and still be ours:
# recorded_at is cut to milliseconds, and servers' clocks differ a little.
_CLOCK_MARGIN = 0.25
_STATE_VERSION = 2


# -- the HTTP client -------------------------------------------------------------------


class ApiError(Exception):
    """The API refused a request, or gave no answer after every retry (status 0)."""

    def __init__(self, status: int, body: Any, message: str | None = None) -> None:
        super().__init__(message or f"HTTP {status}: {body}")
        self.status = status
        self.body = body

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (resuming the import is worth it)."""
        return self.status == 0 or self.status == 429 or self.status >= 500


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds to wait; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ApiClient:
    """A small client of the native API.

    A timeout, a broken connection, a 5xx or a 429 is retried with exponential backoff and
    jitter, honouring Retry-After (writes carry idempotency keys, so resending one is safe).
    The timeout is long: a slow batch must not be mistaken for a lost one.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        retries: int = 6,
        timeout: float = 120.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        # A lower bound of (server clock - our clock) in seconds, from the Date headers seen; None before any.
        self.clock_offset: float | None = None

    def request(self, method: str, path: str, body: Any = None, on_retry: Callable[[str], None] | None = None) -> Any:
        """Send one request (retrying as above); its JSON answer. `on_retry(reason)` runs before each resend."""
        data = jsonutil.dumps(body).encode() if body is not None else None
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                status, headers, payload = self._send(method, path, data)
            except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, refused connections
                if last:
                    raise ApiError(
                        0, None, f"no answer from {self.base_url} after {attempt + 1} attempts: {exc}"
                    ) from exc
                reason, wait = f"no answer ({exc.__class__.__name__})", self.backoff_delay(attempt)
            else:
                self._note_clock(headers)
                parsed = _parse_body(payload)
                if 200 <= status < 300:
                    return parsed
                if status != 429 and status < 500:
                    raise ApiError(status, parsed)
                asked = retry_after_seconds(headers.get("Retry-After"))
                if asked is not None and asked > self.max_retry_after:
                    raise ApiError(status, parsed, f"HTTP {status}, retry after {asked:.0f} s: {parsed}")
                if last:
                    raise ApiError(status, parsed)
                reason, wait = f"HTTP {status}", asked if asked is not None else self.backoff_delay(attempt)
            if on_retry is not None:
                on_retry(reason)
            self.sleep(wait)
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, data: bytes | None) -> tuple[int, Message, bytes]:
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before resend number `attempt + 1`: exponential, with jitter."""
        return float(min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0))

    def _note_clock(self, headers: Message) -> None:
        received = time.time()
        try:
            server = parsedate_to_datetime(headers.get("Date", "")).timestamp()
        except (TypeError, ValueError, IndexError):
            return
        # The Date header is cut to the second and was written before we read it, so this is a lower bound.
        offset = server - received
        self.clock_offset = offset if self.clock_offset is None else max(self.clock_offset, offset)

    def stored_since(self, recorded_at: str | None, sent_at: float) -> bool:
        """Whether a record may have been stored by a request we sent at `sent_at` (our clock)."""
        if not recorded_at or self.clock_offset is None:
            return True  # nothing to compare: trust that our own lost attempt stored it
        try:
            recorded = datetime.fromisoformat(recorded_at).timestamp()
        except ValueError:
            return True
        return recorded >= sent_at + self.clock_offset - _CLOCK_MARGIN


def _parse_body(payload: bytes) -> Any:
    if not payload:
        return None
    try:
        return jsonutil.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")[:500]


# -- reading the input ------------------------------------------------------------------


@dataclass
class Row:
    """One data row of the input."""

    number: int  # 1-based data row (CSV: the header is row 0; JSON Lines: the line number)
    record: dict[str, Any]  # the row as read, without a `reason`: what a rejects file writes back
    event: dict[str, Any] | None = None  # what is sent; None when the row cannot be read
    error: str | None = None
    key: str = ""  # its idempotency key
    identity: bytes = b""  # equal for two rows that are the same event
    repeat: bool = False  # an earlier row of the file is the same event


@dataclass
class Source:
    """An input file: its format and, for CSV, its columns (without `reason`)."""

    path: Path
    format: Literal["csv", "jsonl"]
    columns: list[str] = field(default_factory=list)

    def rows(self) -> Iterator[Row]:
        """Every data row, in order; a CSV row of only empty cells is skipped."""
        if self.format == "jsonl":
            yield from self._jsonl_rows()
        else:
            yield from self._csv_rows()

    def _jsonl_rows(self) -> Iterator[Row]:
        with self.path.open(encoding="utf-8-sig") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                text = line.rstrip("\r\n")
                try:
                    parsed = jsonutil.loads(text)
                except ValueError as exc:
                    yield Row(number, {UNPARSED: text}, error=f"not JSON: {exc}")
                    continue
                if not isinstance(parsed, dict):
                    yield Row(number, {UNPARSED: text}, error="a line must be a JSON object")
                    continue
                parsed.pop(REASON, None)
                yield _keyed(Row(number, parsed, dict(parsed)))

    def _csv_rows(self) -> Iterator[Row]:
        with self.path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, restkey=_EXTRA_CELLS)
            for number, record in enumerate(reader, start=1):
                extra = record.pop(_EXTRA_CELLS, None)
                record.pop(REASON, None)
                record = {k: v if v is not None else "" for k, v in record.items()}
                if not extra and not any(v.strip() for v in record.values()):
                    continue
                if extra:
                    yield Row(number, record, error=f"the row has {len(extra)} more cells than the header")
                    continue
                yield _csv_row(number, record)


def _csv_row(number: int, record: dict[str, str]) -> Row:
    event: dict[str, Any] = {}
    for name in _EVENT_FIELDS:
        value = record.get(name, "").strip()
        if not value:
            continue
        if name == "quantity":
            try:
                quantity = jsonutil.loads(value)
            except ValueError:
                quantity = None
            if isinstance(quantity, bool) or not isinstance(quantity, (int, Decimal)):
                return Row(number, record, error=f"quantity {value!r} is not a number")
            event[name] = quantity
        elif name == "metadata":
            try:
                event[name] = jsonutil.loads(value)
            except ValueError as exc:
                return Row(number, record, error=f"metadata is not JSON: {exc}")
        else:
            event[name] = value
    return _keyed(Row(number, record, event))


def content_key(event: dict[str, Any]) -> str:
    """An idempotency key from what defines the event; 5 and 5.0, or metadata in another order, agree.

    The fields are those of the server's own payload fingerprint, with its defaults (source "api",
    no metadata), so two rows with one key are never refused as a conflict.
    """
    content = {
        "service_line_id": event.get("service_line_id"),
        "meter": event.get("meter"),
        "quantity": event.get("quantity"),
        "period_date": event.get("period_date"),
        "source": event.get("source") or "api",
        "metadata": event.get("metadata") or {},
    }
    try:
        text = canonical_json(content)
    except (TypeError, ValueError):  # a value the API will refuse anyway (a list of numbers, ...)
        text = json.dumps(content, sort_keys=True, default=str)
    return CONTENT_KEY_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:48]


def _keyed(row: Row) -> Row:
    assert row.event is not None
    derived = content_key(row.event)
    explicit = row.event.get("idempotency_key")
    if explicit is None or explicit == "":
        row.event["idempotency_key"] = row.key = derived
    else:
        row.key = str(explicit)
    # The same explicit key with other content is not the same event (the server will say so).
    row.identity = hashlib.blake2b(f"{row.key}\n{derived}".encode(), digest_size=16).digest()
    return row


def _sniff_format(path: Path) -> Literal["csv", "jsonl"]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl"
    with path.open(encoding="utf-8-sig") as fh:
        while chunk := fh.read(4096):
            text = chunk.lstrip()
            if text:
                return "jsonl" if text.startswith("{") else "csv"
    return "csv"


def open_source(path: Path) -> Source:
    """The input at `path`: JSON Lines (.jsonl, .ndjson, or lines that start with `{`) or CSV with a header."""
    fmt = _sniff_format(path)
    if fmt == "jsonl":
        return Source(path, "jsonl")
    with path.open(encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), [])
    columns = [c for c in header if c != REASON]
    missing = _REQUIRED_COLUMNS - set(columns)
    if missing:
        raise ValueError(f"{path}: the CSV header lacks {', '.join(sorted(missing))}")
    return Source(path, "csv", columns)


def read_rows(path: Path) -> Iterator[Row]:
    """The data rows of a CSV or JSON Lines file."""
    return open_source(path).rows()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_rejects_path(path: Path) -> Path:
    """Where the rejected rows of `path` go by default: beside it, in its own format."""
    suffix = ".jsonl" if _sniff_format(path) == "jsonl" else ".csv"
    return path.with_name(path.name + ".rejected" + suffix)


# -- the rejects file -------------------------------------------------------------------


class RejectsWriter:
    """Writes rejected rows in the input's format, with a `reason`; appends on a resume."""

    def __init__(self, path: Path | None, source: Source, keep_bytes: int | None) -> None:
        self.path = path
        self.source = source
        self.size = 0
        if path is None:
            return
        if keep_bytes is None or not path.exists():
            path.unlink(missing_ok=True)  # a fresh run: no stale rejects from an earlier one
        else:
            with path.open("r+b") as fh:  # drop what was written after the last recorded batch
                fh.truncate(keep_bytes)
            self.size = keep_bytes

    def write(self, rows: list[tuple[Row, str]]) -> None:
        if self.path is None or not rows:
            return
        with self.path.open("a", encoding="utf-8", newline="") as fh:
            if self.source.format == "jsonl":
                for row, reason in rows:
                    fh.write(jsonutil.dumps({**row.record, REASON: reason}) + "\n")
            else:
                writer = csv.DictWriter(fh, fieldnames=[*self.source.columns, REASON], extrasaction="ignore")
                if self.size == 0:
                    writer.writeheader()
                for row, reason in rows:
                    writer.writerow({**row.record, REASON: reason})
        self.size = self.path.stat().st_size


# -- state and report -------------------------------------------------------------------


@dataclass
class ImportState:
    """How far an import of one file got (kept beside the file while a run is unfinished)."""

    file_sha256: str
    version: int = _STATE_VERSION
    rows_done: int = 0  # every row up to this number has its answer recorded
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    repeated: int = 0
    recovered: int = 0
    rejects_file: str | None = None
    rejects_bytes: int = 0
    # Keys sent whose answer is not recorded yet, with when (our clock) each was first sent.
    in_flight: dict[str, float] = field(default_factory=dict)


def _state_path(path: Path) -> Path:
    return path.with_name(path.name + ".import-state.json")


def _load_state(path: Path, digest: str) -> ImportState | None:
    state_file = _state_path(path)
    try:
        saved = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("file_sha256") != digest:
        return None  # another file, or this one edited: start over (content keys make that safe)
    if saved.get("version") != _STATE_VERSION:  # an older run kept only how far it got
        return ImportState(digest, rows_done=int(saved.get("rows_done", 0)))
    names = ImportState.__dataclass_fields__
    return ImportState(**{k: v for k, v in saved.items() if k in names})


def _save_state(path: Path, state: ImportState) -> None:
    target = _state_path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(asdict(state)))
    os.replace(temporary, target)  # never a half-written state file


@dataclass
class ImportReport:
    """The outcome of an import. Counts are for the whole file: a resumed run includes the earlier runs'."""

    rows: int = 0  # data rows in the file
    accepted: int = 0  # stored by this import (incl. `recovered`)
    duplicate: int = 0  # already stored, or repeating an earlier row (incl. `repeated`)
    rejected: int = 0
    repeated: int = 0  # of the duplicates: rows that repeat an earlier row of the file
    recovered: int = 0  # of the accepted: answered `duplicate` after an attempt of ours whose answer was lost
    skipped_already_imported: int = 0  # rows an earlier, interrupted run had settled
    resends: int = 0  # requests sent again after a timeout, a lost connection, a 5xx or a 429
    rows_done: int = 0  # rows settled so far (all of them unless interrupted)
    interrupted: bool = False
    rejects_file: Path | None = None

    def counts(self) -> str:
        repeated = f" ({self.repeated} of them repeated rows of the file)" if self.repeated else ""
        return f"accepted {self.accepted}, duplicate {self.duplicate}{repeated}, rejected {self.rejected}"

    def notes(self) -> list[str]:
        """What a user should know beyond the counts."""
        lines = []
        if self.skipped_already_imported:
            lines.append(
                f"resumed after row {self.skipped_already_imported} of an interrupted run: "
                "the counts are for the whole file"
            )
        if self.repeated:
            lines.append(f"{self.repeated} rows repeat an earlier row of the file: counted as duplicate, stored once")
        if self.resends:
            lines.append(
                f"{self.resends} requests were sent again after a timeout, a lost connection, a 5xx or a 429; "
                f"{self.recovered} rows that an attempt whose answer was lost had stored are counted as accepted"
            )
        elif self.recovered:
            lines.append(f"{self.recovered} rows stored by the interrupted run's last request are counted as accepted")
        return lines


class ImportInterrupted(SystemExit):
    """Ctrl-C stopped an import; the state is saved. Exits with 130 (no traceback) unless caught."""

    def __init__(self, report: ImportReport, resume: str) -> None:
        super().__init__(130)
        self.report = report
        self.resume = resume


# -- Ctrl-C -----------------------------------------------------------------------------


class _CtrlC:
    """Holds Ctrl-C back while a batch's outcome is written (rejects, then state), so the two always agree."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False
        self.previous: Any = None

    def __enter__(self) -> _CtrlC:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def held(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.depth == 0 and self.pending:
            self.pending = False
            raise KeyboardInterrupt


# -- progress ---------------------------------------------------------------------------


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.speed
            return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")

    return RateColumn()


@contextmanager
def _progress_bar(
    stream: IO[str] | None, show: bool | None, total: int, done: int, label: str
) -> Iterator[Callable[[int], None]]:
    """A bar with rate and ETA on `stream` (rich), only on a terminal unless `show` is True."""
    if stream is None or show is False:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(file=stream, force_terminal=True if show else None, force_interactive=True if show else None)
    if not console.is_interactive:
        yield lambda n: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _rate_column(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


# -- the import -------------------------------------------------------------------------


def _python() -> str:
    relative = os.path.relpath(sys.executable)
    return relative if not relative.startswith("..") and os.sep in relative else sys.executable


def resume_command(path: Path, base_url: str, rejected_out: Path | None) -> str:
    """The command that resumes this import: the one that is running, when it is the CLI."""
    argv = sys.argv
    if argv and Path(argv[0]).name == "cli.py" and Path(argv[0]).parent.name == "chalicelib":
        return shlex.join([_python(), "-m", "chalicelib.cli", *argv[1:]])
    parts = [_python(), "-m", "chalicelib.cli", "import", str(path), "--base-url", base_url]
    if rejected_out is not None:
        parts += ["--rejected", str(rejected_out)]
    return shlex.join(parts)


_BATCH_INDEX = re.compile(r"^events\[\d+\]\.")


def _reason(number: int, error: Any) -> str:
    if isinstance(error, dict):
        message = _BATCH_INDEX.sub("", str(error.get("message", "")))
        return f"row {number}: {error.get('code')}: {message}"
    return f"row {number}: {error}"


class _Run:
    """One run of an import over a file, batch by batch."""

    def __init__(self, client: ApiClient, source: Source, state: ImportState, rejects: RejectsWriter) -> None:
        self.client = client
        self.source = source
        self.state = state
        self.rejects = rejects
        self.resends = 0
        # Keys an earlier run sent, whose answer it never recorded (it was interrupted).
        self.carried = dict(state.in_flight)
        self.total = sum(1 for _ in source.rows())
        self.skipped = self.rows_done()

    @classmethod
    def open(cls, client: ApiClient, path: Path, rejected_out: Path | None) -> _Run:
        """A run over `path`, resuming an interrupted run of the same file if there is one."""
        source = open_source(path)
        if rejected_out is not None and rejected_out.resolve() == path.resolve():
            raise ValueError(f"{path}: the rejects file must not be the input")
        digest = file_digest(path)
        saved = _load_state(path, digest)
        state = saved or ImportState(digest)
        rejects_file = str(rejected_out) if rejected_out else None
        same_rejects = saved is not None and saved.rejects_file == rejects_file
        rejects = RejectsWriter(rejected_out, source, state.rejects_bytes if same_rejects else None)
        state.rejects_file, state.rejects_bytes = rejects_file, rejects.size
        return cls(client, source, state, rejects)

    def rows_done(self) -> int:
        return sum(1 for r in self.source.rows() if r.number <= self.state.rows_done)

    def batches(self, size: int) -> Iterator[list[Row]]:
        """The rows not settled yet, `size` at a time; each marked if it repeats an earlier row."""
        seen: set[bytes] = set()
        pending: list[Row] = []
        for row in self.source.rows():
            if row.identity:
                row.repeat = row.identity in seen
                seen.add(row.identity)
            if row.number <= self.state.rows_done:
                continue
            pending.append(row)
            if len(pending) >= size:
                yield pending
                pending = []
        if pending:
            yield pending

    def report(self, interrupted: bool = False) -> ImportReport:
        state = self.state
        return ImportReport(
            rows=self.total,
            accepted=state.accepted,
            duplicate=state.duplicate,
            rejected=state.rejected,
            repeated=state.repeated,
            recovered=state.recovered,
            skipped_already_imported=self.skipped,
            resends=self.resends,
            rows_done=self.rows_done() if interrupted else self.total,
            interrupted=interrupted,
            rejects_file=Path(state.rejects_file) if state.rejects_file else None,
        )

    def settle(self, rows: list[Row], ctrl_c: _CtrlC) -> None:
        """Send a batch of rows and record every answer."""
        outcomes: dict[int, tuple[str, str | None]] = {}
        for i, row in enumerate(rows):
            if row.event is None:
                outcomes[i] = ("rejected", _reason(row.number, row.error))
        todo = [i for i in range(len(rows)) if i not in outcomes]
        for round_ in range(_ITEM_RETRIES + 1):
            if not todo:
                break
            if round_:
                self.client.sleep(self.client.backoff_delay(round_))
            todo = self._send(rows, todo, outcomes, ctrl_c, last=round_ == _ITEM_RETRIES)
        with ctrl_c.held():
            state = self.state
            rejected = []
            for i, row in enumerate(rows):
                status, reason = outcomes[i]
                if status == "rejected":
                    rejected.append((row, reason or ""))
                else:
                    setattr(state, status, getattr(state, status) + 1)
                if status == "duplicate" and row.repeat:
                    state.repeated += 1
                if reason == "recovered":
                    state.recovered += 1
                self.carried.pop(row.key, None)
            self.rejects.write(rejected)
            state.rejected += len(rejected)
            state.rejects_bytes = self.rejects.size
            state.rows_done = rows[-1].number
            state.in_flight = dict(self.carried)
            _save_state(self.source.path, state)

    def _send(
        self, rows: list[Row], todo: list[int], outcomes: dict[int, tuple[str, str | None]], ctrl_c: _CtrlC, last: bool
    ) -> list[int]:
        """One batch request for the rows at `todo`; the indexes to send again."""
        now = time.time()
        first_sent = {rows[i].key: self.state.in_flight.get(rows[i].key, now) for i in todo}
        # Some keys may already have been sent (an interrupted run, a retried item): keep the earliest time.
        lost = {k: self.carried[k] for k in first_sent if k in self.carried}
        with ctrl_c.held():
            self.state.in_flight = {**self.carried, **first_sent}
            _save_state(self.source.path, self.state)

        def lose(reason: str) -> None:
            self.resends += 1
            for key, sent in first_sent.items():
                lost.setdefault(key, sent)

        answer = self.client.request(
            "POST", "/v1/metering/events/batch", {"events": [rows[i].event for i in todo]}, on_retry=lose
        )
        again = []
        for i, result in zip(todo, answer["data"], strict=True):
            row, status = rows[i], result["status"]
            if status == "accepted":
                outcomes[i] = ("accepted", None)
            elif status == "duplicate":
                record = result.get("data") or {}
                ours = row.key in lost and self.client.stored_since(record.get("recorded_at"), lost[row.key])
                outcomes[i] = ("accepted", "recovered") if ours and not row.repeat else ("duplicate", None)
            else:
                error = result.get("error") or {}
                if error.get("code") in _RETRYABLE_ITEM_CODES and not last:
                    # It may have been stored without an answer: a later `duplicate` for it is ours.
                    self.carried.setdefault(row.key, first_sent[row.key])
                    again.append(i)
                else:
                    outcomes[i] = ("rejected", _reason(row.number, error))
        return again


def import_file(
    client: ApiClient,
    path: Path,
    rejected_out: Path | None = None,
    progress: IO[str] | Literal["stderr"] | None = "stderr",
    batch_size: int = BATCH_SIZE,
    *,
    show_progress: bool | None = None,
    command: str | None = None,
) -> ImportReport:
    """Import a file through `POST /v1/metering/events/batch`; resumes an interrupted run of the same file.

    `progress` (default: standard error; None: silent) gets the progress bar (on a terminal, or when
    `show_progress`), a closing line and, on Ctrl-C, the counts so far and `command` (default: the
    running one) to resume; then ImportInterrupted is raised. Rejected rows go to `rejected_out` in
    the input's format.
    """
    console = sys.stderr if progress == "stderr" else progress
    resume = command or resume_command(path, client.base_url, rejected_out)

    def say(text: str) -> None:
        if console is not None:
            console.write(text + "\n")
            console.flush()

    with _CtrlC() as ctrl_c:
        run: _Run | None = None
        try:
            run = _Run.open(client, path, rejected_out)
            started = time.monotonic()
            with _progress_bar(console, show_progress, run.total, run.skipped, f"importing {path.name}") as advance:
                for batch in run.batches(batch_size):
                    run.settle(batch, ctrl_c)
                    advance(len(batch))
        except KeyboardInterrupt:
            ctrl_c.depth += 1  # a second Ctrl-C must not cut the summary short
            partial = run.report(interrupted=True) if run else ImportReport(interrupted=True)
            say(f"\ninterrupted after {partial.rows_done} of {partial.rows} rows; so far: {partial.counts()}")
            if partial.rejected and rejected_out is not None:
                say(f"rows rejected so far: {rejected_out}")
            say(f"resume with: {resume}")
            raise ImportInterrupted(partial, resume) from None
        except ApiError as exc:
            if exc.retryable and run is not None:
                say(f"stopped after row {run.state.rows_done}: {exc}\nresume with: {resume}")
            raise
    _state_path(path).unlink(missing_ok=True)  # finished: a later run of the file starts over
    final = run.report()
    elapsed = time.monotonic() - started
    done_now = run.total - run.skipped
    say(f"imported {done_now} rows in {elapsed:.1f} s ({done_now / elapsed if elapsed else 0:,.0f} rows/s)")
    for note in final.notes():
        say(note)
    return final


# -- export -----------------------------------------------------------------------------


def export_cell(column: str, event: dict[str, Any]) -> Any:
    """One CSV cell of an exported event: metadata as JSON, numbers in plain notation (0.000000001, not 1E-9)."""
    if column == "metadata":
        return jsonutil.dumps(event.get("metadata") or {})
    if column in CORRECTION_COLUMNS:  # absent from plain usage events (and from servers before corrections)
        value = event.get(CORRECTION_COLUMNS[column])
        if column == "kind" and value is None:
            return "usage"
        return " ".join(value) if isinstance(value, list) else (value or "")
    value = event[column]
    return jsonutil.plain_number(value) if isinstance(value, Decimal) else value


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
            writer.writerow([export_cell(c, event) for c in EXPORT_COLUMNS])
            rows += 1
        cursor = page["meta"]["cursor"]
        if not page["meta"]["has_more"]:
            return rows
