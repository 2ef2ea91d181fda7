"""`make run`: the whole local stack in one process.

The embedded AWS emulation, the tables and queues, the catalog and demo data,
the Chalice local HTTP server, an SQS poller for each `on_sqs_message` handler,
a scheduler for each `schedule` handler, the emulated AWS served to AWS tools on
a second port and, with a data directory, snapshots of the tables that the next
start loads. Ctrl-C or SIGTERM stops it: no new requests, in-flight ones finish,
the usage queue drains into the rollups, a last snapshot is written.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from chalice.app import Chalice, ScheduledEventConfig, SQSEventConfig
from chalice.config import Config
from chalice.local import ChaliceRequestHandler, LocalChalice, LocalDevServer, ThreadedHTTPServer

from chalicelib import catalog as catalog_data
from chalicelib.container import Container, set_container
from chalicelib.domain.auth import hash_key, parse_scopes
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.local import persistence, workload
from chalicelib.local.emulator import Emulator
from chalicelib.local.runtime import Scheduler, SqsPoller, schedule_seconds
from chalicelib.services import catalog_admin, sweep
from chalicelib.storage import bootstrap, clients

log = logging.getLogger("usage-metering.local")
PROJECT_DIR = Path(__file__).resolve().parents[2]

CONNECTION_TIMEOUT_S = 30.0  # a client that stops sending mid-request frees its thread after this
LISTEN_BACKLOG = 128
# How often the HTTP and AWS servers' loops look for a stop: a stop waits up to this long for each
# (socketserver's default of 0.5 s made every stop take a second); an idle check costs microseconds.
SERVE_POLL_S = 0.05
MAX_DISCARDED_BODY = 1_048_576  # larger bodies of refused requests are not read: the connection is closed
# DynamoDB operations that never change a table (anything else may, and marks the snapshot stale).
_READ_ONLY_PREFIXES = ("Get", "BatchGet", "Query", "Scan", "Describe", "List")


class StartupError(Exception):
    """The stack cannot start (its data cannot be loaded, a port is taken...)."""


def _error_body(code: ErrorCode, message: str) -> bytes:
    error = MeteringError(code, message).to_dict()
    error["request_id"] = str(uuid.uuid4())
    return json.dumps({"error": error}, separators=(",", ":")).encode()


class LocalHTTPServer(ThreadedHTTPServer):
    """Chalice's threaded server with what a long-running local server needs.

    - Nagle's algorithm off on accepted sockets: with it, every request after the
      first on a keep-alive connection waits ~40 ms for a delayed ACK.
    - A listen backlog of 128 (Python's default of 5 resets connections when a few
      dozen clients connect at once).
    - It counts requests in flight and tracks open connections, so a stop can refuse
      new requests, wait for those in flight, then close idle keep-alive connections.
    """

    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    request_timeout = CONNECTION_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._connections: set[socket.socket] = set()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._state:
            self._connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self._state:
            self._connections.discard(request)
        super().shutdown_request(request)

    def begin_request(self) -> bool:
        """Count a request in; False once the server is stopping (the request must be refused)."""
        with self._state:
            if self._stopping:
                return False
            self._in_flight += 1
            return True

    def end_request(self) -> None:
        with self._state:
            self._in_flight -= 1
            self._state.notify_all()

    def stop_accepting(self, serving: bool) -> None:
        """Refuse new requests and close the listening socket (new connections are refused).

        `serving`: whether a thread was started on serve_forever, which must then be ended first.
        """
        with self._state:
            self._stopping = True
        if serving:
            self.shutdown()  # waits for serve_forever to return, so never without one
        self.server_close()

    def wait_in_flight(self, timeout: float) -> int:
        """Wait until no request is in flight (at most `timeout` s); how many still are."""
        with self._state:
            self._state.wait_for(lambda: self._in_flight == 0, timeout)
            return self._in_flight

    @property
    def in_flight(self) -> int:
        with self._state:
            return self._in_flight

    def close_connections(self) -> None:
        """Close every open connection (idle keep-alive ones once nothing is in flight)."""
        with self._state:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class RequestHandler(ChaliceRequestHandler):
    """Chalice's handler for the local server.

    It answers a method it does not route (TRACE, QUERY...) with 405, as API Gateway
    does, where Python's base handler would answer 501, a server error a client cannot
    fix; answers 503 to requests that arrive while the stack stops; drops the body of
    a request it refuses, so the next request on a keep-alive connection is read from
    its start; and gives up on a connection idle or stalled for the server's `request_timeout`.
    """

    server: LocalHTTPServer

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # the socket timeout StreamRequestHandler sets
        super().setup()

    def _handle(self) -> None:
        if not self.server.begin_request():
            self._refuse(503, _error_body(ErrorCode.SERVICE_UNAVAILABLE, "The local stack is stopping."))
            return
        try:
            self._generic_handle()
        finally:
            self.server.end_request()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def _refuse(self, status: int, body: bytes) -> None:
        keep_alive = self._discard_body() and status != 503
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if not keep_alive:
            self.send_header("Connection", "close")  # also makes the base class close it after this answer
        self.end_headers()
        self.wfile.write(body)

    def _discard_body(self) -> bool:
        """Read and drop the request's body; False when it cannot be (the connection must then close)."""
        if self.headers.get("Transfer-Encoding"):
            return False
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            return False
        if not 0 <= length <= MAX_DISCARDED_BODY:
            return False
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                return False
            length -= len(chunk)
        return True

    def _method_not_allowed(self) -> None:
        self._refuse(405, _error_body(ErrorCode.METHOD_NOT_ALLOWED, f"{self.command} is not supported."))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)


