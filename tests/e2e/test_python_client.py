"""The Python client (`client/`) against the real local stack over HTTP: events over many days, lines
and meters are each stored once; the stack killed (SIGTERM, SIGKILL) mid-send and restarted on the same
data dir: the client resends what it holds and no event is stored twice.

The emulator keeps its tables in memory and snapshots them every few seconds: a SIGKILL loses what
changed since the last snapshot, acknowledged events included (on AWS, an acknowledged write is
durable). So the SIGTERM case is strict (every recorded event stored exactly once) and the SIGKILL case
checks: no event twice, every event acknowledged before the snapshot or by the restarted stack is
stored, and only events acknowledged between the snapshot and the kill may be missing.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from usage_metering_client import Client, Delivered, FailedEvent

from chalicelib.local import persistence
from tests.conftest import FULL_KEY, OTHER_ORG_KEY
from tests.e2e.localstack import DEPLOYED_CATALOG_CACHE, StackProcess, request, running_stack_process

ORG = "ORG-26-090500"
OTHER_ORG = "ORG-26-100200"
DAYS = 90
# The demo organizations' lines and meters; test_spread adds an infrastructure, intelligence and ODS line.
DEMO_LINES = {
    FULL_KEY: {
        "LIN-26-084729": ["talent.hours", "talent.days"],
        "LIN-26-091100": ["agent.runs", "agent.tokens", "agent.run_seconds"],
    },
    OTHER_ORG_KEY: {"LIN-26-100201": ["talent.hours"]},
}
EXTRA_LINES: dict[str, dict[str, float]] = {
    "infrastructure": {"compute.vcpu_hours": 0.045, "storage.gb_days": 0.0023},
    "intelligence": {"intelligence.queries": 0.02},
    "ods": {"ods.cycles": 150},
}


@dataclass(frozen=True)
class Planned:
    n: int
    key: str  # the API key (organization) that records it
    line: str
    meter: str
    quantity: Decimal
    day: date


def quantity(i: int, meter: str) -> Decimal:
    """Exact decimals of several scales; whole for agent.runs."""
    if meter == "agent.runs":
        return Decimal(i % 13 + 1)
    if meter == "storage.gb_days":
        return Decimal(i % 7 + 1) * Decimal("0.000000001")
    return Decimal(i % 11) + Decimal("0.125") * (i % 3)


def plan(count: int, lines: dict[str, dict[str, list[str]]]) -> list[Planned]:
    """`count` events round-robin over every (key, line, meter), spread over the last DAYS days."""
    slots = [
        (key, line, meter) for key, by_line in lines.items() for line, meters in by_line.items() for meter in meters
    ]
    today = datetime.now(UTC).date()
    planned = []
    for n in range(count):
        key, line, meter = slots[n % len(slots)]
        planned.append(Planned(n, key, line, meter, quantity(n, meter), today - timedelta(days=(n * 7) % DAYS)))
    return planned


class Recorder:
    """One client per organization, recording planned events tagged with their number in metadata."""

    def __init__(self, base_url: str, tag: str, **options: Any) -> None:
        self.tag = tag
        self.acked: dict[str, float] = {}  # idempotency key -> when its acknowledgement arrived
        self.first_acked_at = float("inf")
        self.failed: list[FailedEvent] = []
        self.keys: dict[int, str] = {}
        self.clients = {
            key: Client(base_url, key, on_delivered=self._delivered, on_error=self.failed.append, **options)
            for key in (FULL_KEY, OTHER_ORG_KEY)
        }

    def _delivered(self, receipt: Delivered) -> None:
        at = self.acked.setdefault(receipt.idempotency_key, time.time())
        self.first_acked_at = min(self.first_acked_at, at)

    def record(self, event: Planned) -> None:
        self.keys[event.n] = self.clients[event.key].record(
            event.line, event.meter, event.quantity, event.day, metadata={"run": self.tag, "n": event.n}
        )

    def flush(self, timeout: float) -> bool:
        return all(client.flush(timeout) for client in self.clients.values())

    def close(self) -> None:
        for client in self.clients.values():
            client.close(timeout=5)


def window() -> str:
    today = datetime.now(UTC).date()
    return urlencode({"from": (today - timedelta(days=DAYS)).isoformat(), "to": today.isoformat()})


def listing(base_url: str, key: str, tag: str) -> list[dict[str, Any]]:
    """Every stored event of the key's organization in the window recorded under `tag` (all pages)."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = window() + "&limit=100" + (f"&{urlencode({'cursor': cursor})}" if cursor else "")
        status, page = request(f"{base_url}/v1/usage?{query}", key=key)
        assert status == 200, page
        found += [e for e in page["data"] if e["metadata"].get("run") == tag]
        cursor = page["meta"]["cursor"]
        if not page["meta"]["has_more"]:
            return found


