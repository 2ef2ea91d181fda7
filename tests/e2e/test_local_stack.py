"""The real local stack (`make run`'s process) on a free port, over HTTP.

Its HTTP server, its AWS endpoint for AWS tools (and the project's own CLI), its data
kept across restarts (a `kill -9`, a Ctrl-C, SIGTERM) and its shutdown under load.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode, urlsplit

import boto3
import pytest

from chalicelib import catalog as catalog_data
from chalicelib import jsonutil
from chalicelib.local import persistence
from tests.conftest import FULL_KEY, OTHER_ORG_KEY
from tests.e2e.localstack import ROOT, StackProcess, request, running_stack_process

# The platform's active meters: what GET /v1/meters lists.
ACTIVE_METERS = sum(1 for m in catalog_data.read("meters") if m["status"] == "ACTIVE")

ORG = "ORG-26-090500"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
LINE_METERS = {TALENT: ["talent.hours", "talent.days"], AGENT: ["agent.runs", "agent.tokens", "agent.run_seconds"]}
WHOLE_METERS = {"agent.runs"}  # refused with a fraction


def quantity(whole: int, meter: str) -> Decimal:
    """An exact decimal quantity, whole for meters that count whole things."""
    return Decimal(whole) if meter in WHOLE_METERS else Decimal(whole) + Decimal("0.125")


REQUEST_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    """One stack for the serving tests, its schedules at their deployed periods (none of these tests needs
    them; at a 1 s period the reconciler's work items outgrow the period and keep the stack busy)."""
    with running_stack_process("--request-timeout", str(REQUEST_TIMEOUT_S)) as process:
        yield process


# -- serving -----------------------------------------------------------------------------------------


def test_stack_serves_meters_and_plans_to_a_demo_key(stack: StackProcess) -> None:
    status, body = request(f"{stack.base_url}/v1/meters")
    assert status == 200 and len(body["data"]) == ACTIVE_METERS
    status, body = request(f"{stack.base_url}/v1/plans")
    assert status == 200 and len(body["data"]) == 8


def test_stack_refuses_a_bad_key(stack: StackProcess) -> None:
    status, body = request(f"{stack.base_url}/v1/meters", key="mk_wrong")
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_concurrent_requests_are_each_answered_with_their_own_event(stack: StackProcess) -> None:
    """The local server is threaded: every request must see its own body (a per-thread current_request)."""

    def post(worker: int) -> list[tuple[str, Any, Any]]:
        seen = []
        for i in range(30):
            quantity = worker * 1000 + i
            key = f"concurrency-{worker}-{i}"
            event = {"service_line_id": AGENT, "meter": "agent.runs", "quantity": quantity, "idempotency_key": key}
            status, body = request(f"{stack.base_url}/v1/metering/events", data=event)
            assert status == 201, body
            seen.append((key, quantity, body["data"]["quantity"]))
        return seen

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [row for rows in pool.map(post, range(8)) for row in rows]
    mismatched = [(key, sent, got) for key, sent, got in results if sent != got]
    assert mismatched == []
    assert len(results) == 240


# -- the HTTP server on raw sockets ---------------------------------------------------------------------


def connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def read_response(reader: Any) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from a socket's file: status, headers (lower-case names), body."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def test_an_unknown_method_with_a_body_leaves_the_connection_usable(stack: StackProcess) -> None:
    """The 405 answer drops the request's body: the next request on the keep-alive connection is read whole."""
    body = b"GET /v1/plans HTTP/1.1\r\nHost: x\r\n\r\n"  # what a server that leaves the body unread would answer
    with connect(stack.base_url) as sock, sock.makefile("rb") as reader:
        sock.sendall(
            b"TRACE /v1/meters HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            + f"GET /v1/meters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FULL_KEY}\r\n\r\n".encode()
        )
        status, _, answer = read_response(reader)
        assert status == 405 and json.loads(answer)["error"]["code"] == "method_not_allowed"
        status, _, answer = read_response(reader)
        assert status == 200 and len(json.loads(answer)["data"]) == ACTIVE_METERS


