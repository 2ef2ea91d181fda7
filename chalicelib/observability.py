"""Structured JSON logs with the request id on every line, and CloudWatch embedded-format metrics.

Built on aws-lambda-powertools (Logger, Metrics): a well-kept library rather than
a hand-written formatter and EMF emitter; it costs ~70 ms of import at a cold
start and ~8 MB of package (docs/benchmarks.md measures the cold start).
Every logger under `usage-metering.*` goes through one JSON handler; `observe` (the
app's middleware) binds the ids of each invocation and flushes its metrics.

The local stack serves requests on many threads at once, and runs the SQS and
schedule handlers on threads of their own; Lambda runs one invocation at a time
per process but reuses the process. So the ids are bound with the Logger's
thread-safe keys (a context variable: each thread sees only its own), cleared
at the start and the end of every invocation: an HTTP request's lines carry its
`request_id` (API Gateway's, the one in `X-Request-Id` and error bodies), an
event handler's lines carry `function_request_id` (Lambda's) and never an API
request's id. Metrics are added under a lock, and each embedded-metric document
is written as one line through the log handler's own lock, so a document and a
log line never share a line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "usage-metering"
NAMESPACE = "UsageMetering"

logger = Logger(service=SERVICE, level=os.environ.get("LOG_LEVEL", "INFO"))
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
_metrics_lock = threading.Lock()
HTTP_ID = "request_id"
FUNCTION_ID = "function_request_id"

# The metric names, one per thing an operator watches.
EVENTS_ACCEPTED = "EventsAccepted"
EVENTS_DUPLICATE = "EventsDuplicate"
EVENTS_REJECTED = "EventsRejected"
EVENTS_ROLLED_UP = "EventsRolledUp"
BATCHES_SWEPT = "BatchesSwept"
ROLLUPS_REPAIRED = "RollupsRepaired"
MESSAGES_DEAD_LETTERED = "MessagesDeadLettered"
ROLLUP_UNITS_POISONED = "RollupUnitsPoisoned"
RECONCILE_ITEMS_PLANNED = "ReconcileItemsPlanned"


def count(name: str, value: int) -> None:
    """Add to a count metric of this invocation (nothing for zero)."""
    if value:
        with _metrics_lock:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def count_outcomes(statuses: list[str]) -> None:
    """Count ingestion outcomes: accepted, duplicate, and rejected (refusals and conflicts)."""
    count(EVENTS_ACCEPTED, statuses.count("accepted"))
    count(EVENTS_DUPLICATE, statuses.count("duplicate"))
    count(EVENTS_REJECTED, statuses.count("rejected") + statuses.count("conflict"))


def request_id_of(event: Any) -> str:
    """API Gateway's request id for an HTTP request (made up locally), Lambda's for other events."""
    context = getattr(event, "context", None)
    if isinstance(context, dict):
        request_id = context.get("requestId") or str(uuid.uuid4())
        context["requestId"] = request_id  # the route's error bodies quote the same id
        return str(request_id)
    return str(getattr(context, "aws_request_id", None) or uuid.uuid4())


def _ids_of(event: Any) -> dict[str, str]:
    """The log keys of one invocation: `request_id` for an HTTP request, `function_request_id` otherwise."""
    is_http = isinstance(getattr(event, "context", None), dict)
    return {HTTP_ID if is_http else FUNCTION_ID: request_id_of(event)}


def flush() -> None:
    """Write this invocation's metrics as one embedded-metric line (nothing when there are none)."""
    with _metrics_lock:
        if not metrics.metric_set:
            return
        document = metrics.serialize_metric_set()
        metrics.clear_metrics()
    line = json.dumps(document, separators=(",", ":")) + "\n"
    handler = logger.registered_handler  # its lock also guards every log line written to stdout
    handler.acquire()
    try:
        sys.stdout.write(line)  # one write: text and newline together, where print() makes two
        sys.stdout.flush()
    finally:
        handler.release()


def observe(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Chalice middleware for every event type: bind this invocation's id to the logs, flush metrics after."""
    outer = dict(logger.thread_safe_get_current_keys())  # empty unless one handler runs inside another
    logger.thread_safe_clear_keys()  # a reused thread (a poller, a pool) starts clean
    logger.thread_safe_append_keys(**_ids_of(event))
    try:
        return get_response(event)
    finally:
        logger.thread_safe_clear_keys()
        if outer:
            logger.thread_safe_append_keys(**outer)
        flush()
