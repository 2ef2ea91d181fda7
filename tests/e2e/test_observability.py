"""Structured logs carry the request id; metrics come out in CloudWatch embedded metric format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from app import app
from chalicelib import observability
from chalicelib.domain.usage import UsageDraft
from chalicelib.local.runtime import make_context, scheduled_event
from chalicelib.services.ingest import ingest
from tests.conftest import auth
from tests.e2e.flows import FailingQueue, drain


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the service's JSON logger writes, captured with its own formatter."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(observability.logger.registered_formatter)
    service_logger = logging.getLogger(observability.SERVICE)
    service_logger.addHandler(handler)
    yield buffer
    service_logger.removeHandler(handler)


def emf_documents(text: str) -> list[dict[str, Any]]:
    documents = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            documents.append(json.loads(line))
    return documents


def metric_values(documents: list[dict[str, Any]], name: str) -> float:
    total = 0.0
    for doc in documents:
        names = [m["Name"] for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]]
        if name in names:
            value = doc[name]
            total += sum(value) if isinstance(value, list) else value
    return total


def test_every_request_logs_one_json_line_with_its_request_id(client: Any, log_lines: io.StringIO) -> None:
    body = json.dumps({"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": 2})
    response = client.http.post("/v1/metering/events", headers=auth(), body=body)
    request_id = response.headers["X-Request-Id"]
    records = [json.loads(line) for line in log_lines.getvalue().splitlines() if line.strip()]
    mine = [r for r in records if r.get("request_id") == request_id]
    assert [r["message"] for r in mine] == ["request"]
    assert mine[0]["status"] == 201 and mine[0]["route"] == "/v1/metering/events"
    assert mine[0]["organization_id"] == "ORG-26-090500" and mine[0]["service"] == "usage-metering"
    error = client.http.get("/v1/plans/nope", headers=auth())
    assert json.loads(error.body)["error"]["request_id"] == error.headers["X-Request-Id"]


def test_ingestion_outcomes_are_counted_in_embedded_metric_format(
    client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    event = {"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": 1, "idempotency_key": "m-1"}
    batch = {"events": [event, {**event, "idempotency_key": "m-2"}, {**event, "meter": "agent.runs"}]}
    client.http.post("/v1/metering/events/batch", headers=auth(), body=json.dumps(batch))
    client.http.post("/v1/metering/events", headers=auth(), body=json.dumps(event))
    documents = emf_documents(capsys.readouterr().out)
    assert documents, "no embedded-metric documents were written"
    assert documents[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "UsageMetering"
    assert metric_values(documents, "EventsAccepted") == 2
    assert metric_values(documents, "EventsRejected") == 1
    assert metric_values(documents, "EventsDuplicate") == 1


def test_pipeline_jobs_count_rolled_up_and_swept(container: Any, capsys: pytest.CaptureFixture[str]) -> None:
    now = container.clock()
    draft = UsageDraft("LIN-26-084729", "talent.hours", 3, now.date(), None, "api", {}, None)  # type: ignore[arg-type]
    ingest([draft, draft], "ORG-26-090500", container.catalog, container.events, FailingQueue(), now)
    container.clock = lambda: now + timedelta(minutes=10)
    app.handler_map["sweep_pending"](scheduled_event("sweep", "us-east-1"), make_context("sweep"))
    drain(app, container, lambda on: None)
    documents = emf_documents(capsys.readouterr().out)
    assert metric_values(documents, "BatchesSwept") == 1
    assert metric_values(documents, "EventsRolledUp") == 2
