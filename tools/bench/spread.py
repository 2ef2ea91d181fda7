"""The spread scenario: real-shaped usage through the local stack, as `make run` runs it.

100,000 events (the demo organizations, every active meter, 90 days with daily and weekly rhythm,
retries of the same key, late events, a line paused part way) are sent over HTTP in batches of 100
to a local stack that keeps its data in a directory (snapshots on, as `make run`). Per 10,000 events
it reports the ingest rate and the server's resident memory; then the last-to-first rate ratio, and
whether every summary equals the exact decimal sums of what was accepted once the aggregator caught
up. Writes docs/benchmarks-spread.md.

    python -m tools.bench.spread [--events 100000] [--days 90]   (also: python -m tools.bench_spread)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import simplejson

from chalicelib.config import DEFAULT_PERIOD_DAYS_BACK
from chalicelib.local import workload
from chalicelib.storage.catalog_repo import DynamoCatalogRepository
from chalicelib.storage.schema import TABLES, resource_name
from tools.bench.common import ROOT, log
from tools.bench.stack import Answer, local_stack, post_concurrently

DOC = ROOT / "docs" / "benchmarks-spread.md"
KEYS = {
    "ORG-26-090500": "mk_demo_ORG2609050_full_access_0001",
    "ORG-26-100200": "mk_demo_ORG26100200_full_access_0003",
}
CHUNK_EVENTS = 10_000
SETTLE_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Chunk:
    """One slice of the stream as sent: its events, how long it took, the server's memory after it."""

    events: int
    accepted: int
    seconds: float
    rss_mb: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def judge_spread(status: int, data: bytes) -> Answer | None:
    """A batch answer: events stored, and events answered otherwise (retries; a paused line's, refused)."""
    if status != 200:
        return None
    results = json.loads(data, parse_float=Decimal)["data"]
    refused = [r for r in results if r["status"] == "rejected"]
    if any(r["error"]["code"] != "service_line_inactive" for r in refused):
        return None  # the workload sends nothing else the service should refuse
    accepted = [r for r in results if r["status"] == "accepted"]
    total = sum((Decimal(str(r["data"]["quantity"])) for r in accepted), Decimal(0))
    return Answer(len(accepted), len(results) - len(accepted), total)


def rss_mb(pid: int) -> float:
    """The resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def install_lines(aws_url: str, work: workload.Workload, since: dt.datetime) -> None:
    """The workload's extra service lines, written through the stack's AWS endpoint (as an operator would)."""
    client = boto3.client(
        "dynamodb", endpoint_url=aws_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    catalog = DynamoCatalogRepository(resource_name(TABLES["catalog"].base_name, "dev"), client=client)
    workload.install_catalog(catalog, work.organizations, since)


def post_json(base: str, path: str, key: str, body: Any | None = None, method: str = "GET") -> tuple[int, Any]:
    import urllib.request

    data = simplejson.dumps(body, use_decimal=True).encode() if body is not None else None
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method if body is None else "POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read(), parse_float=Decimal)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}", parse_float=Decimal)


def send(base: str, host: str, port: int, work: workload.Workload, pid: int) -> list[Chunk]:
    """Send the batches in stream order, a chunk of CHUNK_EVENTS events at a time; pause lines on time."""
    chunks: list[Chunk] = []
    pauses = sorted(work.pauses, key=lambda p: p.at)
    pending: list[workload.Batch] = []

    def flush() -> None:
        if not pending:
            return
        by_org: dict[str, list[bytes]] = {}
        for batch in pending:
            body = simplejson.dumps(batch.body(), use_decimal=True).encode()
            by_org.setdefault(batch.organization_id, []).append(body)
        started = time.perf_counter()
        accepted = 0
        for org, bodies in by_org.items():
            run = post_concurrently(host, port, "/v1/metering/events/batch", bodies, judge_spread, key=KEYS[org])
            accepted += run.events
        seconds = time.perf_counter() - started
        events = sum(len(b.events) for b in pending)
        chunks.append(Chunk(events, accepted, seconds, rss_mb(pid)))
        log(f"  {sum(c.events for c in chunks):>7,} events: {events / seconds:6.1f} ev/s, {chunks[-1].rss_mb:6.0f} MB")
        pending.clear()

    count = 0
    for batch in work.batches:
        while pauses and pauses[0].at <= batch.sent_at:
            flush()
            pause = pauses.pop(0)
            status, answer = post_json(
                base, f"/v1/service-lines/{pause.service_line_id}/pause", KEYS[pause.organization_id], {}
            )
            if status != 200:
                raise RuntimeError(f"pausing {pause.service_line_id}: {status} {answer}")
        pending.append(batch)
        count += len(batch.events)
        if count >= CHUNK_EVENTS:
            flush()
            count = 0
    flush()
    return chunks


def summaries_match(base: str, expected: workload.Expected) -> tuple[bool, int]:
    """Whether every organization's summary equals the expected exact totals; and how many lines/meters differ."""
    wrong = 0
    for org, key in KEYS.items():
        first, last = expected.period(org)
        query = urllib.parse.urlencode({"from": first.isoformat(), "to": last.isoformat()})
        status, answer = post_json(base, f"/v1/usage/summary?{query}", key)
        if status != 200:
            raise RuntimeError(f"summary of {org}: {status} {answer}")
        have = {
            (line["service_line_id"], m["meter"]): Decimal(str(m["quantity"]))
            for line in answer["data"]["by_service_line"]
            for m in line["meters"]
        }
        want = {k: v for k, v in expected.by_line_meter(org, first, last).items() if v or k in have}
        wrong += sum(1 for k in set(have) | set(want) if have.get(k, Decimal(0)) != want.get(k, Decimal(0)))
    return wrong == 0, wrong


