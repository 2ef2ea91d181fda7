"""The rollup pipeline's Lambda handlers: aggregator (SQS), sweeper and reconciler (schedules)."""

from __future__ import annotations

import logging
import os
from typing import Any

from chalice.app import Blueprint, Rate, SQSEvent

from chalicelib import observability
from chalicelib.container import get_container
from chalicelib.services import aggregate, reconcile, sweep
from chalicelib.storage.schema import QUEUES, resource_name

log = logging.getLogger("usage-metering.workers")
bp = Blueprint(__name__)

# The event source binding is deploy-time metadata, so Chalice needs the queue name when
# app.py is imported (packaging sets METERING_USAGE_QUEUE/METERING_STAGE for the stage).
USAGE_QUEUE = os.environ.get("METERING_USAGE_QUEUE") or resource_name(
    QUEUES["usage"].base_name, os.environ.get("METERING_STAGE", "dev")
)


@bp.on_sqs_message(queue=USAGE_QUEUE, batch_size=100, maximum_batching_window_in_seconds=5)
def aggregate_usage(event: SQSEvent) -> dict[str, Any]:
    """Fold queued batches into rollups; failed messages are reported for redelivery."""
    container = get_container()
    deliveries = []
    for record in event:
        raw = record.to_dict()
        deliveries.append(
            aggregate.Delivery(
                message_id=raw["messageId"],
                body=record.body,
                receive_count=int(raw.get("attributes", {}).get("ApproximateReceiveCount", "1")),
            )
        )
    result = aggregate.aggregate(
        deliveries, container.events, container.rollups, container.dead_letters, container.clock()
    )
    observability.count(observability.EVENTS_ROLLED_UP, result.events_applied)
    observability.count(observability.MESSAGES_DEAD_LETTERED, len(result.dead_lettered))
    observability.count(observability.ROLLUP_UNITS_POISONED, result.units_poisoned)
    observability.count(observability.ROLLUPS_REPAIRED, result.rollups_repaired)
    log.info(
        "aggregated",
        extra={
            "job": "aggregate",
            "messages": len(deliveries),
            "events_applied": result.events_applied,
            "chunks_applied": result.units_applied,
            "chunks_already_applied": result.units_already_applied,
            "transactions": result.transactions,
            "failed": len(result.failed),
            "dead_lettered": len(result.dead_lettered),
            "units_poisoned": result.units_poisoned,
            "reconcile_items": result.work_items,
            "rollups_repaired": result.rollups_repaired,
        },
    )
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in result.failed]}


@bp.schedule(Rate(2, unit=Rate.MINUTES))
def sweep_pending(event: Any) -> dict[str, Any]:
    """Re-enqueue batches that have been pending longer than the grace period."""
    container = get_container()
    report = sweep.sweep(container.events, container.queue, container.clock())
    observability.count(observability.BATCHES_SWEPT, len(report.requeued))
    summary = report.as_dict()
    log.info("swept", extra={"job": "sweep", **summary})
    return summary


@bp.schedule(Rate(10, unit=Rate.MINUTES))
def reconcile_rollups(event: Any) -> dict[str, Any]:
    """Send the next slice of service lines to reconcile as work items through the usage queue."""
    container = get_container()
    report = reconcile.plan(container.catalog, container.queue, container.clock())
    observability.count(observability.RECONCILE_ITEMS_PLANNED, report.items_sent)
    summary = report.as_dict()
    log.info("reconcile planned", extra={"job": "reconcile", **summary})
    return summary
