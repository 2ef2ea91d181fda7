"""Settings, read lazily from the environment (never at import time)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from chalicelib.storage.schema import QUEUES, TABLES, resource_name


@dataclass(frozen=True)
class Settings:
    """Where the service's tables and queues live, and its tunables."""

    stage: str
    region: str
    events_table: str
    rollups_table: str
    catalog_table: str
    usage_queue: str
    usage_dlq: str
    cursor_secret: str
    max_body_bytes: int = 1_048_576

    @classmethod
    def from_env(cls) -> Settings:
        stage = os.environ.get("METERING_STAGE", "dev")

        def name(env: str, base: str) -> str:
            return os.environ.get(env) or resource_name(base, stage)

        return cls(
            stage=stage,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            events_table=name("METERING_EVENTS_TABLE", TABLES["events"].base_name),
            rollups_table=name("METERING_ROLLUPS_TABLE", TABLES["rollups"].base_name),
            catalog_table=name("METERING_CATALOG_TABLE", TABLES["catalog"].base_name),
            usage_queue=name("METERING_USAGE_QUEUE", QUEUES["usage"].base_name),
            usage_dlq=name("METERING_USAGE_DLQ", QUEUES["usage_dlq"].base_name),
            cursor_secret=os.environ.get("METERING_CURSOR_SECRET", "local-development-cursor-secret"),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget cached settings (tests and the local stack change the environment)."""
    get_settings.cache_clear()
