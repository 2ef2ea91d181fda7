"""Section 3: the DynamoDB items read and the latency of a 30-day usage summary at 1,000 and 100,000 events."""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from chalicelib.container import Container, set_container
from chalicelib.domain.models import ServiceLine
from chalicelib.domain.usage import WHOLE_METERS, UsageDraft
from chalicelib.local.emulator import Emulator
from chalicelib.local.runtime import make_context, sqs_event
from chalicelib.services import catalog_admin
from chalicelib.services.ingest import ingest
from chalicelib.storage.catalog_repo import DynamoCatalogRepository
from chalicelib.storage.events_repo import DynamoEventStore
from chalicelib.storage.memory import MemoryEventStore, MemoryQueue
from chalicelib.storage.rollups_repo import DynamoRollupStore
from tools.bench.common import (
    BATCH_SIZE,
    ORG,
    ROOT,
    SQS_BATCH,
    SUMMARY_DAYS,
    SUMMARY_LINES,
    SUMMARY_REQUESTS,
    SUMMARY_SIZES,
    count_items,
    log,
    quantity,
)
from tools.bench.meter import CallMeter
from tools.bench.stack import rolled_up_quantity

if TYPE_CHECKING:
    from chalice.app import Chalice
    from mypy_boto3_dynamodb import DynamoDBClient


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


COMBOS = [(line, meter) for line, meters in SUMMARY_LINES.items() for meter in meters]
SPREAD_EVENTS = 1_000  # enough to touch every (line, meter, day) of SUMMARY_LINES over SUMMARY_DAYS


class SummaryLoader:
    """Loads usage through ingest() in batches of 100 and rolls it up through the aggregator handler."""

    def __init__(self, app: Chalice, container: Container, today: dt.date) -> None:
        # The code under measure is the summary's reads of the rollups table on the emulator. The events
        # never need the emulator here (the summary never reads them): the in-memory event store
        # (storage/memory.py) holds them, and the rollups reach the emulator's table without botocore.
        rollups = cast("DynamoDBClient", DirectRollups(container.settings.region))
        self.app = app
        self.container = container
        self.loading = replace(
            container,
            events=cast(DynamoEventStore, MemoryEventStore()),
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
            quantity=quantity(n).to_integral_value() + 1 if meter in WHOLE_METERS else quantity(n),
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
                raise RuntimeError(f"summary load: {[o for o in outcomes if o.status != 'accepted'][:2]}")
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
