"""The real local stack (`make run`'s process) on a free port, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.localstack import request, running_stack


@pytest.fixture(scope="module")
def stack() -> Iterator[str]:
    with running_stack("--schedule-every", "1") as base_url:
        yield base_url


def test_stack_serves_meters_and_plans_to_a_demo_key(stack: str) -> None:
    status, body = request(f"{stack}/v1/meters")
    assert status == 200 and len(body["data"]) == 9
    status, body = request(f"{stack}/v1/plans")
    assert status == 200 and len(body["data"]) == 8


def test_stack_refuses_a_bad_key(stack: str) -> None:
    status, body = request(f"{stack}/v1/meters", key="mk_wrong")
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_concurrent_requests_are_each_answered_with_their_own_event(stack: str) -> None:
    """The local server is threaded: every request must see its own body (a per-thread current_request)."""

    def post(worker: int) -> list[tuple[str, Any, Any]]:
        seen = []
        for i in range(30):
            quantity = worker * 1000 + i
            key = f"concurrency-{worker}-{i}"
            event = {
                "service_line_id": "LIN-26-091100",
                "meter": "agent.runs",
                "quantity": quantity,
                "idempotency_key": key,
            }
            status, body = request(f"{stack}/v1/metering/events", data=event)
            assert status == 201, body
            seen.append((key, quantity, body["data"]["quantity"]))
        return seen

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [row for rows in pool.map(post, range(8)) for row in rows]
    mismatched = [(key, sent, got) for key, sent, got in results if sent != got]
    assert mismatched == []
    assert len(results) == 240
