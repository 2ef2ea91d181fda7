"""Fault injection for the exactly-once rollup pipeline.

Every test drives the real ingest use case, the emulated SQS queue and the
real `aggregate_usage` Lambda handler (invoked with SQS events built from
ReceiveMessage results), injects a fault at an AWS client boundary, recovers
the way production does (redelivery, the sweeper, reconciliation) and ends
with `assert_exact`: every day and hour rollup equals the exact decimal sum
and count of its raw events, and every event is in exactly one applied marker.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.container import Container
from chalicelib.domain.aggregation import NO_GROUP
from chalicelib.domain.ids import batch_id as new_batch_id
from chalicelib.domain.ids import usage_event_id
from chalicelib.domain.models import UsageEvent, instant
from chalicelib.domain.pipeline import BatchMessage, ReconcileMessage
from chalicelib.domain.usage import WHOLE_METERS, Rollup, UsageDraft
from chalicelib.local.runtime import make_context, scheduled_event, sqs_event
from chalicelib.services import reconcile, sweep
from chalicelib.services.ingest import IngestOutcome, ingest
from chalicelib.storage import clients
from chalicelib.storage.codec import from_item
from chalicelib.storage.events_repo import PENDING_SHARDS, DynamoEventStore
from chalicelib.storage.keys import rollup_pk
from chalicelib.storage.queue import SqsQueue
from chalicelib.storage.rollups_repo import DynamoRollupStore

# A fixed clock: batch ids, the sweeper's grace and the reconciler's window all derive from it.
NOW = datetime(2026, 5, 14, 15, 30, tzinfo=UTC)
TODAY = NOW.date()
ORG = "ORG-26-090500"
ORG2 = "ORG-26-100200"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
MOBILE = "LIN-26-100201"
LINE_ORG = {TALENT: ORG, AGENT: ORG, MOBILE: ORG2}
LINE_METERS: dict[str, tuple[str, ...]] = {
    TALENT: ("talent.hours", "talent.days"),
    AGENT: ("agent.runs", "agent.tokens", "agent.run_seconds"),
    MOBILE: ("talent.hours",),
}
FAR_PAST = date(2000, 1, 1)
FAR_FUTURE = date(2100, 1, 1)

Message = dict[str, Any]
Key = tuple[str, str, str, str, str]  # line, meter, grain, period_date, hour


class InjectedCrash(Exception):
    """The worker dies here (a Lambda timeout, an out-of-memory kill)."""


# -- fault injection at the AWS client boundary ----------------------------------------------------


class FaultyClient:
    """A boto3 client whose `operation` lets `after` calls through, then fails every later one."""

    def __init__(self, inner: Any, operation: str, after: int = 0, fail: Callable[[], Exception] | None = None):
        self.inner = inner
        self.operation = operation
        self.after = after
        self.fail = fail or (lambda: InjectedCrash(f"{operation} crashed after {after} calls"))
        self.calls = 0
        self.failures = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name != self.operation:
            return target

        def call(**kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
                failing = self.calls > self.after
                if failing:
                    self.failures += 1
            if failing:
                raise self.fail()
            return target(**kwargs)

        return call


def crash_rollups_after(monkeypatch: pytest.MonkeyPatch, container: Container, transactions: int) -> FaultyClient:
    """Make the aggregator die on its (transactions + 1)-th TransactWriteItems."""
    faulty = FaultyClient(clients.dynamodb(), "transact_write_items", after=transactions)
    monkeypatch.setattr(container, "rollups", DynamoRollupStore(container.settings.rollups_table, client=faulty))  # type: ignore[arg-type]
    return faulty


def fail_enqueues(monkeypatch: pytest.MonkeyPatch, container: Container) -> FaultyClient:
    """Every SendMessage to the usage queue fails (as SQS being unreachable would)."""
    faulty = FaultyClient(
        clients.sqs(),
        "send_message",
        fail=lambda: ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "injected"}}, "SendMessage"),
    )
    queue = SqsQueue(container.settings.usage_queue, client=faulty)  # type: ignore[arg-type]
    monkeypatch.setattr(container, "queue", queue)
    return faulty


# -- building usage --------------------------------------------------------------------------------


def draft(
    line: str,
    meter: str,
    quantity: str,
    period_date: date = TODAY,
    event_time: datetime | None = None,
    key: str | None = None,
) -> UsageDraft:
    return UsageDraft(
        service_line_id=line,
        meter=meter,
        quantity=Decimal(quantity).to_integral_value()
        if meter in WHOLE_METERS
        else Decimal(quantity),  # runs are whole
        period_date=period_date,
        event_time=event_time,
        source="test",
        metadata={},
        idempotency_key=key,
    )


def mixed_drafts(count: int, tag: str, org: str = ORG) -> list[UsageDraft]:
    """`count` events of an organization over its lines and meters, a few hours and days, with decimals."""
    lines = [line for line, owner in LINE_ORG.items() if owner == org]
    drafts = []
    for i in range(count):
        line = lines[i % len(lines)]
        meters = LINE_METERS[line]
        at = NOW - timedelta(hours=i % 5, minutes=7 * i % 60)
        drafts.append(
            draft(
                line,
                meters[(i // len(lines)) % len(meters)],
                f"{i % 7}.{(i * 37) % 1000:03d}",
                period_date=TODAY - timedelta(days=i % 3),
                event_time=at,
                key=f"{tag}-{i}",
            )
        )
    return drafts


def wide_drafts(tag: str) -> list[UsageDraft]:
    """100 events of one organization, each in its own (meter, hour): well over 98 rollup keys."""
    combos = [(line, meter) for line in (TALENT, AGENT) for meter in LINE_METERS[line]]
    drafts = []
    for i in range(100):
        line, meter = combos[i % len(combos)]
        at = NOW - timedelta(hours=i, minutes=i % 60)
        period = TODAY - timedelta(days=i % 3)
        drafts.append(draft(line, meter, f"{i}.{i:02d}5", period_date=period, event_time=at, key=f"{tag}-{i}"))
    return drafts


def distinct_rollup_keys(drafts: Iterable[UsageDraft]) -> int:
    keys: set[Key] = set()
    for d in drafts:
        assert d.event_time is not None
        hour = d.event_time.astimezone(UTC).strftime("%Y-%m-%dT%H")
        keys.add((d.service_line_id, d.meter, "D", d.period_date.isoformat(), ""))
        keys.add((d.service_line_id, d.meter, "H", d.period_date.isoformat(), hour))
    return len(keys)


# -- the harness: SQS + the real Lambda handler ----------------------------------------------------


@dataclass
class Ledger:
    """Every event the service accepted (the truth the rollups must add up to)."""

    events: dict[str, UsageEvent]

    def add(self, outcomes: Sequence[IngestOutcome]) -> list[UsageEvent]:
        accepted = [o.event for o in outcomes if o.status == "accepted" and o.event is not None]
        for event in accepted:
            assert event.id not in self.events
            self.events[event.id] = event
        return accepted

    def total(self) -> Decimal:
        return sum((e.quantity for e in self.events.values()), Decimal(0))


class Pipeline:
    """Ingest, the usage queue and the aggregator Lambda, with Lambda's delete-unless-failed semantics."""

    def __init__(self, container: Container) -> None:
        from app import app

        self.container = container
        self.sqs = clients.sqs()
        self.ddb = clients.dynamodb()
        self.url = container.queue.url
        self.arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.handler = app.handler_map["aggregate_usage"]
        self.ledger = Ledger({})
        container.clock = lambda: NOW

    # ingest
    def ingest(self, drafts: Sequence[UsageDraft], org: str = ORG, now: datetime = NOW) -> list[IngestOutcome]:
        c = self.container
        outcomes = ingest(drafts, org, c.catalog, c.events, c.queue, now)
        self.ledger.add(outcomes)
        return outcomes

    def ingest_accepted(self, drafts: Sequence[UsageDraft], org: str = ORG, now: datetime = NOW) -> str:
        """Ingest drafts that must all be accepted; returns the batch id."""
        outcomes = self.ingest(drafts, org, now)
        assert [o.status for o in outcomes] == ["accepted"] * len(drafts)
        batches = {o.event.batch_id for o in outcomes if o.event}
        assert len(batches) == 1
        return batches.pop()

    # the queue
    def send_raw(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.url, MessageBody=body)

    def receive(self, limit: int = 1000) -> list[Message]:
        """Receive every visible message (up to `limit`), with all attributes, as Lambda's poller does."""
        messages: list[Message] = []
        while len(messages) < limit:
            got = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=min(10, limit - len(messages)),
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not got:
                break
            messages.extend(got)  # type: ignore[arg-type]
        return messages

    def delete(self, messages: Iterable[Message]) -> None:
        for m in messages:
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])

    def release(self, messages: Iterable[Message]) -> None:
        """Make messages visible again at once (their visibility timeout has run out)."""
        for m in messages:
            self.sqs.change_message_visibility(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)

    def redeliver(self, messages: Sequence[Message]) -> list[Message]:
        """Release messages and receive them again: the same message ids, new receipt handles."""
        self.release(messages)
        again = self.receive()
        assert sorted(m["MessageId"] for m in again) == sorted(m["MessageId"] for m in messages)
        return again

    def queue_depth(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    # the Lambda
    def invoke(self, messages: Sequence[Message]) -> set[str]:
        """Invoke the real handler; the ids it reports in batchItemFailures."""
        event = sqs_event(list(messages), self.arn, self.container.settings.region)
        result = self.handler(event, make_context("aggregate_usage"))
        return {f["itemIdentifier"] for f in result["batchItemFailures"]}

    def deliver(self, messages: Sequence[Message]) -> set[str]:
        """Invoke, then delete what succeeded and let failures come back; a crash deletes nothing."""
        try:
            failed = self.invoke(messages)
        except Exception:
            self.release(messages)
            raise
        self.delete(m for m in messages if m["MessageId"] not in failed)
        self.release(m for m in messages if m["MessageId"] in failed)
        return failed

    def drain(self, max_rounds: int = 30, batch_size: int = 10) -> None:
        """Deliver until the queue is empty (a batch that keeps crashing fails the test)."""
        for _ in range(max_rounds):
            messages = self.receive(batch_size)
            if not messages:
                return
            self.deliver(messages)
        raise AssertionError(f"the queue did not drain in {max_rounds} deliveries ({self.queue_depth()} left)")

    def sweep(self, now: datetime) -> list[str]:
        return sweep.sweep(self.container.events, self.container.queue, now).requeued

    def pending(self) -> list[str]:
        """The ids of pending batches (read without their event lists, which are slow to emulate)."""
        ids: list[str] = []
        for shard in range(PENDING_SHARDS):
            kwargs: dict[str, Any] = {
                "TableName": self.container.settings.events_table,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": {"S": f"PENDING#{shard}"}},
                "ProjectionExpression": "sk",
                "ConsistentRead": True,
            }
            while True:
                page = self.ddb.query(**kwargs)
                ids.extend(item["sk"]["S"] for item in page.get("Items", []))
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(ids)


# -- the exact check -------------------------------------------------------------------------------


def markers(container: Container) -> dict[str, list[str]]:
    """Every applied marker: APPLIED#<batch>/<chunk> -> the event ids it counted."""
    client = clients.dynamodb()
    found: dict[str, list[str]] = {}
    kwargs: dict[str, Any] = {
        "TableName": container.settings.rollups_table,
        "FilterExpression": "begins_with(pk, :p)",
        "ExpressionAttributeValues": {":p": {"S": "APPLIED#"}},
        "ConsistentRead": True,
    }
    while True:
        page = client.scan(**kwargs)
        for raw in page.get("Items", []):
            item = from_item(raw)
            found[f"{item['pk']}/{item['sk']}"] = list(item.get("events", []))
        if "LastEvaluatedKey" not in page:
            return found
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def raw_events(container: Container) -> list[UsageEvent]:
    events: list[UsageEvent] = []
    for line, org in LINE_ORG.items():
        events.extend(container.events.iter_line(org, line, FAR_PAST, FAR_FUTURE))
    return events


def expected_rollups(events: Iterable[UsageEvent]) -> dict[Key, tuple[Decimal, int]]:
    """Recomputed here, independently of the service: sums per day (period_date) and per UTC event hour."""
    sums: dict[Key, Decimal] = defaultdict(Decimal)
    counts: Counter[Key] = Counter()
    for e in events:
        hour = e.event_time.astimezone(UTC).strftime("%Y-%m-%dT%H")
        for k in (
            (e.service_line_id, e.meter, "D", e.period_date.isoformat(), ""),
            (e.service_line_id, e.meter, "H", e.period_date.isoformat(), hour),
        ):
            sums[k] += e.quantity
            counts[k] += 1
    return {k: (sums[k], counts[k]) for k in sums}


def stored_rollups(container: Container) -> dict[Key, tuple[Decimal, int, int]]:
    """Every rollup, read through the store's day and hour queries: key -> (quantity, event_count, version)."""
    rows: dict[Key, tuple[Decimal, int, int]] = {}
    all_grouped = stored_group_rollups(container)
    for line, org in LINE_ORG.items():
        day = container.rollups.day_rollups(org, line, FAR_PAST, FAR_FUTURE, consistent=True)
        hour = container.rollups.hour_rollups(org, line, "2000-01-01T00", "2100-01-01T00")
        for r in day + hour:
            k = (r.key.service_line_id, r.key.meter, r.key.grain, r.key.period_date, r.key.hour)
            assert k not in rows, f"rollup {k} stored twice"
            rows[k] = (r.quantity, r.event_count, r.version)
        grouped = [r for r in all_grouped if r.key.service_line_id == line]
        # a day's register exists once a value of the key was seen (events without it need none)
        registers = {
            (r.key.meter, r.key.group_key, r.key.period_date) for r in grouped if r.key.group_value != NO_GROUP
        }
        items_of_line = clients.dynamodb().query(
            TableName=container.settings.rollups_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": rollup_pk(org, line)}},
            Select="COUNT",
        )["Count"]
        assert items_of_line == len(day) + len(hour) + len(grouped) + len(registers), (
            f"rollup items of {line} that are neither day nor hour rollups, group rollups nor group registers"
        )
    return rows


def rollup_mismatches(
    container: Container, events: Iterable[UsageEvent], stored: dict[Key, tuple[Decimal, int, int]] | None = None
) -> list[str]:
    want = expected_rollups(events)
    have = stored_rollups(container) if stored is None else stored
    wrong = []
    for k in sorted(set(want) | set(have)):
        w = want.get(k, (Decimal(0), 0))
        h = have.get(k, (Decimal(0), 0, 0))
        if h[0] != w[0] or h[1] != w[1]:
            wrong.append(f"{k}: stored {h[0]}/{h[1]} events, raw events sum to {w[0]}/{w[1]}")
    return wrong


def assert_exact(container: Container, ledger: Ledger, settled: bool = True) -> list[UsageEvent]:
    """Rollups == exact sums of raw events; raw events == what was accepted; each event counted once."""
    events = raw_events(container)
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "an event is stored twice"
    assert set(ids) == set(ledger.events), "the stored events are not the accepted ones"
    for e in events:
        accepted = ledger.events[e.id]
        assert (e.service_line_id, e.meter, e.quantity, e.period_date, e.event_time) == (
            accepted.service_line_id,
            accepted.meter,
            accepted.quantity,
            accepted.period_date,
            accepted.event_time,
        )
    stored = stored_rollups(container)
    assert rollup_mismatches(container, events, stored) == []
    counted = Counter(event_id for chunk in markers(container).values() for event_id in chunk)
    assert [i for i, n in counted.items() if n > 1] == [], "an event is in two applied markers"
    assert set(counted) == set(ids), "applied markers do not cover exactly the stored events"
    day_total = sum((q for (_, _, grain, _, _), (q, _, _) in stored.items() if grain == "D"), Decimal(0))
    hour_total = sum((q for (_, _, grain, _, _), (q, _, _) in stored.items() if grain == "H"), Decimal(0))
    assert day_total == hour_total == ledger.total()
    if settled:
        assert [b.batch_id for b in container.events.pending_before("C")] == [], "a batch is still pending"
    return events


def stored_group_rollups(container: Container) -> list[Rollup]:
    """Every group rollup (day and hour, per value of each meter's group_by keys) of the test lines' meters.

    A rollup item of any other meter would break `stored_rollups`' count of each line's items."""
    found: list[Rollup] = []
    meters = {meter.id: meter for meter in container.catalog.list_meters()}
    for line, org in LINE_ORG.items():
        for meter in (meters[meter_id] for meter_id in LINE_METERS[line]):
            for group_key in meter.group_by:
                found += container.rollups.group_day_rollups(org, line, meter.id, group_key, FAR_PAST, FAR_FUTURE)
                found += container.rollups.group_hour_rollups(
                    org, line, meter.id, group_key, "2000-01-01T00", "2100-01-01T00"
                )
    return found


def snapshot(container: Container) -> dict[Key, tuple[Decimal, int, int]]:
    return stored_rollups(container)


@pytest.fixture
def pipe(container: Container) -> Pipeline:
    return Pipeline(container)


# -- (a) duplicate delivery ------------------------------------------------------------------------


def test_same_message_delivered_again_counts_once(container: Container, pipe: Pipeline) -> None:
    pipe.ingest_accepted(mixed_drafts(12, "dup"))
    [message] = pipe.receive()
    assert pipe.invoke([message]) == set()  # applied, but the delete never happened
    first = snapshot(container)
    assert first

    [again] = pipe.redeliver([message])
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    assert pipe.deliver([again]) == set()
    assert snapshot(container) == first  # not a single rollup touched, not even its version
    assert pipe.queue_depth() == 0
    assert_exact(container, pipe.ledger)


def test_copy_of_a_message_in_the_same_lambda_batch_counts_once(container: Container, pipe: Pipeline) -> None:
    """A producer retry (or the sweeper) can put a second copy of a batch's message next to the original."""
    pipe.ingest_accepted(mixed_drafts(12, "copy"))
    pipe.ingest_accepted(mixed_drafts(5, "other", org=ORG2), org=ORG2)
    messages = pipe.receive()
    assert len(messages) == 2
    pipe.release(messages)
    pipe.send_raw(messages[0]["Body"])
    batch = pipe.receive()
    assert len(batch) == 3  # the original, its copy and another batch, in one Lambda invocation
    assert pipe.deliver(batch) == set()
    assert pipe.queue_depth() == 0
    assert_exact(container, pipe.ledger)


# -- (b) a whole batch delivered again -------------------------------------------------------------


def test_whole_sqs_batch_delivered_again_after_it_was_applied(container: Container, pipe: Pipeline) -> None:
    for n in range(6):
        pipe.ingest_accepted(mixed_drafts(8 + n, f"b{n}"))
    pipe.ingest_accepted(mixed_drafts(9, "b-org2", org=ORG2), org=ORG2)
    batch = pipe.receive()
    assert len(batch) == 7
    assert pipe.invoke(batch) == set()  # applied; the Lambda then timed out before SQS deleted anything
    applied = snapshot(container)
    assert_exact(container, pipe.ledger)

    again = pipe.redeliver(batch)
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in again} == {"2"}
    assert pipe.deliver(again) == set()
    assert snapshot(container) == applied
    assert pipe.queue_depth() == 0
    assert_exact(container, pipe.ledger)