def stored(base_url: str, tag: str) -> list[dict[str, Any]]:
    return listing(base_url, FULL_KEY, tag) + listing(base_url, OTHER_ORG_KEY, tag)


def summed(events: list[dict[str, Any]]) -> dict[tuple[str, str], Decimal]:
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for event in events:
        totals[(event["service_line_id"], event["meter"])] += Decimal(str(event["quantity"]))
    return dict(totals)


def rolled_up(base_url: str, key: str, org: str) -> dict[tuple[str, str], Decimal]:
    status, body = request(f"{base_url}/v1/usage/summary?{window()}&organization_id={org}", key=key)
    assert status == 200, body
    return {
        (line["service_line_id"], m["meter"]): Decimal(str(m["quantity"]))
        for line in body["data"]["by_service_line"]
        for m in line["meters"]
        if Decimal(str(m["quantity"]))
    }


def wait_rolled_up(base_url: str, tag: str, timeout: float = 600) -> float:
    """Until each organization's summary equals the sum of its stored events (the rollups count each once);
    the seconds it took. The events are listed once: nothing is recorded meanwhile."""
    started = time.monotonic()
    for key, org in ((FULL_KEY, ORG), (OTHER_ORG_KEY, OTHER_ORG)):
        expected = summed(listing(base_url, key, tag))
        while (summary := rolled_up(base_url, key, org)) != expected:
            gap = sum(expected.values()) - sum(summary.values())
            print(f"{time.monotonic() - started:.0f} s: {org} rollups {gap} short of the stored events", flush=True)
            assert time.monotonic() < started + timeout, f"{org} not rolled up: {summary} != {expected}"
            time.sleep(0.25)
    return time.monotonic() - started


def by_number(events: list[dict[str, Any]]) -> Counter[int]:
    return Counter(int(e["metadata"]["n"]) for e in events)


def add_lines(base_url: str) -> dict[str, list[str]]:
    """An infrastructure, an intelligence and an ODS line for the enterprise organization; their meters."""
    lines = {}
    for product_line, rates in EXTRA_LINES.items():
        body = {"workspace_id": "WS-26-000101", "name": f"Client {product_line}", "product_line": product_line}
        status, answer = request(f"{base_url}/v1/service-lines", data={**body, "rates": rates})
        assert status == 201, answer
        lines[answer["data"]["id"]] = list(rates)
    return lines


# The scheduled jobs (sweeper, reconciliation planner) run every 10 s instead of every 2 and 10 minutes: a
# single event whose message a kill lost is rolled up by a reconciliation work item once it is 2 minutes old
# (services/sweep.roll_up_unsent), within 10 s of that. Not every second: each planner run queues work items
# that read every recent event; on a loaded machine they outgrew a 1 s period and held up the events' own
# messages in the shared queue for minutes.
SCHEDULE_EVERY = ("--schedule-every", "10")
# The stacks keep the catalog cache at its deployed TTL (DEPLOYED_CATALOG_CACHE): these tests revoke no key and
# pause no line (with the cache off, reading keys and lines took about 4 of the module's 28 s of CPU).


@pytest.fixture
def stack() -> Iterator[StackProcess]:
    with running_stack_process(*SCHEDULE_EVERY, env=DEPLOYED_CATALOG_CACHE) as process:
        yield process


def test_events_over_many_days_lines_and_meters_are_each_stored_once(stack: StackProcess) -> None:
    lines = {FULL_KEY: {**DEMO_LINES[FULL_KEY], **add_lines(stack.base_url)}, OTHER_ORG_KEY: DEMO_LINES[OTHER_ORG_KEY]}
    planned = plan(2500, lines)
    recorder = Recorder(stack.base_url, "spread", exit_handler=False)
    try:
        for event in planned:
            recorder.record(event)
        # Refused for themselves: reported once, not stored, the rest unaffected.
        agent = recorder.clients[FULL_KEY]
        fractional = agent.record("LIN-26-091100", "agent.runs", Decimal("0.5"), metadata={"run": "spread-bad"})
        other_org = agent.record("LIN-26-100201", "talent.hours", 1, metadata={"run": "spread-bad"})
        assert recorder.flush(timeout=120)
    finally:
        recorder.close()
    assert {(f.idempotency_key, f.code) for f in recorder.failed} == {
        (fractional, "validation_error"),
        (other_org, "service_line_not_found"),
    }
    events = stored(stack.base_url, "spread")
    assert by_number(events) == Counter(range(len(planned)))  # every event once
    assert {
        int(e["metadata"]["n"]): (e["service_line_id"], e["meter"], Decimal(str(e["quantity"])), e["period_date"])
        for e in events
    } == {p.n: (p.line, p.meter, p.quantity, p.day.isoformat()) for p in planned}
    assert len({p.day for p in planned}) == DAYS and len({(p.line, p.meter) for p in planned}) == 10
    assert len(recorder.acked) == len(planned)
    wait_rolled_up(stack.base_url, "spread")


