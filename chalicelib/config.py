"""Settings, read lazily from the environment (never at import time), and the service's secrets.

A deployed function (one running on AWS Lambda) never runs with a default
secret: the packaged template creates the cursor secret in AWS Secrets Manager
and names it in METERING_CURSOR_SECRET_ID; the value is read on first use and
kept for the life of the process. Without it, `check_environment` (called when
app.py is imported, Lambda's init phase) stops the function with a
ConfigurationError that says what is missing. Off Lambda (the local stack,
tests, tools) the public development secret is used unless
METERING_CURSOR_SECRET or METERING_CURSOR_SECRET_ID is set.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache

from chalicelib.storage.schema import QUEUES, TABLES, resource_name

# The secret that signs cursors off Lambda: public, so never used by a deployed function.
DEV_CURSOR_SECRET = "local-development-cursor-secret"
MIN_SECRET_LENGTH = 32

# How many days back a usage event's period_date may be (per stage: METERING_PERIOD_DAYS_BACK).
# A year by default: late timesheets and backfills of an annual plan's term are accepted, and
# the documents' own examples (April events reported in the autumn) are not refused.
DEFAULT_PERIOD_DAYS_BACK = 366
MAX_PERIOD_DAYS_BACK = 3660


class ConfigurationError(RuntimeError):
    """A setting the function needs is missing or invalid: it must not start."""


def on_lambda() -> bool:
    """True in a deployed function (AWS Lambda sets AWS_LAMBDA_FUNCTION_NAME; `sam local` marks itself)."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) and os.environ.get("AWS_SAM_LOCAL") != "true"


@dataclass(frozen=True)
class Settings:
    """Where the service's tables and queues live, its tunables, and where its secrets come from."""

    stage: str
    region: str
    events_table: str
    rollups_table: str
    catalog_table: str
    usage_queue: str
    usage_dlq: str
    cursor_secret_id: str | None = None
    cursor_secret_value: str | None = field(default=None, repr=False)
    period_days_back: int = DEFAULT_PERIOD_DAYS_BACK
    max_body_bytes: int = 1_048_576

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process; a ConfigurationError when a deployed function lacks one."""
        stage = os.environ.get("METERING_STAGE", "dev")

        def name(env: str, base: str) -> str:
            return os.environ.get(env) or resource_name(base, stage)

        settings = cls(
            stage=stage,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            events_table=name("METERING_EVENTS_TABLE", TABLES["events"].base_name),
            rollups_table=name("METERING_ROLLUPS_TABLE", TABLES["rollups"].base_name),
            catalog_table=name("METERING_CATALOG_TABLE", TABLES["catalog"].base_name),
            usage_queue=name("METERING_USAGE_QUEUE", QUEUES["usage"].base_name),
            usage_dlq=name("METERING_USAGE_DLQ", QUEUES["usage_dlq"].base_name),
            cursor_secret_id=os.environ.get("METERING_CURSOR_SECRET_ID") or None,
            cursor_secret_value=os.environ.get("METERING_CURSOR_SECRET") or None,
            period_days_back=_days(os.environ.get("METERING_PERIOD_DAYS_BACK")),
        )
        if on_lambda():
            settings._require_deployable_secret()
        return settings

    def _require_deployable_secret(self) -> None:
        if self.cursor_secret_id:
            return
        value = self.cursor_secret_value
        if value is None:
            raise ConfigurationError(
                "METERING_CURSOR_SECRET_ID is not set: a deployed function reads its cursor secret from AWS "
                "Secrets Manager (the template from `make package` creates it and sets this variable); "
                "refusing to start with the public development secret."
            )
        if value == DEV_CURSOR_SECRET or len(value) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"METERING_CURSOR_SECRET is the public development secret or shorter than {MIN_SECRET_LENGTH} "
                "characters; a deployed function needs its own (set METERING_CURSOR_SECRET_ID to a Secrets "
                "Manager secret instead)."
            )

    @property
    def cursor_secret(self) -> str:
        """The key of page cursors: from Secrets Manager (read once), the environment, or the dev default."""
        if self.cursor_secret_id:
            return read_secret(self.cursor_secret_id, self.region)
        if self.cursor_secret_value:
            return self.cursor_secret_value
        if on_lambda():  # from_env refuses this; settings built by hand must not slip through either
            self._require_deployable_secret()
        return DEV_CURSOR_SECRET


def _days(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return DEFAULT_PERIOD_DAYS_BACK
    try:
        days = int(raw)
    except ValueError:
        days = -1
    if not 1 <= days <= MAX_PERIOD_DAYS_BACK:
        raise ConfigurationError(
            f"METERING_PERIOD_DAYS_BACK must be a whole number of days from 1 to {MAX_PERIOD_DAYS_BACK}, not {raw!r}."
        )
    return days


_secret_lock = threading.Lock()
_secrets: dict[tuple[str, str], str] = {}


def read_secret(secret_id: str, region: str) -> str:
    """A Secrets Manager secret's string, fetched on first use and kept for the life of the process."""
    with _secret_lock:
        cached = _secrets.get((secret_id, region))
        if cached is not None:
            return cached
        import boto3  # here, not at import: only a function that reads a secret pays for the client

        answer = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=secret_id)
        value = answer.get("SecretString") or ""
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"The secret {secret_id} has no string value of at least {MIN_SECRET_LENGTH} characters."
            )
        _secrets[(secret_id, region)] = value
        return value


def check_environment() -> None:
    """Fail a deployed function's start (Lambda's init phase) when a setting or secret is missing."""
    if on_lambda():
        Settings.from_env()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget cached settings and secrets (tests and the local stack change the environment)."""
    get_settings.cache_clear()
    with _secret_lock:
        _secrets.clear()
