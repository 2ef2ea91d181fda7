"""Structured logs carry the request id; metrics come out in CloudWatch embedded metric format."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from app import app
from chalicelib import observability
from chalicelib.domain.usage import UsageDraft
from chalicelib.local.runtime import make_context, scheduled_event
from chalicelib.local.stack import LocalStack
from chalicelib.services.ingest import ingest
from tests.conftest import FULL_KEY, auth
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


# -- under concurrency, on the local stack -----------------------------------------------------------


def send(base: str, method: str, path: str, body: Any = None, key: str = FULL_KEY) -> tuple[int, str, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}{path}", data=data, method=method, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers["X-Request-Id"], path
    except urllib.error.HTTPError as err:
        return err.code, err.headers["X-Request-Id"], path


def test_under_concurrency_every_line_is_one_json_object_with_its_own_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads hammer the local stack while its pollers and scheduler run the event handlers.

    Every line written is exactly one JSON object; every request's line carries that request's id
    (the one in X-Request-Id); lines of the aggregator, sweeper and reconciler carry their own
    invocation's id and no API request's id.
    """
    out = io.StringIO()  # what the process writes to stdout: log lines and metric documents alike
    monkeypatch.setattr(sys, "stdout", out)
    handler = observability.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(out)
    stack = LocalStack(port=0, schedule_every=0.5, say=lambda _: None)
    stack.start()
    try:
        base = stack.base_url

        def worker(n: int) -> list[tuple[int, str, str]]:
            seen = []
            for i in range(12):
                event = {
                    "service_line_id": "LIN-26-091100",
                    "meter": "agent.runs",
                    "quantity": i,
                    "idempotency_key": f"obs-{n}-{i}",
                }
                seen.append(send(base, "POST", "/v1/metering/events", event))
                seen.append(send(base, "GET", "/v1/usage?limit=2"))
                seen.append(send(base, "GET", "/v1/plans/nope"))
                seen.append(send(base, "GET", "/v1/nope"))
                seen.append(send(base, "GET", "/v1/meters", key="mk_wrong"))
            return seen

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = [a for batch in pool.map(worker, range(8)) for a in batch]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and '"job":"sweep"' not in out.getvalue().replace(" ", ""):
            time.sleep(0.2)
    finally:
        stack.stop()
        handler.setStream(previous)
    assert {status for status, _, _ in answers} == {201, 200, 404, 401}
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # "Extra data" if a line held two objects
        assert isinstance(record, dict), line
        records.append(record)
    ids = {request_id for _, request_id, _ in answers}
    assert len(ids) == len(answers)  # one id per request
    logs = [r for r in records if "_aws" not in r]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in logs:
        if "request_id" in record:
            assert "function_request_id" not in record, record
            by_id.setdefault(record["request_id"], []).append(record)
    assert set(by_id) == ids  # every request logged, under its own id, and no line under an unknown id
    for status, request_id, path in answers:
        (logged,) = [r for r in by_id[request_id] if r["message"] == "request"]
        assert logged["status"] == status and path.split("?")[0].startswith(logged["route"].split("{")[0].rstrip("/"))
    jobs = [r for r in logs if r.get("job") in ("aggregate", "sweep", "reconcile")]
    assert {r["job"] for r in jobs} >= {"aggregate", "sweep"}
    for record in jobs:
        assert "request_id" not in record and record["function_request_id"] not in ids, record
    assert sum(r.get("events_applied", 0) for r in jobs) == 8 * 12  # the aggregator's lines are all there