# -- the stack killed mid-send ---------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port with the next one free too (the stack's AWS endpoint), so a restart gets the same URL."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no free pair of ports")


def snapshot_after(data_dir: Path, moment: float) -> bool:
    """Whether the stack's snapshot was taken after `moment` (a time.time())."""
    path = persistence.snapshot_path(data_dir)
    if not path.exists():
        return False
    return datetime.fromisoformat(persistence.read_header(path)["taken_at"]).timestamp() > moment


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_the_stack_stopped_mid_send_and_restarted_gets_every_event_once(tmp_path: Path, sig: int) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    args = ("--port", str(port), *SCHEDULE_EVERY, "--snapshot-every", "1")
    first = StackProcess(*args, data_dir=data_dir, env=DEPLOYED_CATALOG_CACHE).start()
    base_url = first.base_url
    planned = plan(3000, DEMO_LINES)
    tag = f"kill-{sig}"
    recorder = Recorder(base_url, tag, backoff_max=1.0, max_queue_size=5000, exit_handler=False)
    second: StackProcess | None = None
    try:
        for event in planned[:1500]:
            recorder.record(event)

        # The rest is recorded while the stack goes down and comes back.
        def record_the_rest() -> None:
            for event in planned[1500:]:
                recorder.record(event)
                time.sleep(0.002)

        late = threading.Thread(target=record_the_rest)
        late.start()
        # Stopped once 800 events are acknowledged and a snapshot holds some acknowledged events.
        deadline = time.monotonic() + 120
        while len(recorder.acked) < 800 or not snapshot_after(data_dir, recorder.first_acked_at):
            assert time.monotonic() < deadline, first.output[-3000:]
            time.sleep(0.01)
        if sig == signal.SIGKILL:
            first.kill()
        else:
            first.stop(signal.SIGTERM)
        acked_at_stop = len(recorder.acked)
        taken_at = datetime.fromisoformat(persistence.read_header(persistence.snapshot_path(data_dir))["taken_at"])
        assert len(recorder.acked) < len(planned)  # the stack went down mid-send
        second = StackProcess(*args, data_dir=data_dir, env=DEPLOYED_CATALOG_CACHE).start()
        restarted_at = time.time()
        assert second.base_url == base_url
        late.join(timeout=120)
        assert recorder.flush(timeout=600), "the client did not deliver everything after the restart"
        assert recorder.failed == []
        events = stored(base_url, tag)
        counts = by_number(events)
        assert max(counts.values()) == 1  # no event twice
        assert set(counts) <= set(range(len(planned)))
        keyed = {recorder.keys[n]: n for n in range(len(planned))}
        assert set(keyed) == set(recorder.acked)  # the client acknowledged every recorded event
        missing = {n for n in range(len(planned)) if n not in counts}
        if sig == signal.SIGTERM:
            assert missing == set()
        else:
            # Acknowledged before the snapshot, or by the restarted stack: stored. Only events
            # acknowledged between the snapshot and the kill may be gone with the emulator's memory.
            must = {keyed[k] for k, at in recorder.acked.items() if at < taken_at.timestamp() or at > restarted_at}
            assert must & missing == set()
            lost_window = {keyed[k] for k, at in recorder.acked.items() if taken_at.timestamp() <= at <= restarted_at}
            assert missing <= lost_window
            print(
                f"SIGKILL: {acked_at_stop} acknowledged before the kill, {len(missing)} of them lost with the "
                f"emulator's unsaved memory (acknowledged after the last snapshot)"
            )
        print(f"rolled up {wait_rolled_up(base_url, tag):.0f} s after the flush")
    except BaseException:
        print(second.output[-4000:] if second is not None else first.output[-4000:])
        raise
    finally:
        recorder.close()
        first.kill()
        if second is not None:
            second.stop()