def _started(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.ident is not None


def dynamodb_lock() -> AbstractContextManager[Any]:
    """The emulator's lock around every DynamoDB request: a snapshot copies the tables while holding it."""
    from chalicelib.local import emulator

    return emulator.dynamodb_lock()


class AwsEndpoint:
    """The emulated AWS (the same in-process state) served over HTTP to AWS tools: moto's server app.

    `on_write` is called after each DynamoDB request that may have changed a table.
    """

    def __init__(self, host: str, port: int, on_write: Callable[[], None]) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        moto_app = DomainDispatcherApplication(create_backend_app)

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            answer = moto_app(environ, start_response)
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            if target.startswith("DynamoDB_") and not target.partition(".")[2].startswith(_READ_ONLY_PREFIXES):
                on_write()
            return answer

        self._host = host
        listener = socket.create_server((host, port), backlog=LISTEN_BACKLOG)  # OSError here, not werkzeug's exit
        try:
            self._server = make_server(
                host, port, app, threaded=True, request_handler=MotoRequestHandler, fd=listener.fileno()
            )
        finally:
            listener.close()  # the server holds its own duplicate of the socket
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SERVE_POLL_S,), name="aws-endpoint", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if _started(self._thread):
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


class HeapKeeper(threading.Thread):
    """Keeps the garbage collector's work flat as the tables grow.

    The tables are millions of long-lived objects; a full collection walks them all (about a second at
    100,000 events), and the interpreter runs one whenever enough new objects survive. Every
    `every` seconds this collects what is new and freezes what survives, so later collections walk
    only what was made since.
    """

    def __init__(self, every: float = 30.0) -> None:
        super().__init__(name="heap-keeper", daemon=True)
        self.every = every
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            gc.collect()
            gc.freeze()

    def stop(self) -> None:
        self._stop_event.set()


