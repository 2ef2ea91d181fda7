"""The real local stack (`make run`'s process) on a free port, over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FULL_KEY

ROOT = Path(__file__).resolve().parents[2]


def request(url: str, key: str | None = FULL_KEY, data: Any = None, headers: dict[str, str] | None = None) -> Any:
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key:
        all_headers["Authorization"] = f"Bearer {key}"
    payload = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=payload, headers=all_headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@pytest.fixture(scope="module")
def stack() -> Iterator[str]:
    """`python -m chalicelib.local.stack --port 0` as a subprocess; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chalicelib.local.stack", "--port", "0", "--schedule-every", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    base_url = None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("usage-metering local stack: "):
            base_url = line.split(": ", 1)[1].strip()
        if line.strip().startswith("ready"):
            break
    assert base_url, "".join(lines)
    try:
        yield base_url
    finally:
        proc.send_signal(2)  # Ctrl-C
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, output
        assert "stopped" in output


def test_stack_serves_meters_and_plans_to_a_demo_key(stack: str) -> None:
    status, body = request(f"{stack}/v1/meters")
    assert status == 200 and len(body["data"]) == 9
    status, body = request(f"{stack}/v1/plans")
    assert status == 200 and len(body["data"]) == 8


def test_stack_refuses_a_bad_key(stack: str) -> None:
    status, body = request(f"{stack}/v1/meters", key="mk_wrong")
    assert status == 401 and body["error"]["code"] == "unauthorized"
