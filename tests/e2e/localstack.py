"""Start the real local stack (`make run`'s process) on a free port for end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chalicelib import jsonutil
from tests.conftest import FULL_KEY

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_stack(*extra: str) -> Iterator[str]:
    """`python -m chalicelib.local.stack --port 0` as a subprocess; yields its base URL, stops it with Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chalicelib.local.stack", "--port", "0", *extra],
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
    if base_url is None:
        proc.kill()
        raise AssertionError("the local stack did not start:\n" + "".join(lines))
    # Keep reading its log, or a full pipe would block the server.
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        yield base_url
    finally:
        proc.send_signal(2)  # Ctrl-C
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(timeout=10)
        output = "".join(lines)
        assert proc.returncode == 0, output[-5000:]
        assert "stopped" in output


def request(
    url: str, key: str | None = FULL_KEY, data: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One HTTP call to a running stack; its status and JSON answer, numbers exact."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key:
        all_headers["Authorization"] = f"Bearer {key}"
    payload = jsonutil.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=payload, headers=all_headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, jsonutil.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, jsonutil.loads(err.read() or b"null")