class LocalStack:
    """The running local stack; also used by end-to-end tests.

    With `data_dir`, the tables are loaded from its snapshot at start (unless `fresh`),
    saved every `snapshot_every` seconds when something changed, and at stop.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        schedule_every: float | None = None,
        *,
        data_dir: Path | None = None,
        fresh: bool = False,
        snapshot_every: float = 10.0,
        aws_port: int | None = None,
        drain_seconds: float = 20.0,
        request_timeout: float = CONNECTION_TIMEOUT_S,
        history_days: int = 0,
        say: Callable[[str], None] = lambda text: print(text, flush=True),
    ) -> None:
        self.host = host
        self.history_days = history_days
        self.port = port
        self.schedule_every = schedule_every
        self.data_dir = data_dir.resolve() if data_dir else None
        self.fresh = fresh
        self.snapshot_every = snapshot_every
        self.aws_port = aws_port
        self.drain_seconds = drain_seconds
        self.request_timeout = request_timeout
        self.say = say
        self.emulator = Emulator()
        self.keys: dict[str, str] = {}
        self.notes: list[str] = []  # what start did with the data, for the banner
        self.server: LocalDevServer | None = None
        self.aws: AwsEndpoint | None = None
        self.pollers: list[SqsPoller] = []
        self.scheduler: Scheduler | None = None
        self.snapshotter: persistence.Snapshotter | None = None
        self.container: Container | None = None
        self.hurry = threading.Event()  # a second Ctrl-C: stop waiting for the queue to drain
        self._server_thread: threading.Thread | None = None
        self._heap_keeper: HeapKeeper | None = None
        self._data_lock: Any = None
        self._tables: list[str] = []
        self._region = "us-east-1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def http(self) -> LocalHTTPServer:
        assert self.server is not None
        server: LocalHTTPServer = self.server.server
        return server

    # -- start -----------------------------------------------------------------------------------
    def start(self, demo: bool = True) -> None:
        settings = self.emulator.start()
        self._region = settings.region
        self._tables = list(bootstrap.table_names(settings).values())
        container = Container.from_settings(settings)
        self.container = container
        set_container(container)
        restored = self._load_data()
        catalog_admin.load_platform_catalog(container.catalog)
        if demo:
            self.keys = demo_keys(container) if restored else self._new_demo_keys(container)
        if demo and not restored and self.history_days > 0:
            # Before the pollers and schedules start: historic batches are rolled up as they queue.
            self.say(f"loading {self.history_days} days of demo usage (DEMO_HISTORY_DAYS)...")
            history = workload.load_history(container, days=self.history_days)
            self.notes.append(
                f"demo history: {history.accepted:,} events over {self.history_days} days "
                f"({history.duplicate} retries, {history.refused} refused) in {history.seconds:.0f} s; "
                "summaries fill in as the aggregator catches up"
            )
        if restored:
            swept = sweep.sweep(container.events, container.queue, container.clock(), grace=timedelta(0))
            if swept.requeued:
                self.notes.append(f"re-enqueued {len(swept.requeued)} batches the last run left pending")
        gc.freeze()  # the tables are long-lived: keep them out of every later full collection (~1 s at 100k events)
        app = thread_local_requests(load_app())
        config = chalice_config(app)
        try:
            self.server = LocalDevServer(
                app, config, self.host, self.port, handler_cls=RequestHandler, server_cls=LocalHTTPServer
            )
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        self.port = self.server.server.server_address[1]
        self.http.request_timeout = self.request_timeout
        self._start_aws_endpoint()
        self._server_thread = threading.Thread(
            target=self.http.serve_forever, args=(SERVE_POLL_S,), name="http", daemon=True
        )
        self._server_thread.start()
        for source in app.event_sources:
            if isinstance(source, SQSEventConfig) and source.queue:
                poller = SqsPoller(
                    source.name, source.queue, app.handler_map[source.name], settings.region, source.batch_size
                )
                poller.start()
                self.pollers.append(poller)
        jobs = [
            (s.name, app.handler_map[s.name], self.schedule_every or schedule_seconds(s.schedule_expression))
            for s in app.event_sources
            if isinstance(s, ScheduledEventConfig)
        ]
        self.scheduler = Scheduler(jobs, settings.region)
        self.scheduler.start()
        if self.snapshotter is not None:
            self.snapshotter.start()
        self._heap_keeper = HeapKeeper()
        self._heap_keeper.start()

    def _load_data(self) -> bool:
        """Claim the data directory and load its snapshot into the new tables; True if one was loaded."""
        if self.data_dir is None:
            return False
        self._data_lock = persistence.claim(self.data_dir)
        if self.fresh:
            previous = persistence.set_aside(self.data_dir)
            if previous is not None:
                self.notes.append(f"fresh start: the previous snapshot is kept as {previous}")
            info = None
        else:
            info = persistence.load(self.data_dir, self._region, self._tables)
        if info is not None:
            self.notes.append(f"loaded {info.describe()}")
        self.snapshotter = persistence.Snapshotter(self.snapshot_every, self._save, self._snapshot_failed)
        clients.on_event("after-call.dynamodb", self._after_dynamodb_call)
        return info is not None

    def _new_demo_keys(self, container: Container) -> dict[str, str]:
        return {env: issued.secret for env, issued in catalog_admin.load_demo_data(container.catalog).items()}

    def _start_aws_endpoint(self) -> None:
        port = self._aws_port()
        try:
            self.aws = AwsEndpoint(self.host, port, self._table_written)
        except ImportError:
            self.notes.append("aws endpoint: off (moto's server extra is missing: make install)")
            return
        except OSError as exc:
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupError(
                f"cannot serve the AWS endpoint on {self.host}:{port}: {reason} (choose one with AWS_PORT)"
            ) from exc
        self.aws.start()

    def _aws_port(self) -> int:
        """The AWS endpoint's port: as asked, else the HTTP port + 1 when free, else any free port."""
        if self.aws_port is not None:
            return self.aws_port
        with socket.socket() as probe:
            try:
                probe.bind((self.host, self.port + 1))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                return 0
        return self.port + 1

    # -- snapshots -------------------------------------------------------------------------------
    def _table_written(self) -> None:
        if self.snapshotter is not None:
            self.snapshotter.mark_changed()

    def _after_dynamodb_call(self, model: Any, http_response: Any = None, **_: Any) -> None:
        status = getattr(http_response, "status_code", 200)
        if status < 300 and not model.name.startswith(_READ_ONLY_PREFIXES):
            self._table_written()

    def _save(self) -> persistence.SnapshotInfo:
        assert self.data_dir is not None
        info = persistence.save(self.data_dir, self._region, self._tables, dynamodb_lock())
        log.debug("snapshot: %s (tables locked %.0f ms)", info.describe(), info.locked_seconds * 1000)
        return info

    def _snapshot_failed(self, exc: Exception) -> None:
        self.say(f"snapshot failed ({exc}); the previous one is intact, retrying in {self.snapshot_every:g} s")

    # -- stop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Refuse new requests, finish those in flight, drain the queue, stop the workers, save, stop."""
        if self.server is not None:
            self.http.stop_accepting(serving=_started(self._server_thread))
            busy = self.http.in_flight
            self.say("stopping: new requests refused" + (f"; waiting for {busy} in flight" if busy else ""))
            left = self.http.wait_in_flight(self.request_timeout)
            if left:
                self.say(f"stopping: {left} requests still in flight after {self.request_timeout:g} s")
            self.http.close_connections()
        if self.aws is not None:
            self.aws.stop()
        if self.pollers:
            self._drain()
        for poller in self.pollers:
            poller.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._heap_keeper is not None:
            self._heap_keeper.stop()
        for thread in [*self.pollers, self.scheduler, self._server_thread]:
            if thread is not None and thread.is_alive():
                thread.join(timeout=60)
        self._final_snapshot()
        clients.clear_events()
        set_container(None)
        self.emulator.stop()
        gc.unfreeze()
        if self._data_lock is not None:
            self._data_lock.close()
            self._data_lock = None

    def _drain(self) -> None:
        """Let the pollers feed the queued messages to the aggregator, for at most `drain_seconds`."""
        queued = self._queued()
        if not queued:
            return
        self.say(f"stopping: rolling up {queued} queued messages (at most {self.drain_seconds:g} s; Ctrl-C skips)")
        started = time.monotonic()
        while queued and time.monotonic() - started < self.drain_seconds and not self.hurry.is_set():
            self.hurry.wait(0.2)
            queued = self._queued()
        if queued:
            self.say(f"stopping: {queued} messages not rolled up; their events stay pending until the next start")
        else:
            self.say(f"stopping: queue drained in {time.monotonic() - started:.1f} s")

    def _queued(self) -> int:
        """Messages in the usage queue, visible or being handled."""
        if self.container is None:
            return 0
        try:
            attrs = clients.sqs().get_queue_attributes(
                QueueUrl=self.container.queue.url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
        except Exception:  # the emulator is gone or broken: nothing more will drain
            log.exception("cannot read the usage queue's depth")
            return 0
        visible = attrs.get("ApproximateNumberOfMessages", "0")
        handled = attrs.get("ApproximateNumberOfMessagesNotVisible", "0")
        return int(visible) + int(handled)

    def _final_snapshot(self) -> None:
        if self.snapshotter is None:
            return
        self.snapshotter.stop()
        if self.snapshotter.is_alive():
            self.snapshotter.join(timeout=120)
        try:
            info = self.snapshotter.save()
        except Exception as exc:
            self.say(f"stopping: the last snapshot failed ({exc}); the previous one is intact")
            return
        if info is not None:
            self.say(f"stopping: snapshot saved ({info.describe()}) in {self.data_dir}")
        else:
            self.say(f"stopping: the snapshot in {self.data_dir} is up to date")


def demo_keys(container: Container) -> dict[str, str]:
    """The demo keys over restored data: a key is issued only if the data lacks it (a newly pinned secret).

    The demo organizations, workspaces and lines stay as the last run left them (paused lines,
    revoked keys...); data saved without them (--no-demo) gets them loaded.
    """
    demo = catalog_data.read("demo")
    if any(container.catalog.get_organization(org["id"]) is None for org in demo["organizations"]):
        return {env: issued.secret for env, issued in catalog_admin.load_demo_data(container.catalog).items()}
    keys: dict[str, str] = {}
    for spec in demo["api_keys"]:
        secret = os.environ.get(spec["env"]) or spec["default"]
        stored = container.catalog.get_api_key(hash_key(secret))
        if stored is None:
            catalog_admin.issue_key(
                container.catalog, spec["organization_id"], parse_scopes(spec["scopes"]), spec["name"], secret=secret
            )
        elif stored.status != "active":
            secret += f"   ({stored.status})"
        keys[spec["env"]] = secret
    return keys


def load_app() -> Chalice:
    """The project's `app.py` (the same object Lambda would load)."""
    if str(PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(PROJECT_DIR))
    module = importlib.import_module("app")
    app: Chalice = module.app
    return app


def thread_local_requests(app: Chalice) -> Chalice:
    """Make `app.current_request` per thread, as `chalice local` does (its server is threaded).

    Without it, concurrent requests share one `current_request` and a route can read another
    request's body.
    """
    if not isinstance(app, LocalChalice):
        local_class = type("ThreadLocalChalice", (LocalChalice, app.__class__), {})
        app.__class__ = local_class
    return app


def chalice_config(app: Chalice, stage: str = "dev") -> Config:
    with open(PROJECT_DIR / ".chalice" / "config.json", encoding="utf-8") as fh:
        from_disk = json.load(fh)
    return Config.create(
        chalice_stage=stage,
        app_name=app.app_name,
        chalice_app=app,
        project_dir=str(PROJECT_DIR),
        config_from_disk=from_disk,
    )


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(description="Run the usage-metering service locally (embedded AWS).")
    parser.add_argument("--host", default=env.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("PORT", "8000")))
    parser.add_argument(
        "--aws-port",
        type=int,
        default=int(env["AWS_PORT"]) if env.get("AWS_PORT") else None,
        help="port of the emulated AWS endpoint for AWS tools (default: AWS_PORT, else --port + 1)",
    )
    parser.add_argument("--schedule-every", type=float, default=None, help="run every schedule at this period (s)")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=CONNECTION_TIMEOUT_S,
        help=f"seconds a connection may stay idle or stall mid-request (default {CONNECTION_TIMEOUT_S:g})",
    )
    parser.add_argument("--no-demo", action="store_true", help="load the catalog but no demo organizations")
    parser.add_argument(
        "--history-days",
        type=int,
        default=int(env.get("DEMO_HISTORY_DAYS") or 0),
        help="days of demo usage to load into an empty store (default: DEMO_HISTORY_DAYS or 0; make run: 30)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env["LOCAL_DATA_DIR"]) if env.get("LOCAL_DATA_DIR") else None,
        help="keep the tables here across restarts (default: LOCAL_DATA_DIR; none: in memory only)",
    )
    parser.add_argument(
        "--fresh", action="store_true", default=_flag(env.get("FRESH")), help="start empty (also FRESH=1)"
    )
    parser.add_argument(
        "--snapshot-every",
        type=float,
        default=float(env.get("SNAPSHOT_SECONDS", "10")),
        help="seconds between snapshots when something changed (default: SNAPSHOT_SECONDS or 10)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=float(env.get("DRAIN_SECONDS", "20")),
        help="at stop, how long queued usage may take to reach the rollups (default: DRAIN_SECONDS or 20)",
    )
    return parser


