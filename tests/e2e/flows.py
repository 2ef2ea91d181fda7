"""A full pass over every handler and route, shared by tests that observe what the code does."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.container import Container, set_container
from chalicelib.local.emulator import Emulator
from chalicelib.local.runtime import make_context, scheduled_event, sqs_event
from chalicelib.services import catalog_admin
from chalicelib.storage import clients


class FailingQueue:
    def send(self, body: str, attributes: dict[str, str] | None = None) -> None:
        raise ConnectionError("queue unavailable")


def drain(app: Any, container: Container, recording: Callable[[bool], None]) -> int:
    """Deliver every queued message to the real aggregator, as Lambda's event source would."""
    sqs = clients.sqs()
    url = container.queue.url
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    delivered = 0
    while True:
        recording(False)
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]).get("Messages", [])
        recording(True)
        if not messages:
            return delivered
        result = app.handler_map["aggregate_usage"](sqs_event(messages, arn, "us-east-1"), make_context("agg"))
        failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
        recording(False)
        for m in messages:
            if m["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        recording(True)
        delivered += len(messages)


def run_full_flow(recording: Callable[[bool], None] = lambda on: None) -> dict[str, Any]:
    """Start an emulator, load the catalog, then exercise every route and handler once."""
    from chalice.test import Client

    from app import app

    emulator = Emulator()
    settings = emulator.start()
    try:
        container = Container.from_settings(settings)
        catalog_admin.load_platform_catalog(container.catalog)
        keys = {env: k.secret for env, k in catalog_admin.load_demo_data(container.catalog).items()}
        now = datetime.now(UTC).replace(microsecond=0)
        container.clock = lambda: now
        set_container(container)
        full = {"Authorization": f"Bearer {keys['DEMO_API_KEY']}", "Content-Type": "application/json"}
        starter = {"Authorization": f"Bearer {keys['DEMO_API_KEY_2']}", "Content-Type": "application/json"}
        seen: dict[str, Any] = {}
        with Client(app) as client:
            recording(True)
            http = client.http
            event = {
                "service_line_id": "LIN-26-084729",
                "meter": "talent.hours",
                "quantity": 8,
                "idempotency_key": "f1",
            }
            seen["single"] = http.post("/v1/metering/events", headers=full, body=json.dumps(event)).status_code
            http.post("/v1/metering/events", headers=full, body=json.dumps(event))
            batch = {"events": [{**event, "idempotency_key": f"f-{i}", "quantity": i} for i in range(5)]}
            seen["batch"] = http.post("/v1/metering/events/batch", headers=full, body=json.dumps(batch)).status_code
            # the whole batch again: every event a duplicate, its pending record dropped
            seen["batch_replay"] = http.post(
                "/v1/metering/events/batch", headers=full, body=json.dumps(batch)
            ).status_code
            listed = json.loads(http.get("/v1/usage?limit=1", headers=full).body)["data"][0]["id"]
            voided = http.post(f"/v1/metering/events/{listed}/void", headers=full, body=json.dumps({"reason": "flow"}))
            seen["void"] = voided.status_code
            report = {"value": 2, "customerId": "ORG-26-090500", "meterName": "agent.runs"}
            seen["report"] = http.post(
                "/v1/meter-usage", headers={**full, "Idempotency-Key": "r1"}, body=json.dumps(report)
            ).status_code
            real_queue = container.queue
            container.queue = FailingQueue()  # type: ignore[assignment]
            http.post("/v1/metering/events", headers=full, body=json.dumps({**event, "idempotency_key": "lost"}))
            container.queue = real_queue
            seen["drained"] = drain(app, container, recording)
            for path in (
                "/v1/meters",
                "/v1/plans",
                "/v1/plans/plan_scale_annual",
                "/v1/usage?limit=2",
                "/v1/usage/summary",
                "/v1/service-lines",
                "/v1/meter-subscriptions?meterName=agent.runs",
            ):
                http.get(path, headers=full)
            for _ in range(30):  # the starter plan counts API calls
                http.get("/v1/meters", headers=starter)
            line = {"workspace_id": "WS-26-000201", "name": "x", "product_line": "talent", "rates": {"talent.hours": 1}}
            created = http.post("/v1/service-lines", headers=starter, body=json.dumps(line))
            line_id = json.loads(created.body)["data"]["id"]
            http.post(f"/v1/service-lines/{line_id}/pause", headers=starter)
            http.post(f"/v1/service-lines/{line_id}/resume", headers=starter)
            later = now + timedelta(minutes=10)
            container.clock = lambda: later
            seen["sweep"] = app.handler_map["sweep_pending"](scheduled_event("sweep", "us-east-1"), make_context("s"))
            seen["drained_after_sweep"] = drain(app, container, recording)
            seen["reconcile"] = app.handler_map["reconcile_rollups"](
                scheduled_event("reconcile", "us-east-1"), make_context("r")
            )
            seen["drained_after_reconcile"] = drain(app, container, recording)
            recording(False)
        return seen
    finally:
        set_container(None)
        emulator.stop()