def test_a_body_shorter_than_its_content_length_does_not_hold_the_connection_forever(stack: StackProcess) -> None:
    with connect(stack.base_url) as sock:
        sock.sendall(
            b"POST /v1/metering/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {FULL_KEY}\r\nContent-Length: 5000\r\n\r\n".encode()
            + b'{"service_line_id": '
        )
        started = time.monotonic()
        sock.settimeout(REQUEST_TIMEOUT_S * 5)
        assert sock.recv(1024) == b""  # the server gave up on the request and closed the connection
        assert time.monotonic() - started < REQUEST_TIMEOUT_S * 5
    assert request(f"{stack.base_url}/v1/meters")[0] == 200


def test_a_burst_of_connections_is_accepted_at_once_and_answered(stack: StackProcess) -> None:
    """100 clients connecting at the same moment all get through the listen backlog.

    With Python's default backlog of 5, the kernel drops the connections that do not fit:
    they are retried after a SYN retransmission (1 s, then 3 s...) or reset, depending on
    the system. Every connection here must be established before a retransmission could
    have happened, then be answered.
    """
    parts = urlsplit(stack.base_url)
    selector = selectors.DefaultSelector()
    sockets = []
    try:
        for _ in range(100):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((parts.hostname, parts.port))
            sockets.append(sock)
            selector.register(sock, selectors.EVENT_WRITE)
        pending = set(sockets)
        deadline = time.monotonic() + 0.9  # below the first SYN retransmission (1 s)
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                pending.discard(key.fileobj)  # type: ignore[arg-type]
                selector.unregister(key.fileobj)
        assert not pending, f"{len(pending)} of 100 connections were not accepted at once"
        answers = []
        for sock in sockets:
            sock.setblocking(True)
            sock.settimeout(30)
            sock.sendall(b"GET /v1/meters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer mk_wrong\r\n\r\n")
        for sock in sockets:
            with sock.makefile("rb") as reader:
                answers.append(read_response(reader)[0])
        assert answers == [401] * 100
    finally:
        selector.close()
        for sock in sockets:
            sock.close()


# -- AWS tools and the CLI against the running stack ------------------------------------------------------


