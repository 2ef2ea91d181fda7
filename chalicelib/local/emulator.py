"""The embedded AWS emulation (moto, in-process) used by the local stack and the tests.

Real DynamoDB applies each write, condition check and transaction atomically;
moto's in-process backend does not lock, so two threads can both pass a
condition. The emulator serializes every DynamoDB request to restore that
guarantee (it costs nothing real: moto holds the GIL anyway). It also installs
`moto_fixes`, which keep a request's cost independent of the table's size and
numbers exact.
"""

from __future__ import annotations

import functools
import os
import threading
from contextlib import AbstractContextManager
from typing import Any

from chalicelib.config import Settings, get_settings, reset_settings
from chalicelib.storage import bootstrap, clients

_FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_DDB_LOCK = threading.RLock()
_patched = False


def dynamodb_lock() -> AbstractContextManager[Any]:
    """The lock every emulated DynamoDB request holds; hold it to read moto's tables consistently."""
    return _DDB_LOCK


def _patch_moto() -> None:
    """Serialize DynamoDB requests (once per process) and put the moto fixes in place (at every start)."""
    global _patched
    from chalicelib.local import chalice_fixes, moto_fixes

    moto_fixes.install()
    chalice_fixes.install()  # the local router routes a greedy {proxy+} as API Gateway does
    if _patched:
        return
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.call_action

    @functools.wraps(original)
    def call_action(self: Any) -> Any:
        with _DDB_LOCK:
            return original(self)

    DynamoHandler.call_action = call_action  # type: ignore[method-assign]
    _patched = True


class Emulator:
    """Starts moto in this process and creates the stage's tables and queues."""

    def __init__(self) -> None:
        self._mock: Any = None
        self._saved_env: dict[str, str | None] = {}

    def start(self, create: bool = True) -> Settings:
        from moto import mock_aws
        from moto.core.config import DefaultConfig

        for name, value in _FAKE_ENV.items():
            self._saved_env[name] = os.environ.get(name)
            os.environ[name] = value
        os.environ.pop("AWS_PROFILE", None)
        _patch_moto()
        # moto drops boto3's default session at each start, and with it botocore's cache of loaded
        # service models: a test's first clients would load them again (~50 ms each). Keep it.
        config: DefaultConfig = {
            "core": {
                "mock_credentials": True,
                "passthrough": {"urls": [], "services": []},
                "reset_boto3_session": False,
            }
        }
        self._mock = mock_aws(config=config)
        self._mock.start()
        reset_settings()
        clients.reset_clients()
        settings = get_settings()
        if create:
            bootstrap.create_resources(settings)
        return settings

    def stop(self) -> None:
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        clients.reset_clients()
        reset_settings()

    def __enter__(self) -> Settings:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