def _banner(stack: LocalStack) -> Iterable[str]:
    yield f"usage-metering local stack: {stack.base_url}"
    yield f"  dashboard: {stack.base_url}/dashboard  (sign in with a demo key below)"
    if stack.aws is not None:
        url = stack.aws.url
        yield f"  aws endpoint: {url}  (region {stack._region}; e.g. aws dynamodb list-tables --endpoint-url {url})"
        yield f"  cli: usage-metering keys list --endpoint-url {url}"
    if stack.data_dir is not None:
        every = f"{stack.snapshot_every:g}"
        yield f"  data: {stack.data_dir}  (snapshot every {every} s when changed; FRESH=1 starts empty)"
    else:
        yield "  data: in memory only (--data-dir or LOCAL_DATA_DIR keeps it across restarts)"
    for note in stack.notes:
        yield f"  {note}"
    for env, secret in stack.keys.items():
        yield f"  {env}={secret}"
    yield f"  pollers: {', '.join(p.function_name for p in stack.pollers) or 'none'}"
    scheduled = [name for name, _, _ in stack.scheduler.jobs] if stack.scheduler else []
    yield f"  schedules: {', '.join(scheduled) or 'none'}"
    yield "ready (Ctrl-C or SIGTERM stops)"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the AWS endpoint's per-request lines
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)  # "Found credentials" (the emulator's)
    stack = LocalStack(
        args.host,
        args.port,
        args.schedule_every,
        data_dir=args.data_dir,
        fresh=args.fresh,
        snapshot_every=args.snapshot_every,
        aws_port=args.aws_port,
        drain_seconds=args.drain_seconds,
        request_timeout=args.request_timeout,
        history_days=args.history_days,
    )
    # SIGTERM stops like Ctrl-C; SIGINT is handled even when inherited as ignored (a background job).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    status = 0
    try:  # Ctrl-C at any point from here on stops whatever has started
        stack.start(demo=not args.no_demo)
        for line in _banner(stack):
            print(line, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except (StartupError, persistence.SnapshotError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:

        def hurry(signum: int, frame: FrameType | None) -> None:
            stack.hurry.set()  # a second Ctrl-C skips the drain; the rest of the stop still runs

        signal.signal(signal.SIGINT, hurry)
        signal.signal(signal.SIGTERM, hurry)
        print("stopping...", flush=True)
        stack.stop()
    print("stopped", flush=True)
    return status


def exit_now(status: int) -> None:
    """Exit at once: the stack has stopped, saved and released its data; the interpreter's teardown of
    the emulator's and botocore's module state (a third of a second) would only delay the exit."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_now(main())