def cli(*args: str, aws_url: str) -> subprocess.CompletedProcess[str]:
    """The operator command pointed at the stack's AWS endpoint, with no AWS credentials at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(METERING_AWS_ENDPOINT=aws_url, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    return subprocess.run(
        [sys.executable, "-m", "chalicelib.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_aws_tools_list_the_stage_tables_on_the_printed_endpoint(stack: StackProcess) -> None:
    assert stack.aws_url, stack.output
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=stack.aws_url,
        region_name="us-east-1",
        aws_access_key_id="any",
        aws_secret_access_key="any",
    )
    tables = dynamodb.list_tables()["TableNames"]
    assert {"metering-events-dev", "metering-rollups-dev", "metering-catalog-dev"} <= set(tables)
    sqs = boto3.client(
        "sqs", endpoint_url=stack.aws_url, region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="a"
    )
    assert any(url.endswith("/metering-usage-dev") for url in sqs.list_queues()["QueueUrls"])


def test_a_key_created_with_the_cli_authenticates_requests_to_the_stack(stack: StackProcess) -> None:
    created = cli("keys", "create", "--org", ORG, "--scopes", "read", "--name", "e2e-cli", aws_url=stack.aws_url)
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)
    secret, key_id = fields["secret"].split()[0], fields["key id"].strip()
    status, body = request(f"{stack.base_url}/v1/meters", key=secret)
    assert status == 200 and len(body["data"]) == ACTIVE_METERS
    status, body = request(f"{stack.base_url}/v1/metering/events", key=secret, data={"quantity": 1})
    assert status == 403 and body["error"]["code"] == "insufficient_scope"

    listed = cli("keys", "list", "--org", ORG, aws_url=stack.aws_url)
    assert listed.returncode == 0, listed.stderr
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert row[1:3] == [ORG, "active"] and secret not in listed.stdout

    revoked = cli("keys", "revoke", key_id, aws_url=stack.aws_url)
    assert revoked.returncode == 0, revoked.stderr
    assert request(f"{stack.base_url}/v1/meters", key=secret)[0] == 401
    listed = cli("keys", "list", "--org", ORG, aws_url=stack.aws_url)
    assert next(line.split() for line in listed.stdout.splitlines() if line.startswith(key_id))[2] == "revoked"


def test_organizations_and_workspaces_created_with_the_cli_are_served(stack: StackProcess) -> None:
    org, ws = "ORG-26-000901", "WS-26-000901"
    steps = [
        ("orgs", "create", "--id", org, "--name", "CLI Org", "--plan", "plan_growth_annual"),
        ("workspaces", "create", "--org", org, "--id", ws, "--name", "Platform"),
        ("keys", "create", "--org", org, "--scopes", "all", "--name", "first"),
    ]
    outputs = []
    for step in steps:
        done = cli(*step, aws_url=stack.aws_url)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    secret = next(line.split()[1] for line in outputs[-1].splitlines() if line.startswith("secret:"))
    line = {"workspace_id": ws, "name": "Agents", "product_line": "agent_gateway", "rates": {"agent.runs": 1}}
    status, body = request(f"{stack.base_url}/v1/service-lines", key=secret, data=line)
    assert status == 201, body


# -- data kept across restarts ---------------------------------------------------------------------------


def today() -> datetime:
    return datetime.now(UTC)


def spread_events(prefix: str, count: int) -> list[dict[str, Any]]:
    """Events over both demo lines, all their meters and the last six days, with exact decimal quantities."""
    events = []
    day0 = today().date()
    for i in range(count):
        line = (TALENT, AGENT)[i % 2]
        meter = LINE_METERS[line][(i // 2) % len(LINE_METERS[line])]
        events.append(
            {
                "service_line_id": line,
                "meter": meter,
                "quantity": quantity(i % 17, meter),
                "period_date": (day0 - timedelta(days=i % 6)).isoformat(),
                "idempotency_key": f"{prefix}-{i}",
                "metadata": {"n": i},
            }
        )
    return events


def ingest(base_url: str, events: list[dict[str, Any]]) -> list[str]:
    """Through the batch API, 100 at a time; the accepted events' ids."""
    ids = []
    for start in range(0, len(events), 100):
        status, body = request(f"{base_url}/v1/metering/events/batch", data={"events": events[start : start + 100]})
        assert status == 200, body
        assert all(r["status"] == "accepted" for r in body["data"]), body
        ids += [r["data"]["id"] for r in body["data"]]
    return ids


def window() -> dict[str, str]:
    day0 = today().date()
    return {"from": (day0 - timedelta(days=7)).isoformat(), "to": day0.isoformat()}


def listing(base_url: str) -> list[dict[str, Any]]:
    """Every event of the demo organization in the window (all pages)."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**window(), "limit": "100", **({"cursor": cursor} if cursor else {})}
        status, page = request(f"{base_url}/v1/usage?{urlencode(query)}")
        assert status == 200, page
        found += page["data"]
        cursor = page["meta"]["cursor"]
        if not page["meta"]["has_more"]:
            return found


def summary(base_url: str) -> dict[str, Any]:
    status, body = request(f"{base_url}/v1/usage/summary?{urlencode({'organization_id': ORG, **window()})}")
    assert status == 200, body
    data: dict[str, Any] = body["data"]
    return data


def summed(events: list[dict[str, Any]]) -> dict[tuple[str, str], Decimal]:
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for event in events:
        totals[(event["service_line_id"], event["meter"])] += Decimal(str(event["quantity"]))
    return dict(totals)


def rolled_up(data: dict[str, Any]) -> dict[tuple[str, str], Decimal]:
    return {
        (line["service_line_id"], m["meter"]): Decimal(str(m["quantity"]))
        for line in data["by_service_line"]
        for m in line["meters"]
        if Decimal(str(m["quantity"]))
    }


def wait_rolled_up(base_url: str, timeout: float = 120) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Wait until the summary (rollups) adds up to the listed events; both."""
    deadline = time.monotonic() + timeout
    while True:
        events, data = listing(base_url), summary(base_url)
        if rolled_up(data) == summed(events):
            return events, data
        assert time.monotonic() < deadline, f"not rolled up: {rolled_up(data)} != {summed(events)}"
        time.sleep(0.5)