def wait_settled(base: str, expected: workload.Expected) -> tuple[float, bool, int]:
    started = time.perf_counter()
    ok, wrong = summaries_match(base, expected)
    while not ok and time.perf_counter() - started < SETTLE_TIMEOUT_S:
        time.sleep(5)
        ok, wrong = summaries_match(base, expected)
    return time.perf_counter() - started, ok, wrong


def render(chunks: Sequence[Chunk], settle_s: float, ok: bool, wrong: int, work: workload.Workload, args: Any) -> str:
    rows = ["| events sent | ev/s in this 10k | server RSS (MB) |", "|---|---|---|"]
    sent = 0
    for chunk in chunks:
        sent += chunk.events
        rows.append(f"| {sent:,} | {chunk.rate:.1f} | {chunk.rss_mb:.0f} |")
    first, last = chunks[0], chunks[-1]
    accepted = sum(c.accepted for c in chunks)
    peak = max(c.rss_mb for c in chunks)
    return "\n".join(
        [
            "# Benchmark: real-shaped data through the local stack",
            "",
            f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
            f"(load average at start {os.getloadavg()[0]:.1f}); `python -m tools.bench.spread "
            f"--events {args.events} --days {args.days}`.",
            "",
            f"{sent:,} events ({accepted:,} newly stored, the rest retries of stored keys or events of a paused "
            f"line) of {len(work.organizations)} organizations over {args.days} days and every active meter, "
            "in batches of 100 from 4 client threads, to a local stack that keeps its data in a directory "
            "(snapshots every 10 s, as `make run`).",
            "",
            *rows,
            "",
            f"- last 10k / first 10k rate: **{last.rate / first.rate:.2f}** ({last.rate:.1f} vs {first.rate:.1f} ev/s)",
            f"- peak server memory: **{peak:.0f} MB**",
            f"- the aggregator caught up {settle_s:.0f} s after the last batch; summaries "
            + ("**equal the exact decimal sums** of the accepted events" if ok else f"**differ** on {wrong} rows"),
            "",
        ]
    )


@dataclass(frozen=True)
class SpreadResult:
    """The spread run: the chunks as sent, how long the aggregator took to catch up, whether summaries were exact."""

    chunks: tuple[Chunk, ...]
    settle_s: float
    exact: bool
    wrong: int
    text: str

    @property
    def last_to_first(self) -> float:
        return self.chunks[-1].rate / self.chunks[0].rate

    @property
    def events(self) -> int:
        return sum(c.events for c in self.chunks)

    @property
    def rate(self) -> float:
        return self.events / sum(c.seconds for c in self.chunks)

    @property
    def peak_mb(self) -> float:
        return max(c.rss_mb for c in self.chunks)


def run(events: int = 100_000, days: int = 90) -> SpreadResult:
    """Send the spread workload through a fresh local stack; write docs/benchmarks-spread.md."""
    args = argparse.Namespace(events=events, days=days)
    now = dt.datetime.now(dt.UTC)
    scale = workload.scale_for(events, days=days, now=now)
    work = workload.generate(days=days, now=now, scale=scale, flush_every=dt.timedelta(days=1))
    expected = workload.expected(work, sent_at=now, days_back=DEFAULT_PERIOD_DAYS_BACK)  # the stack's window
    log(f"spread: {sum(len(b.events) for b in work.batches):,} events in {len(work.batches):,} batches")
    with tempfile.TemporaryDirectory() as data_dir, local_stack(["--data-dir", data_dir, "--fresh"]) as stack:
        install_lines(stack.aws_url, work, work.start)
        chunks = send(stack.base_url, stack.host, stack.port, work, stack.pid)
        settle_s, ok, wrong = wait_settled(stack.base_url, expected)
    stored = sum(c.accepted for c in chunks)
    if stored != expected.accepted:
        ok = False
        log(f"stored {stored:,} events; the workload's rules say {expected.accepted:,}")
    text = render(chunks, settle_s, ok, wrong, work, args)
    DOC.write_text(text, encoding="utf-8")
    return SpreadResult(tuple(chunks), settle_s, ok, wrong, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args(argv)
    result = run(args.events, args.days)
    print(result.text)
    return 0 if result.exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
