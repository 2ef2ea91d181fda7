"""`make run`: the whole local stack in one process.

The embedded AWS emulation, the tables and queues, the catalog and demo data,
the Chalice local HTTP server, an SQS poller for each `on_sqs_message` handler
and a scheduler for each `schedule` handler. Stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from chalice.app import Chalice, ScheduledEventConfig, SQSEventConfig
from chalice.config import Config
from chalice.local import ChaliceRequestHandler, LocalChalice, LocalDevServer, ThreadedHTTPServer

from chalicelib.container import Container, set_container
from chalicelib.local.emulator import Emulator
from chalicelib.local.runtime import Scheduler, SqsPoller, schedule_seconds
from chalicelib.services import catalog_admin

log = logging.getLogger("usage-metering.local")
PROJECT_DIR = Path(__file__).resolve().parents[2]


class NoDelayHTTPServer(ThreadedHTTPServer):
    """Chalice's threaded server with Nagle's algorithm off on accepted sockets.

    With Nagle on, every request after the first on a keep-alive connection
    waits ~40 ms for a delayed ACK.
    """

    allow_reuse_address = True

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


class RequestHandler(ChaliceRequestHandler):
    """Chalice's handler, answering any method it does not route (TRACE, QUERY...) with 405, as API Gateway does.

    Python's base handler would answer 501 Not Implemented, a server error a client cannot fix.
    """

    def _method_not_allowed(self) -> None:
        body = b'{"error":{"code":"method_not_allowed","message":"This method is not supported."}}'
        self.send_response(405)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)


class LocalStack:
    """The running local stack; also used by end-to-end tests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, schedule_every: float | None = None) -> None:
        self.host = host
        self.port = port
        self.schedule_every = schedule_every
        self.emulator = Emulator()
        self.keys: dict[str, str] = {}
        self.server: LocalDevServer | None = None
        self.pollers: list[SqsPoller] = []
        self.scheduler: Scheduler | None = None
        self._server_thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, demo: bool = True) -> None:
        settings = self.emulator.start()
        container = Container.from_settings(settings)
        set_container(container)
        catalog_admin.load_platform_catalog(container.catalog)
        if demo:
            self.keys = {env: issued.secret for env, issued in catalog_admin.load_demo_data(container.catalog).items()}
        app = thread_local_requests(load_app())
        config = chalice_config(app)
        self.server = LocalDevServer(
            app, config, self.host, self.port, handler_cls=RequestHandler, server_cls=NoDelayHTTPServer
        )
        self.port = self.server.server.server_address[1]
        self._server_thread = threading.Thread(target=self.server.server.serve_forever, name="http", daemon=True)
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

    def stop(self) -> None:
        for poller in self.pollers:
            poller.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.server is not None:
            self.server.server.shutdown()
            self.server.server.server_close()
        for thread in [*self.pollers, self.scheduler, self._server_thread]:
            if thread is not None:
                thread.join(timeout=5)
        set_container(None)
        self.emulator.stop()


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the usage-metering service locally (embedded AWS).")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--schedule-every", type=float, default=None, help="run every schedule at this period (s)")
    parser.add_argument("--no-demo", action="store_true", help="load the catalog but no demo organizations")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    stack = LocalStack(args.host, args.port, args.schedule_every)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:  # Ctrl-C at any point from here on stops whatever has started
        stack.start(demo=not args.no_demo)
        print(f"usage-metering local stack: {stack.base_url}", flush=True)
        for env, secret in stack.keys.items():
            print(f"  {env}={secret}", flush=True)
        print(f"  pollers: {', '.join(p.function_name for p in stack.pollers) or 'none'}", flush=True)
        scheduled = [name for name, _, _ in stack.scheduler.jobs] if stack.scheduler else []
        print(f"  schedules: {', '.join(scheduled) or 'none'}", flush=True)
        print("ready (Ctrl-C stops)", flush=True)
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        print("stopping...", flush=True)
        stack.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