def wait_for_snapshot_after(data_dir: Path, moment: datetime, timeout: float = 60) -> None:
    """Wait for a snapshot whose copy was taken after `moment`."""
    deadline = time.monotonic() + timeout
    path = persistence.snapshot_path(data_dir)
    while time.monotonic() < deadline:
        if path.exists() and datetime.fromisoformat(persistence.read_header(path)["taken_at"]) > moment:
            return
        time.sleep(0.2)
    raise AssertionError("no snapshot was written")


def test_kill_9_loses_nothing_saved_by_the_last_snapshot(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = StackProcess("--schedule-every", "1", "--snapshot-every", "1", data_dir=data_dir).start()
    try:
        assert f"data: {data_dir}" in first.output
        ids = ingest(first.base_url, spread_events("kill9", 240))
        report = {"value": 3, "customerId": ORG, "meterName": "agent.runs", "metadata": {"model": "large"}}
        status, _ = request(f"{first.base_url}/v1/meter-usage", data=report, headers={"Idempotency-Key": "kill9-002"})
        assert status == 202
        events, data = wait_rolled_up(first.base_url)
        assert set(ids) <= {e["id"] for e in events} and len(events) == len(ids) + 1
        wait_for_snapshot_after(data_dir, today())
    finally:
        first.kill()

    with running_stack_process("--schedule-every", "1", data_dir=data_dir) as second:
        assert "loaded" in second.output
        assert listing(second.base_url) == events
        assert summary(second.base_url) == data
        replay = spread_events("kill9", 1)[0]
        status, body = request(f"{second.base_url}/v1/metering/events", data=replay)
        assert status == 200 and body["data"]["id"] == ids[0]  # the idempotency record came back too
        status, body = request(f"{second.base_url}/v1/service-lines")
        assert status == 200 and {line["id"] for line in body["data"]} == {TALENT, AGENT}  # no duplicate demo data
        more = ingest(second.base_url, spread_events("after-restart", 20))
        events_after, _ = wait_rolled_up(second.base_url)
        assert len(events_after) == len(events) + len(more)
    # Ctrl-C wrote a last snapshot: a third start has the events ingested after the restart as well.
    with running_stack_process(data_dir=data_dir) as third:
        assert listing(third.base_url) == events_after
    with running_stack_process("--fresh", data_dir=data_dir) as fresh:
        assert listing(fresh.base_url) == []
        assert "previous snapshot is kept" in fresh.output
    assert (data_dir / persistence.PREVIOUS_FILE).exists()


def ingest_until_stopped(base_url: str, worker: int, stop_after: threading.Event) -> list[tuple[str, int, Any]]:
    """POST single events on one keep-alive connection until the stack stops answering.

    Returns (idempotency key, status, body) per request; status 0 when no answer came.
    """
    parts = urlsplit(base_url)
    outcomes: list[tuple[str, int, Any]] = []
    conn: http.client.HTTPConnection | None = None
    day0 = today().date()
    for i in range(100_000):
        key = f"stop-{worker}-{i}"
        line = (TALENT, AGENT)[i % 2]
        meter = LINE_METERS[line][i % len(LINE_METERS[line])]
        event = {
            "service_line_id": line,
            "meter": meter,
            "quantity": quantity(worker + 1, meter),
            "period_date": (day0 - timedelta(days=i % 4)).isoformat(),
            "idempotency_key": key,
        }
        try:
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
            conn.request(
                "POST",
                "/v1/metering/events",
                body=jsonutil.dumps(event),
                headers={"Authorization": f"Bearer {FULL_KEY}", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            outcomes.append((key, response.status, jsonutil.loads(response.read() or b"null")))
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except ConnectionRefusedError:
            break  # the listener is closed: the stack is stopping or stopped
        except (OSError, http.client.HTTPException):
            outcomes.append((key, 0, None))  # no answer: the request may or may not have been handled
            if conn is not None:
                conn.close()
            conn = None
            if stop_after.is_set():
                break
    if conn is not None:
        conn.close()
    return outcomes


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_stopping_while_ingesting_loses_no_accepted_event(tmp_path: Path, sig: int) -> None:
    """8 clients ingest while the stack is stopped: every 201 is stored and rolled up by the next start,
    and the only other answer is an explicit 503."""
    data_dir = tmp_path / "data"
    first = StackProcess("--schedule-every", "1", data_dir=data_dir).start()
    signalled = threading.Event()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            runs = [pool.submit(ingest_until_stopped, first.base_url, w, signalled) for w in range(8)]
            time.sleep(3)
            signalled.set()
            output = first.stop(sig)
            outcomes = [o for run in runs for o in run.result()]
    finally:
        first.kill()
    assert "stopping" in output
    statuses = {status for _, status, _ in outcomes}
    assert statuses <= {201, 503, 0}, statuses
    refused = [body for _, status, body in outcomes if status == 503]
    assert all(body["error"]["code"] == "service_unavailable" for body in refused)
    accepted = {body["data"]["id"]: key for key, status, body in outcomes if status == 201}
    unanswered = sum(1 for _, status, _ in outcomes if status == 0)
    assert len(accepted) > 50

    with running_stack_process(data_dir=data_dir) as second:
        events, _ = wait_rolled_up(second.base_url)
        stored = {e["id"] for e in events}
        assert set(accepted) <= stored
        assert len(stored) <= len(accepted) + unanswered


def test_a_snapshot_of_another_version_is_refused_and_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = persistence.snapshot_path(data_dir)
    header = {"format": persistence.FORMAT, "version": persistence.VERSION + 98, "tables": [], "items": []}
    path.write_bytes(gzip.compress(json.dumps(header).encode() + b"\n"))
    before = path.read_bytes()
    stack = StackProcess(data_dir=data_dir)
    assert stack.run_until_exit() == 1
    assert f"version {persistence.VERSION + 98} snapshot" in stack.output
    assert "Traceback" not in stack.output
    assert path.read_bytes() == before


def test_a_failed_write_leaves_the_previous_snapshot_whole(tmp_path: Path) -> None:
    """A crash while writing (here: a value that cannot be encoded, half way) never damages the last snapshot."""
    good = {"t": [{"pk": SimpleNamespace(type="S", value=f"item-{i}")} for i in range(10)]}
    path, _ = persistence.write_snapshot(tmp_path, good)
    before = path.read_bytes()
    bad = {"t": [*good["t"] * 1000, {"pk": SimpleNamespace(type="S", value=object())}]}
    with pytest.raises(TypeError):
        persistence.write_snapshot(tmp_path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [persistence.SNAPSHOT_FILE]


def every_event(base_url: str, key: str, days: int) -> list[dict[str, Any]]:
    """Every event an organization has over the last `days` days (all pages)."""
    found: list[dict[str, Any]] = []
    cursor = None
    first = (today().date() - timedelta(days=days + 1)).isoformat()
    while True:
        query = {
            "from": first,
            "to": today().date().isoformat(),
            "limit": "100",
            **({"cursor": cursor} if cursor else {}),
        }
        status, page = request(f"{base_url}/v1/usage?{urlencode(query)}", key=key)
        assert status == 200, page
        found += page["data"]
        cursor = page["meta"]["cursor"]
        if not page["meta"]["has_more"]:
            return found


def test_a_first_start_loads_demo_history_and_a_restart_does_not_load_it_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_stack_process("--history-days", "3", data_dir=data_dir) as first:
        note = next(line for line in first.lines if "demo history: " in line)
        accepted = int(note.split("demo history: ")[1].split(" events")[0].replace(",", ""))
        own = every_event(first.base_url, FULL_KEY, 3)
        theirs = every_event(first.base_url, OTHER_ORG_KEY, 3)
        assert accepted > 100 and len(own) + len(theirs) == accepted
        assert len({e["service_line_id"] for e in own}) >= 3 and len({e["meter"] for e in own}) >= 4
        assert len({e["period_date"] for e in own}) >= 3
    with running_stack_process("--history-days", "3", data_dir=data_dir) as second:
        assert "demo history" not in second.output and "loaded" in second.output
        assert len(every_event(second.base_url, FULL_KEY, 3)) == len(own)
