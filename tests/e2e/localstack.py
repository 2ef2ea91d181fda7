"""Start the real local stack (`make run`'s process) on a free port for end-to-end tests."""

from __future__ import annotations

import os
import signal
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
from chalicelib.storage.cached_catalog import DEFAULT_TTL_SECONDS
from tests.conftest import FULL_KEY

ROOT = Path(__file__).resolve().parents[2]
# Settings of `make run` a developer may have exported; a test states its own.
_STACK_ENV = (
    "LOCAL_DATA_DIR",
    "FRESH",
    "SNAPSHOT_SECONDS",
    "DRAIN_SECONDS",
    "AWS_PORT",
    "PORT",
    "HOST",
    "DEMO_HISTORY_DAYS",
)
# For a stack whose tests revoke no key and pause no line: the catalog cache at its deployed TTL (with it
# off, every request reads its key and service lines from the emulated table).
DEPLOYED_CATALOG_CACHE = {"METERING_CATALOG_TTL_SECONDS": str(DEFAULT_TTL_SECONDS)}


def stack_env() -> dict[str, str]:
    """The test's environment without the stack settings a developer may have exported; the catalog
    cache off unless a test sets it, so a key revoked by a test is refused at once (the cache's TTL
    has its own tests)."""
    env = {k: v for k, v in os.environ.items() if k not in _STACK_ENV}
    env.setdefault("METERING_CATALOG_TTL_SECONDS", "0")
    return env


class StackProcess:
    """`python -m chalicelib.local.stack --port 0 ...` as a subprocess, its output kept.

    With `data_dir`, the tables are kept there across runs; without, in memory only. `env` adds to
    (or overrides) the environment of `stack_env()`.
    """

    def __init__(self, *extra: str, data_dir: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.args = ["--port", "0", *(["--data-dir", str(data_dir)] if data_dir else []), *extra]
        self.extra_env = env or {}
        self.base_url = ""
        self.aws_url = ""
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _invocation(self) -> dict[str, Any]:
        """The stack's command, directory and environment (read now, as the process starts)."""
        return {
            "args": [sys.executable, "-m", "chalicelib.local.stack", *self.args],
            "cwd": ROOT,
            "env": {**stack_env(), **self.extra_env},
        }

    def start(self, timeout: float = 120) -> StackProcess:
        """Start it and wait for "ready"; AssertionError with its output if it does not get there."""
        self.proc = subprocess.Popen(
            **self._invocation(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.startswith("usage-metering local stack: "):
                self.base_url = line.split(": ", 1)[1].strip()
            if line.strip().startswith("aws endpoint: "):
                self.aws_url = line.split()[2]
            if line.strip().startswith("ready"):
                break
        if not self.base_url or not self.lines[-1].startswith("ready"):
            self.kill()
            raise AssertionError("the local stack did not start:\n" + self.output)
        # Keep reading its log, or a full pipe would block the server.
        stdout = self.proc.stdout
        self._reader = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
        self._reader.start()
        return self

    def run_until_exit(self, timeout: float = 120) -> int:
        """Start it and wait for it to exit by itself (a stack that refuses to start); its exit code."""
        done = subprocess.run(
            **self._invocation(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.lines = [done.stdout, done.stderr]
        return done.returncode

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90) -> str:
        """Send `sig` (Ctrl-C by default), wait for a clean exit; the whole output."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if self._reader is not None:
            self._reader.join(timeout=10)
        assert self.proc.returncode == 0, self.output[-5000:]
        assert "stopped" in self.output, self.output[-5000:]
        return self.output

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, as a crash or `kill -9`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextmanager
def running_stack(*extra: str, data_dir: Path | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """A stack subprocess; yields its base URL, stops it with Ctrl-C (and checks it stopped cleanly)."""
    with running_stack_process(*extra, data_dir=data_dir, env=env) as stack:
        yield stack.base_url


@contextmanager
def running_stack_process(
    *extra: str, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[StackProcess]:
    """A stack subprocess; yields it, stops it with Ctrl-C unless the test already stopped or killed it."""
    stack = StackProcess(*extra, data_dir=data_dir, env=env).start()
    try:
        yield stack
    except BaseException:
        stack.kill()
        raise
    if stack.running:
        stack.stop()


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
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, jsonutil.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, jsonutil.loads(err.read() or b"null")
