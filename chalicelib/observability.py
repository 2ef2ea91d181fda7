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

Every metric is declared once in `METRICS` with the dimensions it is broken down
by. Each document carries two dimension sets: `service` alone (what alarms read)
and `service` plus the breakdown (endpoint, dialect, outcome). The endpoint is the
route template with its method (`POST /v1/metering/events`), never the raw path,
so the number of CloudWatch metrics stays bounded by the number of routes;
`tests/integration/test_deploy_template.py` checks every alarm and dashboard
widget against this table.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from chalice.app import SQSEvent

SERVICE = "usage-metering"
NAMESPACE = "UsageMetering"

logger = Logger(service=SERVICE, level=os.environ.get("LOG_LEVEL", "INFO"))
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
REQUESTS = "Requests"
REQUEST_LATENCY = "RequestLatency"
AGGREGATION_LAG = "AggregationLag"

# The dimensions beside `service`.
ENDPOINT = "endpoint"
DIALECT = "dialect"
OUTCOME = "outcome"
ROUTE = (ENDPOINT, DIALECT)
UNMATCHED = "unmatched"  # the endpoint of a request no route serves (404/405): one value, not one per path
# A request's outcome, from its status: a small fixed set.
SUCCESS, CLIENT_ERROR, RATE_LIMITED, SERVER_ERROR = "success", "client_error", "rate_limited", "server_error"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its unit, the dimensions it is broken down by (beside `service`), what it counts."""

    name: str
    unit: MetricUnit
    breakdown: tuple[str, ...]
    description: str

    @property
    def dimension_sets(self) -> tuple[tuple[str, ...], ...]:
        """The dimension sets each document carries: `service` alone, and with the breakdown when there is one."""
        base = ("service",)
        return (base, (*base, *self.breakdown)) if self.breakdown else (base,)


def _spec(name: str, unit: MetricUnit, breakdown: tuple[str, ...], description: str) -> MetricSpec:
    return MetricSpec(name, unit, breakdown, description)


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        _spec(EVENTS_ACCEPTED, MetricUnit.Count, ROUTE, "events stored (not replays)"),
        _spec(EVENTS_DUPLICATE, MetricUnit.Count, ROUTE, "replays of an idempotency key already stored"),
        _spec(EVENTS_REJECTED, MetricUnit.Count, ROUTE, "events refused (validation, conflicts)"),
        _spec(REQUESTS, MetricUnit.Count, (*ROUTE, OUTCOME), "HTTP requests answered, by outcome"),
        _spec(REQUEST_LATENCY, MetricUnit.Milliseconds, ROUTE, "time to answer an HTTP request"),
        _spec(EVENTS_ROLLED_UP, MetricUnit.Count, (), "events added to rollups by the aggregator"),
        _spec(AGGREGATION_LAG, MetricUnit.Milliseconds, (), "oldest message of an aggregator run: sent to done"),
        _spec(MESSAGES_DEAD_LETTERED, MetricUnit.Count, (), "messages the aggregator sent to the dead-letter queue"),
        _spec(ROLLUP_UNITS_POISONED, MetricUnit.Count, (), "rollup chunks DynamoDB refused for good"),
        _spec(ROLLUPS_REPAIRED, MetricUnit.Count, (), "rollups reconciliation found drifted and repaired"),
        _spec(BATCHES_SWEPT, MetricUnit.Count, (), "pending batches the sweeper sent again"),
        _spec(RECONCILE_ITEMS_PLANNED, MetricUnit.Count, (), "reconciliation work items the planner sent"),
    )
}

# What the current invocation's metrics are broken down by (set by the HTTP edge for a route).
_route: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("metering_route", default=None)
# (metric, dimension values) -> values; written as one document per dimension values at the end of an invocation.
_pending: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)


def dialect_label(dialect: object) -> str:
    """A dialect's dimension value: its `metric_name`, else its module's name (`native` for the core API)."""
    name = getattr(dialect, "metric_name", None)
    if isinstance(name, str):
        return name
    module = type(dialect).__module__.rsplit(".", 1)[-1]
    return "native" if module == "http" else module


def bind_route(endpoint: str, dialect: object) -> None:
    """Break this invocation's metrics down by route: `endpoint` is `METHOD /route/{template}`, never a raw path."""
    _route.set({ENDPOINT: endpoint, DIALECT: dialect_label(dialect)})


