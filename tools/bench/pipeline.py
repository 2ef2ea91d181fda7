"""Section 2: write units, read units, requests and dollars per event, counted from the calls the code makes."""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chalicelib.container import Container, set_container
from chalicelib.local.emulator import Emulator
from chalicelib.local.runtime import make_context, sqs_event
from chalicelib.services import catalog_admin
from chalicelib.storage import clients
from tools.bench.common import (
    BATCH_SIZE,
    COST_BATCH_EVENTS,
    COST_SINGLE_EVENTS,
    PRICE_LAMBDA,
    PRICE_RRU,
    PRICE_SQS,
    PRICE_WRU,
    ROOT,
    SQS_BATCH,
    dumps,
    event_body,
    log,
)
from tools.bench.meter import Call, CallMeter, CallTimeline, Tally, in_sequence, write_units
from tools.bench.stack import judge_batch, judge_single

if TYPE_CHECKING:
    from chalice.app import Chalice


@dataclass
class PhaseCost:
    name: str
    events: int
    http_requests: int
    invocations: int
    tally: Tally
    request_calls: list[list[Call]] = field(default_factory=list)  # the AWS calls of each HTTP request

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

    def mean_size(self, category: str) -> float:
        sizes = self.tally.sizes.get(category, [])
        return statistics.mean(sizes) if sizes else 0.0

    @property
    def first_request_calls(self) -> list[Call]:
        """The calls of the phase's first request: a fresh container, every cache empty."""
        return self.request_calls[0] if self.request_calls else []

    @property
    def warm_calls(self) -> float:
        """AWS calls per request once the container is warm (median over the rest of the phase)."""
        return statistics.median(len(c) for c in self.request_calls[1:]) if len(self.request_calls) > 1 else 0.0

    @property
    def warm_in_sequence(self) -> float:
        """Calls in sequence per request once the container is warm (median)."""
        rest = self.request_calls[1:]
        return statistics.median(in_sequence(c) for c in rest) if rest else 0.0

    def typical_calls(self) -> str:
        """The operations of a warm request with the median number of calls, in the order they ended."""
        rest = self.request_calls[1:]
        if not rest:
            return ""
        target = self.warm_calls
        calls = min(rest, key=lambda c: abs(len(c) - target))
        return ", ".join(f"{c.service} {c.operation}" for c in sorted(calls, key=lambda c: c.ended))


@dataclass(frozen=True)
class Floor:
    """The fewest write units per event a design can spend to store an event once, list it, and
    roll it up exactly once from an SQS-triggered aggregator; each part with what it stands for."""

    parts: tuple[tuple[str, float], ...]

    @property
    def total(self) -> float:
        return sum(units for _, units in self.parts)


def floor(phase: PhaseCost, events_per_message: int) -> Floor:
    """The floor for a phase's events, from the item sizes and rollup writes measured in it.

    - the event itself, written once under its idempotency key (a conditional put);
    - its listing entry: an index entry (or a second item) costs at least 1 unit, whatever it projects;
    - the exactly-once claim of the message that carries it to the aggregator: one marker item under
      1 KB, put in the same transaction as the rollup updates (x2), shared by the events of a message;
    - the rollup updates, as coalesced in this run (one update per distinct rollup key per transaction).
    No pending record: the reconciler finds an event whose enqueue failed through the listing index.
    """
    event_units = float(write_units(round(phase.mean_size("event put"))))
    rollups = sum(u for c, u in phase.tally.wru.items() if "rollup" in c) / phase.events
    return Floor(
        (
            ("event put", event_units),
            ("listing (by_line) entry", event_units),
            (
                f"exactly-once claim: a transactional marker per message of {events_per_message} "
                f"event{'' if events_per_message == 1 else 's'}",
                2 / events_per_message,
            ),
            (f"rollup updates as coalesced in this run ({SQS_BATCH} messages an invocation)", rollups),
        )
    )


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
    timeline = CallTimeline()
    try:
        base = Container.from_settings(settings)
        catalog_admin.load_platform_catalog(base.catalog)
        secret = catalog_admin.load_demo_data(base.catalog)["DEMO_API_KEY"].secret
        meter.install()
        timeline.install()
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
                request_calls: list[list[Call]] = []
                for body in bodies:
                    timeline.take()
                    timeline.recording = True
                    response = client.http.post(path, headers=headers, body=dumps(body).decode())
                    timeline.recording = False
                    request_calls.append(timeline.take())
                    judge = judge_single if name == "single" else judge_batch
                    answer = judge(response.status_code, response.body)
                    if answer is None or answer.replayed:
                        raise RuntimeError(f"cost {name}: {response.status_code} {response.body[:300]!r}")
                    events += answer.accepted
                invocations = drain(app, container, len(bodies), meter)
                phases.append(PhaseCost(name, events, len(bodies), invocations, meter.reset(), request_calls))
        return phases[0], phases[1]
    finally:
        meter.recording = False
        meter.uninstall()
        timeline.uninstall()
        set_container(None)
        emulator.stop()
