"""Soak: 10,000+ events through ingest, the real queue and the real aggregator, with faults everywhere.

The reports come from one seeded random.Random, the faults from another (a failure reproduces
with the same seeds; each kind of fault is also forced once, so that every run has all of them):
- enqueues that fail (ingest's and the sweeper's), recovered by the sweeper;
- the aggregator dying before or right after a TransactWriteItems, or before deleting pending records;
- processed messages not deleted (delivered again later) and copies of messages sent again;
- Lambda batches of random size, so redeliveries, copies and sweeper messages meet fresh ones.
Then everything is drained and every rollup must be the exact decimal sum of its raw events.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.container import Container
from chalicelib.domain.models import Meter, ServiceLine
from chalicelib.domain.pipeline import BatchMessage
from chalicelib.domain.store import StoreUnavailable
from chalicelib.domain.usage import WHOLE_METERS, UsageDraft
from chalicelib.services import sweep
from chalicelib.services.ingest import ingest
from chalicelib.storage import clients
from chalicelib.storage.catalog_repo import DynamoCatalogRepository
from chalicelib.storage.events_repo import DynamoEventStore
from chalicelib.storage.queue import SqsQueue
from chalicelib.storage.rollups_repo import DynamoRollupStore
from tests.integration.test_pipeline_faults import (
    LINE_METERS,
    LINE_ORG,
    NOW,
    ORG,
    ORG2,
    TODAY,
    InjectedCrash,
    Message,
    Pipeline,
    assert_exact,
    markers,
)

SEED = 20260514
BATCHES = 104
BATCH_SIZE = 100
P_ENQUEUE_FAILS = 0.08
P_CRASH_BEFORE_TRANSACTION = 0.04
P_CRASH_AFTER_TRANSACTION = 0.04
P_CRASH_BEFORE_PENDING_DELETE = 0.04
P_NOT_DELETED = 0.1
P_COPY_SENT = 0.05
FORCE_AT = 7
INVOCATION_SIZES = [1, 3, 10, 25, 50, 100]  # messages per Lambda invocation (the app's batch_size is 100)


class CachedCatalog(DynamoCatalogRepository):
    """The catalog with service lines and meters cached (they do not change during the soak)."""

    def __init__(self, table_name: str) -> None:
        super().__init__(table_name)
        self._lines: dict[tuple[str, str], ServiceLine | None] = {}
        self._meters: dict[str, Meter | None] = {}

    def get_service_line(self, organization_id: str, line_id: str) -> ServiceLine | None:
        k = (organization_id, line_id)
        if k not in self._lines:
            self._lines[k] = super().get_service_line(organization_id, line_id)
        return self._lines[k]

    def get_meter(self, meter_id: str) -> Meter | None:
        if meter_id not in self._meters:
            self._meters[meter_id] = super().get_meter(meter_id)
        return self._meters[meter_id]


@dataclass
class Faults:
    """Random faults from one seeded generator; each kind is also forced on its FORCE_AT-th chance."""

    rng: random.Random
    counts: dict[str, int] = field(default_factory=dict)
    chances: dict[str, int] = field(default_factory=dict)

    def hit(self, name: str, probability: float) -> bool:
        self.chances[name] = self.chances.get(name, 0) + 1
        forced = self.chances[name] == FORCE_AT and name not in self.counts
        if self.rng.random() < probability or forced:
            self.counts[name] = self.counts.get(name, 0) + 1
            return True
        return False


class RandomlyFailing:
    """A boto3 client whose chosen operations fail at random, before or after doing their work."""

    def __init__(self, inner: Any, faults: Faults, rules: dict[str, list[tuple[str, float, str]]]) -> None:
        self.inner = inner
        self.faults = faults
        self.rules = rules  # operation -> [(fault name, probability, "before" | "after")]

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        rules = self.rules.get(name)
        if not rules:
            return target

        def call(**kwargs: Any) -> Any:
            when = next((w for fault, p, w in rules if self.faults.hit(fault, p)), None)
            if when == "before":
                raise _error(name)
            result = target(**kwargs)
            if when == "after":
                raise _error(name)
            return result

        return call


def _error(operation: str) -> Exception:
    if operation == "send_message":
        return ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "injected"}}, "SendMessage")
    return InjectedCrash(f"worker died around {operation}")


def random_quantity(rng: random.Random) -> Decimal:
    """0 to 10^6 with up to 9 decimal places."""
    return Decimal(rng.randint(0, 10**9)).scaleb(-rng.randint(0, 9))


def random_draft(rng: random.Random, org: str, key: str | None) -> UsageDraft:
    """A report on a random line and meter, mostly of today or the two days before, some 10 days late.

    Event times fall in a few hours per day (as real usage clusters), so that a Lambda batch
    of many messages shares its rollups and stays within a few transactions.
    """
    line = rng.choice([line for line, owner in LINE_ORG.items() if owner == org])
    days_back = rng.choice([0, 0, 0, 1, 1, 2, 10])
    period = TODAY - timedelta(days=days_back)
    hour = {0: rng.choice([11, 14]), 1: 20, 2: 8, 10: 23}[days_back]
    at: datetime | None = datetime.combine(period, dt_time(hour), UTC) + timedelta(
        seconds=rng.randint(0, 3599), milliseconds=rng.randint(0, 999)
    )
    if rng.random() < 0.03:
        at = None  # the event time is the time of ingestion, whatever the period date
    meter = rng.choice(LINE_METERS[line])
    quantity = random_quantity(rng)
    return UsageDraft(
        service_line_id=line,
        meter=meter,
        quantity=quantity.to_integral_value() if meter in WHOLE_METERS else quantity,  # runs are whole
        period_date=period,
        event_time=at,
        source="soak",
        metadata={},
        idempotency_key=key,
    )


@dataclass
class Soak:
    container: Container
    pipe: Pipeline
    catalog: CachedCatalog
    rng: random.Random
    faults: Faults
    clock: datetime = NOW
    accepted_quantity: Decimal = Decimal(0)
    pushed: int = 0
    invocations: int = 0
    crashes: int = 0
    sweeps: int = 0
    swept: set[str] = field(default_factory=set)
    keys: dict[tuple[str, str], UsageDraft] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    # -- ingest ------------------------------------------------------------------------------------
    def ingest_batch(self, number: int) -> None:
        rng = self.rng
        org = ORG if rng.random() < 0.75 else ORG2
        drafts: list[UsageDraft] = []
        expect: list[str] = []
        seen_here: dict[str, UsageDraft] = {}
        earlier = [k for (o, k) in self.keys if o == org]
        for i in range(BATCH_SIZE):
            roll = rng.random()
            if roll < 0.015 and earlier:  # a retry of an earlier report: duplicate
                k = rng.choice(earlier)
                drafts.append(self.keys[(org, k)])
                expect.append("duplicate")
            elif roll < 0.02 and earlier:  # an earlier key for a different report: conflict
                k = rng.choice(earlier)
                original = self.keys[(org, k)]
                drafts.append(replace(original, quantity=original.quantity + Decimal("0.5")))
                expect.append("conflict")
            elif roll < 0.03 and seen_here:  # the same report twice in one request
                k = rng.choice(sorted(seen_here))
                drafts.append(seen_here[k])
                expect.append("duplicate")
            elif roll < 0.04:  # no idempotency key at all
                drafts.append(random_draft(rng, org, None))
                expect.append("accepted")
            else:
                k = f"soak-{number}-{i}"
                d = random_draft(rng, org, k)
                seen_here[k] = d
                drafts.append(d)
                expect.append("accepted")
        now = NOW + timedelta(seconds=3 * number)
        with self.timed("ingest"):
            outcomes = ingest(drafts, org, self.catalog, self.container.events, self.container.queue, now)
        self.pushed += len(drafts)
        assert [o.status for o in outcomes] == expect
        self.pipe.ledger.add(outcomes)
        for d, o in zip(drafts, outcomes, strict=True):
            if o.status == "accepted":
                self.accepted_quantity += d.quantity
                if d.idempotency_key is not None:
                    self.keys[(org, d.idempotency_key)] = d
            if o.status == "duplicate":
                assert o.event is not None and o.event.quantity == d.quantity
        self.clock = max(self.clock, now)

    # -- the aggregator ----------------------------------------------------------------------------
    def deliver_some(self) -> int:
        """One Lambda invocation over a random number of visible messages (the app allows up to 100)."""
        messages = self.pipe.receive(self.faults.rng.choice(INVOCATION_SIZES))
        if not messages:
            return 0
        self.invocations += 1
        for m in messages:
            message = BatchMessage.model_validate_json(m["Body"])
            if message.origin == "sweep":
                self.swept.add(message.batch)
        try:
            with self.timed("aggregate"):
                failed = self.pipe.invoke(messages)
        except InjectedCrash:
            self.crashes += 1
            self.pipe.release(messages)  # the invocation failed: every message comes back
            return len(messages)
        assert failed == set(), "a valid message was reported failed"
        for m in messages:
            if self.faults.hit("not deleted", P_NOT_DELETED):
                self.pipe.release([m])  # processed, but the delete never happened
            else:
                self.pipe.delete([m])
            if self.faults.hit("copy sent", P_COPY_SENT):
                self.pipe.send_raw(m["Body"])  # a producer retry of an already sent message
        return len(messages)

    def sweep(self) -> None:
        self.clock += timedelta(minutes=6)
        self.sweeps += 1
        # If the sweeper's own send fails, the batch is claimed again after the grace period.
        with contextlib.suppress(StoreUnavailable), self.timed("sweep"):
            sweep.sweep(self.container.events, self.container.queue, self.clock)


def dead_lettered_by_the_app(container: Container) -> list[Message]:
    sqs = clients.sqs()
    found: list[Message] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=container.dead_letters.url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not got:
            return [m for m in found if "reason" in m.get("MessageAttributes", {})]
        found.extend(got)  # type: ignore[arg-type]


@pytest.mark.slow
def test_soak_ten_thousand_events_with_faults_roll_up_exactly(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.perf_counter()
    rng = random.Random(SEED)  # the reports
    faults = Faults(random.Random(SEED + 1))  # the faults and the deliveries
    pipe = Pipeline(container)
    settings = container.settings
    monkeypatch.setattr(
        container,
        "queue",
        SqsQueue(
            settings.usage_queue,
            client=RandomlyFailing(clients.sqs(), faults, {"send_message": [("enqueue", P_ENQUEUE_FAILS, "before")]}),  # type: ignore[arg-type]
        ),
    )
    rollup_client = RandomlyFailing(
        clients.dynamodb(),
        faults,
        {
            "transact_write_items": [
                ("crash before transaction", P_CRASH_BEFORE_TRANSACTION, "before"),
                ("crash after transaction", P_CRASH_AFTER_TRANSACTION, "after"),
            ]
        },
    )
    monkeypatch.setattr(container, "rollups", DynamoRollupStore(settings.rollups_table, client=rollup_client))  # type: ignore[arg-type]
    events_client = RandomlyFailing(
        clients.dynamodb(),
        faults,
        {"batch_write_item": [("crash before pending delete", P_CRASH_BEFORE_PENDING_DELETE, "before")]},
    )
    monkeypatch.setattr(container, "events", DynamoEventStore(settings.events_table, client=events_client))  # type: ignore[arg-type]

    soak = Soak(container, pipe, CachedCatalog(settings.catalog_table), rng, faults)
    container.clock = lambda: soak.clock
    for number in range(BATCHES):
        soak.ingest_batch(number)
        if faults.rng.random() < 0.25:
            soak.deliver_some()
    ingested = time.perf_counter()

    for _ in range(2000):
        if soak.deliver_some():
            continue
        if not pipe.pending():
            break
        soak.sweep()
    else:
        raise AssertionError(f"the pipeline did not settle: {len(pipe.pending())} batches pending")
    settled = time.perf_counter()
    with soak.timed("check"):
        events = assert_exact(container, pipe.ledger)
    print(
        f"\nsoak (seed {SEED}): {soak.pushed} events pushed, {len(pipe.ledger.events)} accepted in {BATCHES} "
        f"batches, {len(markers(container))} chunks; {soak.invocations} invocations, {soak.crashes} crashes, "
        f"{len(soak.swept)} batches re-enqueued by {soak.sweeps} sweeps; faults {faults.counts}; "
        f"seconds { ({k: round(v, 1) for k, v in soak.seconds.items()}) }; ingest phase {ingested - started:.1f}s, "
        f"drain {settled - ingested:.1f}s, check {time.perf_counter() - settled:.1f}s, "
        f"total {time.perf_counter() - started:.1f}s"
    )
    assert soak.pushed >= 10_000
    assert len(events) >= 10_000
    assert pipe.queue_depth() == 0
    assert dead_lettered_by_the_app(container) == []
    # The raw events add up to what the service accepted (and assert_exact checked that the day
    # rollups and the hour rollups each add up to the same total).
    assert sum((e.quantity for e in events), Decimal(0)) == soak.accepted_quantity
    assert pipe.ledger.total() == soak.accepted_quantity
    # Every kind of fault did happen, and was recovered from.
    assert soak.crashes > 0 and soak.swept
    assert set(faults.counts) == {
        "enqueue",
        "crash before transaction",
        "crash after transaction",
        "crash before pending delete",
        "not deleted",
        "copy sent",
    }