def _record(name: str, value: float, extra: dict[str, str] | None = None) -> None:
    spec = METRICS[name]
    dims: dict[str, str] = {}
    if spec.breakdown:
        found = {**(_route.get() or {}), **(extra or {})}
        if all(found.get(d) for d in spec.breakdown):  # outside a route: the `service` set alone
            dims = {d: found[d] for d in spec.breakdown}
    with _metrics_lock:
        _pending[(name, tuple(dims.items()))].append(float(value))


def count(name: str, value: int) -> None:
    """Add to a count metric of this invocation (nothing for zero)."""
    if value:
        _record(name, value)


def count_outcomes(statuses: list[str]) -> None:
    """Count ingestion outcomes: accepted, duplicate, and rejected (refusals and conflicts)."""
    count(EVENTS_ACCEPTED, statuses.count("accepted"))
    count(EVENTS_DUPLICATE, statuses.count("duplicate"))
    count(EVENTS_REJECTED, statuses.count("rejected") + statuses.count("conflict"))


def outcome_of(status: int) -> str:
    """A request's outcome dimension from its HTTP status."""
    if status >= 500:
        return SERVER_ERROR
    if status == 429:
        return RATE_LIMITED
    return CLIENT_ERROR if status >= 400 else SUCCESS


def record_request(status: int, seconds: float) -> None:
    """Count one answered HTTP request by outcome, and its latency, under the bound route (else `unmatched`)."""
    route = {ENDPOINT: UNMATCHED, DIALECT: "native", **(_route.get() or {})}
    _record(REQUESTS, 1, {**route, OUTCOME: outcome_of(status)})
    _record(REQUEST_LATENCY, round(seconds * 1000, 1), route)


def _aggregation_lag_ms(event: Any) -> float | None:
    """How long ago the oldest message of an SQS event was sent (None for other events)."""
    if not isinstance(event, SQSEvent):
        return None
    sent = [int(record.to_dict().get("attributes", {}).get("SentTimestamp", 0) or 0) for record in event]
    sent = [s for s in sent if s > 0]
    return max(0.0, time.time() * 1000 - min(sent)) if sent else None


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


def _documents(pending: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]) -> list[dict[str, Any]]:
    """One embedded-metric document per (breakdown, dimension values); counts summed, other values listed."""
    groups: dict[tuple[tuple[str, str], ...], dict[str, list[float]]] = defaultdict(dict)
    for (name, dims), values in pending.items():
        groups[dims][name] = values  # the same dimension names: the same breakdown
    documents: list[dict[str, Any]] = []
    for dims, named in groups.items():
        emf = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
        for name, values in named.items():
            unit = METRICS[name].unit
            for value in [sum(values)] if unit == MetricUnit.Count else values[:100]:
                emf.add_metric(name=name, unit=unit, value=value)
        if dims:
            emf.add_dimensions(service=SERVICE, **dict(dims))
        documents.append(dict(emf.serialize_metric_set()))
    return documents


def flush() -> None:
    """Write this invocation's metrics as embedded-metric lines, one per dimension values (none when empty)."""
    with _metrics_lock:
        if not _pending:
            return
        pending = dict(_pending)
        _pending.clear()
    text = "".join(json.dumps(document, separators=(",", ":")) + "\n" for document in _documents(pending))
    handler = logger.registered_handler  # its lock also guards every log line written to stdout
    handler.acquire()
    try:
        sys.stdout.write(text)  # one write: text and newline together, where print() makes two
        sys.stdout.flush()
    finally:
        handler.release()


def observe(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Chalice middleware for every event type: bind this invocation's id to the logs, flush metrics after."""
    outer = dict(logger.thread_safe_get_current_keys())  # empty unless one handler runs inside another
    outer_route = _route.get()
    logger.thread_safe_clear_keys()  # a reused thread (a poller, a pool) starts clean
    logger.thread_safe_append_keys(**_ids_of(event))
    _route.set(None)
    try:
        response = get_response(event)
        lag = _aggregation_lag_ms(event)
        if lag is not None:
            _record(AGGREGATION_LAG, lag)
        return response
    finally:
        logger.thread_safe_clear_keys()
        _route.set(outer_route)
        if outer:
            logger.thread_safe_append_keys(**outer)
        flush()
