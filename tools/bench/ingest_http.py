"""Section 1: ingest throughput over HTTP against the local stack, next to the emulator's raw conditional-put rate."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from chalicelib.local.emulator import Emulator
from chalicelib.storage import clients, keys
from tools.bench.common import (
    BATCH_SIZE,
    CLIENT_THREADS,
    HTTP_BATCH_REQUESTS,
    HTTP_BATCH_SECONDS,
    HTTP_SINGLE_REQUESTS,
    HTTP_SINGLE_SECONDS,
    LINE,
    ORG,
    RAW_ITEM_BYTES,
    RAW_PUTS,
    count_items,
    dumps,
    event_body,
    log,
    quantity,
)
from tools.bench.meter import item_size
from tools.bench.stack import HttpRun, judge_batch, judge_single, local_stack, post_concurrently, wait_rolled_up


@dataclass
class IngestResults:
    single: HttpRun
    batch: HttpRun
    single_catch_up_s: float
    batch_catch_up_s: float
    raw_puts_per_s: float
    raw_puts: int
    raw_item_bytes: int


def measure_http_ingest() -> tuple[HttpRun, HttpRun, float, float]:
    """Batch, then single ingestion over HTTP; the stack's aggregator catches up after each run.

    Every idempotency key is new, so each event should be stored (201, or "accepted" in a batch).
    An answer that replays a stored event instead is counted, not hidden: the rates count only
    events stored, and the rollups must add up to the quantities of the events stored.
    """
    run = uuid.uuid4().hex[:8]
    single_path, batch_path = "/v1/metering/events", "/v1/metering/events/batch"
    with local_stack() as (host, port):
        # Warm-up (not timed): the first requests create clients and fill caches.
        warm = [dumps(event_body(f"bench-{run}-w{i}", i)) for i in range(2 * CLIENT_THREADS)]
        stored = post_concurrently(host, port, single_path, warm, judge_single).quantity
        wait_rolled_up(host, port, stored)

        log(f"HTTP: up to {HTTP_BATCH_REQUESTS} batch requests of {BATCH_SIZE} events or {HTTP_BATCH_SECONDS} s")
        batches = [
            dumps({"events": [event_body(f"bench-{run}-b{b}-{i}", i) for i in range(BATCH_SIZE)]})
            for b in range(HTTP_BATCH_REQUESTS)
        ]
        batch = post_concurrently(host, port, batch_path, batches, judge_batch, HTTP_BATCH_SECONDS)
        stored += batch.quantity
        batch_catch_up = wait_rolled_up(host, port, stored)

        log(f"HTTP: up to {HTTP_SINGLE_REQUESTS} single-event requests or {HTTP_SINGLE_SECONDS} s")
        bodies = [dumps(event_body(f"bench-{run}-s{i}", i)) for i in range(HTTP_SINGLE_REQUESTS)]
        single = post_concurrently(host, port, single_path, bodies, judge_single, HTTP_SINGLE_SECONDS)
        stored += single.quantity
        single_catch_up = wait_rolled_up(host, port, stored)
    return single, batch, single_catch_up, batch_catch_up


def raw_item(i: int, run: str) -> dict[str, Any]:
    """An event-sized item (RAW_ITEM_BYTES by DynamoDB's rules) in the events table, indexed by by_line."""
    item: dict[str, Any] = {
        "pk": {"S": keys.event_pk(ORG, f"K#raw-{run}-{i:06d}")},
        "sk": {"S": keys.EVENT_SK},
        "gsi1pk": {"S": keys.line_index_pk(ORG, LINE)},
        "gsi1sk": {"S": keys.line_index_sk("2026-01-01", f"USAGE-26-{run}{i:06d}")},
        "quantity": {"N": str(quantity(i))},
        "payload": {"S": ""},
    }
    item["payload"] = {"S": "x" * (RAW_ITEM_BYTES - item_size(item))}
    return item


def measure_raw_puts() -> tuple[float, int]:
    """Conditional PutItem calls per second on the in-process emulator, from CLIENT_THREADS threads."""
    emulator = Emulator()
    settings = emulator.start()
    try:
        table = settings.events_table
        run = uuid.uuid4().hex[:8]
        client = clients.dynamodb()

        def put(i: int) -> None:
            client.put_item(TableName=table, Item=raw_item(i, run), ConditionExpression="attribute_not_exists(pk)")

        for i in range(20):  # warm-up
            put(RAW_PUTS + i)
        barrier = threading.Barrier(CLIENT_THREADS + 1)

        def worker(offset: int) -> None:
            barrier.wait()
            for i in range(offset, RAW_PUTS, CLIENT_THREADS):
                put(i)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        count = count_items(table)
        if count != RAW_PUTS + 20:
            raise RuntimeError(f"raw puts: {count} items stored of {RAW_PUTS + 20}")
        return RAW_PUTS / seconds, item_size(raw_item(0, run))
    finally:
        emulator.stop()