# -- (c) a crash between two writes ----------------------------------------------------------------


def test_crash_after_first_transaction_then_redelivery_is_exact(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    drafts = wide_drafts("wide")
    assert distinct_rollup_keys(drafts) > 98
    batch_id = pipe.ingest_accepted(drafts)
    [message] = pipe.receive()

    with monkeypatch.context() as patch:
        faulty = crash_rollups_after(patch, container, transactions=1)
        with pytest.raises(InjectedCrash):
            pipe.deliver([message])
        assert faulty.calls == 2  # the first transaction went through, the second died

    # Half-applied: one chunk is in (its rollups hold exactly its events), and the batch is still pending.
    [(chunk, event_ids)] = markers(container).items()
    assert chunk.startswith(f"APPLIED#{batch_id}/")
    partial = [pipe.ledger.events[i] for i in event_ids]
    assert 0 < len(partial) < 100
    assert rollup_mismatches(container, partial) == []
    assert pipe.pending() == [batch_id]

    [again] = pipe.receive()
    assert again["MessageId"] == message["MessageId"]
    assert pipe.deliver([again]) == set()
    assert pipe.queue_depth() == 0
    assert_exact(container, pipe.ledger)


def test_crash_in_the_middle_of_a_lambda_batch_then_redelivery_is_exact(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe.ingest_accepted(wide_drafts("w1"))
    pipe.ingest_accepted(wide_drafts("w2")[:60])
    pipe.ingest_accepted(mixed_drafts(20, "m", org=ORG2), org=ORG2)
    batch = pipe.receive()
    assert len(batch) == 3
    with monkeypatch.context() as patch:
        crash_rollups_after(patch, container, transactions=2)
        with pytest.raises(InjectedCrash):
            pipe.deliver(batch)
    partial = markers(container)
    assert partial
    assert sorted(pipe.pending()) == sorted({e.batch_id for e in pipe.ledger.events.values()})
    pipe.drain()
    assert_exact(container, pipe.ledger)
    assert set(partial) < set(markers(container))


def test_crash_before_pending_delete_is_fixed_by_sweeper_and_redelivery(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = pipe.ingest_accepted(mixed_drafts(30, "late-crash"))
    [message] = pipe.receive()
    with monkeypatch.context() as patch:
        faulty = FaultyClient(clients.dynamodb(), "batch_write_item")  # the pending delete
        patch.setattr(container, "events", DynamoEventStore(container.settings.events_table, client=faulty))  # type: ignore[arg-type]
        with pytest.raises(InjectedCrash):
            pipe.deliver([message])
        assert faulty.failures == 1
    counted = snapshot(container)
    assert_exact(container, pipe.ledger, settled=False)  # every transaction was in
    assert pipe.pending() == [batch_id]

    # The sweeper finds the batch still pending once the grace period is over ...
    assert pipe.sweep(NOW + timedelta(minutes=1)) == []
    assert pipe.sweep(NOW + timedelta(minutes=6)) == [batch_id]
    # ... and its message arrives with the redelivered original: nothing is added twice.
    deliveries = pipe.receive()
    assert len(deliveries) == 2
    assert {BatchMessage.model_validate_json(m["Body"]).origin for m in deliveries} == {"ingest", "sweep"}
    pipe.release(deliveries)
    pipe.drain()
    assert snapshot(container) == counted
    assert pipe.pending() == []
    assert_exact(container, pipe.ledger)


def test_crash_before_pending_delete_then_sweep_and_redelivery_in_separate_invocations(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = pipe.ingest_accepted(mixed_drafts(30, "late-crash"))
    [message] = pipe.receive()
    with monkeypatch.context() as patch:
        faulty = FaultyClient(clients.dynamodb(), "batch_write_item")
        patch.setattr(container, "events", DynamoEventStore(container.settings.events_table, client=faulty))  # type: ignore[arg-type]
        with pytest.raises(InjectedCrash):
            pipe.deliver([message])
    counted = snapshot(container)
    assert pipe.sweep(NOW + timedelta(minutes=6)) == [batch_id]
    deliveries = pipe.receive()
    assert len(deliveries) == 2
    for delivery in deliveries:  # one invocation each
        assert pipe.deliver([delivery]) == set()
    assert snapshot(container) == counted
    assert pipe.queue_depth() == 0
    assert pipe.sweep(NOW + timedelta(minutes=20)) == []
    assert_exact(container, pipe.ledger)


@pytest.mark.parametrize("lost", ["sdk-retry", "error-after-write"])
def test_event_write_whose_response_was_lost_is_still_rolled_up(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, lost: str
) -> None:
    """A PutItem of an event succeeds but its answer is lost.

    "sdk-retry": the connection drops and botocore retries the same request, which finds the event itself.
    "error-after-write": DynamoDB answers InternalServerError (the write "may or may not have succeeded");
    the caller, told to retry, retries with the same idempotency key and is answered with the stored event.
    Either way the event is stored and the caller holds it, so it must reach the rollups.
    """

    class LostResponse(FaultyClient):
        def __getattr__(self, name: str) -> Any:
            target = getattr(self.inner, name)
            if name != "put_item":
                return target

            def call(**kwargs: Any) -> Any:
                if not kwargs["Item"]["pk"]["S"].endswith("#K#lost-3") or self.failures:
                    return target(**kwargs)
                self.failures += 1
                target(**kwargs)  # written ...
                if lost == "sdk-retry":
                    return target(**kwargs)  # ... and sent again by the SDK's automatic retry
                raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, "PutItem")

            return call

    faulty = LostResponse(clients.dynamodb(), "put_item")
    drafts = [draft(TALENT, "talent.hours", f"1.{i}5", key=f"lost-{i}", event_time=NOW) for i in range(6)]
    with monkeypatch.context() as patch:
        patch.setattr(container, "events", DynamoEventStore(container.settings.events_table, client=faulty))  # type: ignore[arg-type]
        outcomes = pipe.ingest(drafts)
    assert faulty.failures == 1
    if outcomes[3].status == "rejected":  # the caller retries what it was told to retry
        [retried] = pipe.ingest([drafts[3]], now=NOW + timedelta(seconds=2))
        outcomes[3] = retried
    assert [o.status for o in outcomes[:3] + outcomes[4:]] == ["accepted"] * 5
    assert outcomes[3].status in ("accepted", "duplicate") and outcomes[3].event is not None
    stored = {o.event.id: o.event for o in outcomes if o.event is not None}
    assert len(stored) == 6
    pipe.ledger.events.update(stored)
    pipe.drain()
    assert pipe.pending() == []  # the pipeline considers every batch rolled up ...
    assert_exact(container, pipe.ledger)  # ... so every stored event must be in the rollups


# -- (d) a failed enqueue --------------------------------------------------------------------------


def test_failed_enqueue_is_recovered_by_the_sweeper(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        faulty = fail_enqueues(patch, container)
        batch_id = pipe.ingest_accepted(mixed_drafts(25, "lost-send"))  # the caller is told: accepted
        assert faulty.failures == 1
    assert pipe.queue_depth() == 0
    pipe.drain()
    assert stored_rollups(container) == {}
    assert pipe.pending() == [batch_id]

    assert pipe.sweep(NOW + timedelta(minutes=4)) == []  # still within the grace period
    assert pipe.queue_depth() == 0
    assert pipe.sweep(NOW + timedelta(minutes=6)) == [batch_id]
    [message] = pipe.receive()
    assert BatchMessage.model_validate_json(message["Body"]).origin == "sweep"
    assert pipe.deliver([message]) == set()
    assert pipe.pending() == []
    assert pipe.sweep(NOW + timedelta(minutes=30)) == []
    assert_exact(container, pipe.ledger)


def test_sweep_message_skips_events_that_were_never_stored(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending record lists an event whose put failed; the sweeper's message must skip it, not poison."""
    unavailable = ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, "PutItem")

    class FailOnePut(FaultyClient):
        def __getattr__(self, name: str) -> Any:
            target = getattr(self.inner, name)
            if name != "put_item":
                return target

            def call(**kwargs: Any) -> Any:
                if kwargs["Item"]["pk"]["S"].endswith("#K#gap-4"):
                    raise unavailable
                return target(**kwargs)

            return call

    with monkeypatch.context() as patch:
        fail_enqueues(patch, container)
        store = DynamoEventStore(container.settings.events_table, client=FailOnePut(clients.dynamodb(), "put_item"))  # type: ignore[arg-type]
        patch.setattr(container, "events", store)
        outcomes = pipe.ingest(mixed_drafts(10, "gap"))
    assert [o.status for o in outcomes].count("rejected") == 1
    assert outcomes[4].status == "rejected"
    [batch_id] = pipe.pending()
    assert pipe.sweep(NOW + timedelta(minutes=6)) == [batch_id]
    [message] = pipe.receive()
    assert len(BatchMessage.model_validate_json(message["Body"]).events) == 10
    assert pipe.deliver([message]) == set()
    assert_exact(container, pipe.ledger)


# -- (e) concurrent aggregators --------------------------------------------------------------------


def test_concurrent_aggregators_on_overlapping_deliveries_are_exact(container: Container, pipe: Pipeline) -> None:
    pipe.ingest_accepted(wide_drafts("cw"))
    for n in range(5):
        pipe.ingest_accepted(mixed_drafts(15 + n, f"c{n}"))
    pipe.ingest_accepted(mixed_drafts(11, "c-org2", org=ORG2), org=ORG2)
    first = pipe.receive()
    assert len(first) == 7
    second = pipe.redeliver(first)
    third = pipe.redeliver(second)
    by_id = [{m["MessageId"]: m for m in d} for d in (first, second, third)]
    ids = sorted(by_id[0])
    # Three workers, each holding some (overlapping) deliveries of the same messages.
    assignments = [
        [by_id[0][i] for i in ids[0:5]],
        [by_id[1][i] for i in ids[2:7]],
        [by_id[2][i] for i in reversed(ids)],
    ]
    barrier = threading.Barrier(len(assignments))
    failed: list[set[str]] = [set() for _ in assignments]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        barrier.wait()
        try:
            failed[n] = pipe.invoke(assignments[n])
        except BaseException as exc:  # reported below
            errors.append(exc)
            failed[n] = {m["MessageId"] for m in assignments[n]}

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(assignments))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Lambda deletes each message some invocation succeeded with; the others come back.
    succeeded = {m["MessageId"] for n, a in enumerate(assignments) for m in a if m["MessageId"] not in failed[n]}
    pipe.delete(by_id[2][i] for i in succeeded)
    pipe.release(by_id[2][i] for i in ids if i not in succeeded)
    pipe.drain()
    assert_exact(container, pipe.ledger)


# -- (f) late and out-of-order events --------------------------------------------------------------


def test_late_and_out_of_order_events_land_in_their_own_rollups(container: Container, pipe: Pipeline) -> None:
    late_day = TODAY - timedelta(days=10)
    late_time = datetime.combine(late_day, datetime.min.time(), UTC) + timedelta(hours=22, minutes=59, seconds=59)
    newer = pipe.ingest_accepted(
        [draft(TALENT, "talent.hours", "2.5", event_time=NOW - timedelta(minutes=m), key=f"n{m}") for m in (1, 2)]
    )
    late = pipe.ingest_accepted(
        [
            draft(TALENT, "talent.hours", "0.125", period_date=late_day, event_time=late_time, key="late-1"),
            draft(TALENT, "talent.hours", "3.000000001", period_date=late_day, key="late-2"),  # reported now
            draft(TALENT, "talent.days", "1", period_date=late_day, event_time=late_time, key="late-3"),
            # out of order: event time two hours earlier than the events delivered before it
            draft(TALENT, "talent.hours", "4.75", event_time=NOW - timedelta(hours=2), key="ooo"),
        ],
        now=NOW + timedelta(seconds=1),
    )
    messages = {BatchMessage.model_validate_json(m["Body"]).batch: m for m in pipe.receive()}
    assert set(messages) == {newer, late}
    assert pipe.deliver([messages[late]]) == set()  # the later batch is aggregated first
    assert pipe.deliver([messages[newer]]) == set()

    days = {
        (r.key.meter, r.key.period_date): (r.quantity, r.event_count)
        for r in container.rollups.day_rollups(ORG, TALENT, late_day, TODAY, consistent=True)
    }
    assert days == {
        ("talent.hours", late_day.isoformat()): (Decimal("3.125000001"), 2),
        ("talent.days", late_day.isoformat()): (Decimal(1), 1),
        ("talent.hours", TODAY.isoformat()): (Decimal("9.75"), 3),
    }
    late_hour = late_time.strftime("%Y-%m-%dT%H")
    hours = {
        (r.key.meter, r.key.hour, r.key.period_date): (r.quantity, r.event_count)
        for r in container.rollups.hour_rollups(ORG, TALENT, late_hour, "2100-01-01T00")
    }
    assert hours[("talent.hours", late_hour, late_day.isoformat())] == (Decimal("0.125"), 1)
    assert hours[("talent.hours", NOW.strftime("%Y-%m-%dT%H"), late_day.isoformat())] == (Decimal("3.000000001"), 1)
    assert hours[("talent.hours", (NOW - timedelta(hours=2)).strftime("%Y-%m-%dT%H"), TODAY.isoformat())] == (
        Decimal("4.75"),
        1,
    )
    period = {
        (r.key.meter, r.key.grain, r.key.hour) for r in container.rollups.rollups_of_period(ORG, TALENT, late_day)
    }
    assert period == {
        ("talent.hours", "D", ""),
        ("talent.days", "D", ""),
        ("talent.hours", "H", late_hour),
        ("talent.days", "H", late_hour),
        ("talent.hours", "H", NOW.strftime("%Y-%m-%dT%H")),
    }
    assert_exact(container, pipe.ledger)


# -- (g) poison messages ---------------------------------------------------------------------------


def test_poison_messages_fail_then_go_to_the_dead_letter_queue_on_fifth_delivery(
    container: Container, pipe: Pipeline
) -> None:
    pipe.ingest_accepted(mixed_drafts(10, "valid"))
    ghost_batch = new_batch_id(NOW)
    ghost_event = usage_event_id(NOW)
    ghost_body = BatchMessage(
        batch=ghost_batch, org=ORG, created=instant(NOW), origin="ingest", events=[("K#ghost", ghost_event)]
    ).model_dump_json()
    garbage_body = '{"batch": "not a batch", '
    pipe.send_raw(garbage_body)
    pipe.send_raw(ghost_body)
    deliveries = pipe.receive()
    assert len(deliveries) == 3
    poison = {m["MessageId"]: m["Body"] for m in deliveries if m["Body"] in (garbage_body, ghost_body)}

    assert pipe.deliver(deliveries) == set(poison)
    assert_exact(container, pipe.ledger)  # the valid batch of the same invocation is applied
    assert pipe.pending() == []
    later = pipe.ingest_accepted(mixed_drafts(4, "later"), now=NOW + timedelta(seconds=1))

    for delivery in range(2, 6):
        messages = pipe.receive()
        if delivery == 2:  # a fresh valid batch shares the invocation with the poison
            assert [
                BatchMessage.model_validate_json(m["Body"]).batch for m in messages if m["MessageId"] not in poison
            ] == [later]
        poisoned = [m for m in messages if m["MessageId"] in poison]
        assert {m["Attributes"]["ApproximateReceiveCount"] for m in poisoned} == {str(delivery)}
        failed = pipe.deliver(messages)
        assert failed == (set() if delivery == 5 else set(poison))
        assert_exact(container, pipe.ledger)

    assert pipe.queue_depth() == 0
    dlq_url = container.dead_letters.url
    dead: list[Message] = pipe.sqs.receive_message(  # type: ignore[assignment]
        QueueUrl=dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
    ).get("Messages", [])
    assert sorted(m["Body"] for m in dead) == sorted(poison.values())
    reasons = {m["Body"]: m["MessageAttributes"]["reason"]["StringValue"] for m in dead}
    assert reasons[garbage_body]
    assert ghost_batch in reasons[ghost_body]


class RefusingRollups:
    """A DynamoDB client that refuses, the same way every time, any transaction touching one rollup
    (as AWS does for a request it finds invalid); `conflicts` transactions first fail with a conflict."""

    def __init__(self, inner: Any, poison_sk_part: str, conflicts: int = 0) -> None:
        self.inner = inner
        self.poison = poison_sk_part
        self.conflicts = conflicts
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        items = kwargs["TransactItems"]
        keys = [a["Update"]["Key"]["sk"]["S"] if "Update" in a else "" for a in items]
        codes = ["ValidationError" if self.poison in k else "None" for k in keys]
        if self.conflicts and "ValidationError" not in codes:
            self.conflicts -= 1
            codes = ["TransactionConflict"] + ["None"] * (len(items) - 1)
        if set(codes) != {"None"}:
            self.refused += 1
            raise ClientError(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "injected"},
                    "CancellationReasons": [{"Code": c} for c in codes],  # type: ignore[typeddict-unknown-key]
                },
                "TransactWriteItems",
            )
        return self.inner.transact_write_items(**kwargs)


def test_a_rollup_that_can_never_be_written_holds_back_only_its_own_batch(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_day = TODAY - timedelta(days=4)
    refusing = RefusingRollups(clients.dynamodb(), f"D#{poison_day.isoformat()}#agent.tokens")
    monkeypatch.setattr(container, "rollups", DynamoRollupStore(container.settings.rollups_table, client=refusing))  # type: ignore[arg-type]
    good = pipe.ingest_accepted(mixed_drafts(12, "good"))
    at = NOW - timedelta(days=4)
    bad = pipe.ingest_accepted([draft(AGENT, "agent.tokens", "0.000000001", poison_day, at, "bad-0")])
    bad_events = [e for e in pipe.ledger.events.values() if e.batch_id == bad]
    other = pipe.ingest_accepted(mixed_drafts(6, "other", org=ORG2), org=ORG2)
    messages = pipe.receive()
    assert len(messages) == 3
    poison = {m["MessageId"] for m in messages if BatchMessage.model_validate_json(m["Body"]).batch == bad}

    assert pipe.deliver(messages) == poison  # one invocation, one packed transaction at first
    assert refusing.refused >= 2  # the packed group, then the bad unit alone
    rolled_up = [e for e in pipe.ledger.events.values() if e.batch_id != bad]
    assert rollup_mismatches(container, rolled_up) == []
    assert pipe.pending() == [bad]  # good and other are done

    for delivery in range(2, 6):
        messages = pipe.receive()
        assert [m["Attributes"]["ApproximateReceiveCount"] for m in messages] == [str(delivery)]
        assert pipe.deliver(messages) == (set() if delivery == 5 else poison)
    dead = pipe.sqs.receive_message(
        QueueUrl=container.dead_letters.url, MessageAttributeNames=["All"], MaxNumberOfMessages=10
    ).get("Messages", [])
    assert [BatchMessage.model_validate_json(m["Body"]).batch for m in dead] == [bad]
    assert "ValidationError" in dead[0]["MessageAttributes"]["reason"]["StringValue"]
    # Still pending (accepted, not rolled up), but the sweeper leaves it to the dead-letter queue.
    assert pipe.pending() == [bad]
    assert pipe.sweep(NOW + timedelta(hours=1)) == []
    assert pipe.queue_depth() == 0
    assert rollup_mismatches(container, rolled_up) == []
    assert {good, other}.isdisjoint(pipe.pending())
    assert bad_events and all(e.quantity == Decimal("0.000000001") for e in bad_events)

    # An operator fixes the cause and redrives the message: it is applied once.
    monkeypatch.setattr(container, "rollups", DynamoRollupStore(container.settings.rollups_table))
    pipe.send_raw(dead[0]["Body"])
    pipe.drain()
    assert_exact(container, pipe.ledger)


def test_conflicts_are_retried_and_split_nothing(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing = RefusingRollups(clients.dynamodb(), "no rollup has this key", conflicts=2)
    monkeypatch.setattr(container, "rollups", DynamoRollupStore(container.settings.rollups_table, client=refusing))  # type: ignore[arg-type]
    pipe.ingest_accepted(mixed_drafts(8, "a"))
    pipe.ingest_accepted(mixed_drafts(8, "b", org=ORG2), org=ORG2)
    messages = pipe.receive()
    assert pipe.deliver(messages) == set()
    assert refusing.refused == 2
    assert_exact(container, pipe.ledger)


# -- (h) a wide batch: several chunks and transactions ---------------------------------------------


def test_wide_batch_spans_several_transactions_and_redelivery_adds_nothing(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    drafts = wide_drafts("h")
    assert distinct_rollup_keys(drafts) > 98
    batch_id = pipe.ingest_accepted(drafts)
    counter = FaultyClient(clients.dynamodb(), "transact_write_items", after=10**9)
    monkeypatch.setattr(container, "rollups", DynamoRollupStore(container.settings.rollups_table, client=counter))  # type: ignore[arg-type]
    [message] = pipe.receive()
    assert pipe.invoke([message]) == set()
    assert counter.calls >= 2
    chunks = markers(container)
    assert len(chunks) >= 2 and all(k.startswith(f"APPLIED#{batch_id}/") for k in chunks)
    assert len(stored_rollups(container)) == distinct_rollup_keys(drafts)
    applied = snapshot(container)
    assert_exact(container, pipe.ledger)

    [again] = pipe.redeliver([message])
    assert pipe.deliver([again]) == set()
    assert snapshot(container) == applied
    assert_exact(container, pipe.ledger)


# -- (i) reconciliation and the sweeper under concurrency ------------------------------------------


def corrupt(container: Container, line: str, sk: str, quantity: str, count: int) -> None:
    """Drift: someone (a bug, an operator) changed a rollup behind the pipeline's back."""
    clients.dynamodb().update_item(
        TableName=container.settings.rollups_table,
        Key={"pk": {"S": rollup_pk(LINE_ORG[line], line)}, "sk": {"S": sk}},
        UpdateExpression="ADD quantity :q, event_count :n",
        ExpressionAttributeValues={":q": {"N": quantity}, ":n": {"N": str(count)}},
        ConditionExpression="attribute_exists(pk)",
    )


def recent_drafts(tag: str) -> list[UsageDraft]:
    return [
        draft(TALENT, "talent.hours", "1.25", event_time=NOW - timedelta(minutes=5), key=f"{tag}-1"),
        draft(TALENT, "talent.days", "0.5", period_date=TODAY - timedelta(days=1), key=f"{tag}-2"),
        draft(AGENT, "agent.tokens", "1200.000000007", event_time=NOW - timedelta(hours=3), key=f"{tag}-3"),
        draft(AGENT, "agent.runs", "3", period_date=TODAY - timedelta(days=2), key=f"{tag}-4"),
    ]


def reconcile_now(container: Container, at: datetime = NOW) -> reconcile.ReconcileReport:
    return reconcile.reconcile(container.catalog, container.events, container.rollups, at, quiet=timedelta(0))


def test_reconcile_repairs_drift_and_reports_it(container: Container, pipe: Pipeline) -> None:
    pipe.ingest_accepted(recent_drafts("r"))
    pipe.ingest_accepted(mixed_drafts(12, "r-org2", org=ORG2), org=ORG2)
    pipe.drain()
    assert_exact(container, pipe.ledger)
    hour = (NOW - timedelta(hours=3)).strftime("%Y-%m-%dT%H")
    corrupt(container, TALENT, f"D#{TODAY.isoformat()}#talent.hours", "0.001", 0)
    corrupt(container, AGENT, f"H#{hour}#agent.tokens#{TODAY.isoformat()}", "-7", 1)
    assert len(rollup_mismatches(container, raw_events(container))) == 2

    report = reconcile_now(container, NOW + timedelta(minutes=1))
    repaired = {(r["service_line_id"], r["meter"], r["grain"], r["hour"]): r for r in report.repaired}
    assert set(repaired) == {(TALENT, "talent.hours", "D", None), (AGENT, "agent.tokens", "H", hour)}
    assert repaired[(TALENT, "talent.hours", "D", None)]["was"] == {"quantity": Decimal("1.251"), "event_count": 1}
    assert repaired[(TALENT, "talent.hours", "D", None)]["now"] == {"quantity": Decimal("1.25"), "event_count": 1}
    assert repaired[(AGENT, "agent.tokens", "H", hour)]["now"] == {
        "quantity": Decimal("1200.000000007"),
        "event_count": 1,
    }
    assert report.as_dict()["repaired"] == 2
    assert_exact(container, pipe.ledger)

    settled = snapshot(container)
    again = reconcile_now(container, NOW + timedelta(minutes=2))
    assert again.repaired == [] and again.checked > 0 and again.skipped_recent == 0
    assert snapshot(container) == settled


def test_the_scheduled_reconciler_sends_bounded_work_items_that_the_aggregator_runs(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import app

    pipe.ingest_accepted(recent_drafts("w"))
    pipe.ingest_accepted(mixed_drafts(12, "w-org2", org=ORG2), org=ORG2)
    pipe.drain()
    corrupt(container, TALENT, f"D#{TODAY.isoformat()}#talent.hours", "0.001", 0)
    corrupt(container, MOBILE, f"D#{(TODAY - timedelta(days=1)).isoformat()}#talent.hours", "5", 2)
    assert len(rollup_mismatches(container, raw_events(container))) == 2
    monkeypatch.setattr(reconcile, "PLAN_LINES_PER_RUN", 1)  # a platform much larger than its runs
    later = NOW + timedelta(minutes=5)
    container.clock = lambda: later
    every_line = {(line.organization_id, line.id) for line in container.catalog.all_service_lines()}
    assert len(every_line) > 2

    planned: list[tuple[str, str]] = []
    for _ in range(100):  # one line a run: every line within a bounded number of runs
        report = app.handler_map["reconcile_rollups"](scheduled_event("reconcile", "us-east-1"), make_context("r"))
        assert report["lines"] <= 1
        for message in pipe.receive():
            item = ReconcileMessage.model_validate_json(message["Body"])
            assert len(item.lines) <= reconcile.LINES_PER_ITEM
            assert item.days == [(later.date() - timedelta(days=d)).isoformat() for d in range(reconcile.RECENT_DAYS)]
            planned.extend((item.org, line) for line in item.lines)
            assert pipe.deliver([message]) == set()  # the aggregator's handler runs the work item
        if report["cycle_complete"]:
            break
    else:
        raise AssertionError("the planner never completed a cycle")
    assert sorted(planned) == sorted(every_line)  # each line once per cycle, every organization's own
    assert_exact(container, pipe.ledger)  # both drifts repaired
    again: list[tuple[str, str]] = []
    while not again:  # the next cycle starts from the first line again
        app.handler_map["reconcile_rollups"](scheduled_event("reconcile", "us-east-1"), make_context("r"))
        again = [(m.org, line) for m in map(ReconcileMessage.model_validate_json, bodies(pipe)) for line in m.lines]
    assert again == planned[:1]


def bodies(pipe: Pipeline) -> list[str]:
    messages = pipe.receive()
    pipe.delete(messages)
    return [m["Body"] for m in messages]


def test_reconcile_leaves_correct_rollups_alone(container: Container, pipe: Pipeline) -> None:
    pipe.ingest_accepted(recent_drafts("ok"))
    pipe.ingest_accepted(mixed_drafts(30, "ok2"), now=NOW + timedelta(seconds=1))
    pipe.drain()
    before = snapshot(container)
    groups_before = stored_group_rollups(container)
    report = reconcile_now(container, NOW + timedelta(minutes=1))
    assert report.repaired == []
    # every rollup of the 3 recent days was looked at, the rollups per group value too
    assert report.checked == len(before) + len(groups_before)
    assert report.skipped_recent == 0 and report.changed_during_check == 0
    assert snapshot(container) == before
    assert stored_group_rollups(container) == groups_before
    assert_exact(container, pipe.ledger)


def test_reconcile_ignores_events_of_a_batch_never_aggregated(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe.ingest_accepted(recent_drafts("seen"))
    pipe.drain()
    with monkeypatch.context() as patch:
        fail_enqueues(patch, container)
        stuck = pipe.ingest_accepted(recent_drafts("stuck"), now=NOW + timedelta(seconds=1))
    before = snapshot(container)
    report = reconcile_now(container, NOW + timedelta(minutes=1))
    assert report.repaired == []
    assert snapshot(container) == before
    assert pipe.sweep(NOW + timedelta(minutes=7)) == [stuck]
    pipe.drain()
    assert_exact(container, pipe.ledger)


def test_reconcile_counts_a_half_applied_pending_batch_as_far_as_its_markers_say(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe.ingest_accepted(recent_drafts("base"))
    pipe.drain()
    wide = wide_drafts("half")
    assert distinct_rollup_keys(wide) > 98
    pipe.ingest_accepted(wide, now=NOW + timedelta(seconds=1))
    [message] = pipe.receive()
    with monkeypatch.context() as patch:
        crash_rollups_after(patch, container, transactions=1)
        with pytest.raises(InjectedCrash):
            pipe.deliver([message])
    assert len(pipe.pending()) == 1
    before = snapshot(container)
    report = reconcile_now(container, NOW + timedelta(minutes=1))
    assert report.repaired == []
    assert snapshot(container) == before
    pipe.drain()
    assert_exact(container, pipe.ledger)
    assert reconcile_now(container, NOW + timedelta(minutes=2)).repaired == []


def test_two_concurrent_reconcilers_repair_each_drift_once(container: Container, pipe: Pipeline) -> None:
    pipe.ingest_accepted(recent_drafts("cc"))
    pipe.ingest_accepted(mixed_drafts(40, "cc2"), now=NOW + timedelta(seconds=1))
    pipe.drain()
    drifted = [
        (TALENT, f"D#{TODAY.isoformat()}#talent.hours"),
        (AGENT, f"D#{(TODAY - timedelta(days=2)).isoformat()}#agent.runs"),
        (TALENT, f"D#{(TODAY - timedelta(days=1)).isoformat()}#talent.days"),
    ]
    for line, sk in drifted:
        corrupt(container, line, sk, "5.5", 2)
    barrier = threading.Barrier(2)
    reports: list[reconcile.ReconcileReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            reports.append(reconcile_now(container, NOW + timedelta(minutes=1)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    repaired = Counter((r["service_line_id"], r["meter"], r["period_date"]) for rep in reports for r in rep.repaired)
    assert sorted(repaired) == sorted((line, sk.split("#")[2], sk.split("#")[1]) for line, sk in drifted)
    assert set(repaired.values()) == {1}
    assert_exact(container, pipe.ledger)


def test_two_concurrent_sweepers_enqueue_a_stale_batch_once(
    container: Container, pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        fail_enqueues(patch, container)
        stale = pipe.ingest_accepted(mixed_drafts(20, "stale"))
    later = NOW + timedelta(minutes=6)
    barrier = threading.Barrier(2)
    requeued: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            requeued.append(pipe.sweep(later))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(requeued) == 2
    assert sorted(b for r in requeued for b in r) == [stale]
    assert pipe.queue_depth() == 1
    assert pipe.sweep(later + timedelta(minutes=2)) == []  # claimed within the grace period
    assert pipe.queue_depth() == 1
    pipe.drain()
    assert_exact(container, pipe.ledger)
