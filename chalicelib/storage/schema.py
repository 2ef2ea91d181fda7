"""The tables and queues of the service, defined once.

The local stack, the tests and the deploy template all build their resources
from these specifications, so a key or index exists in exactly one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class IndexSpec:
    """A global secondary index: its name, string keys and projection."""

    name: str
    hash_key: str
    range_key: str
    projection: str = "ALL"


@dataclass(frozen=True)
class TableSpec:
    """A DynamoDB table with string keys `pk`/`sk`, optional GSIs and TTL."""

    base_name: str
    hash_key: str = "pk"
    range_key: str = "sk"
    indexes: tuple[IndexSpec, ...] = ()
    ttl_attribute: str | None = None

    def attribute_definitions(self) -> list[dict[str, str]]:
        names = [self.hash_key, self.range_key]
        for index in self.indexes:
            names += [index.hash_key, index.range_key]
        unique = list(dict.fromkeys(names))
        return [{"AttributeName": n, "AttributeType": "S"} for n in unique]

    def create_table_kwargs(self, table_name: str) -> dict[str, Any]:
        """Arguments for DynamoDB CreateTable (on-demand billing)."""
        kwargs: dict[str, Any] = {
            "TableName": table_name,
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": self.attribute_definitions(),
            "KeySchema": [
                {"AttributeName": self.hash_key, "KeyType": "HASH"},
                {"AttributeName": self.range_key, "KeyType": "RANGE"},
            ],
        }
        if self.indexes:
            kwargs["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": ix.name,
                    "KeySchema": [
                        {"AttributeName": ix.hash_key, "KeyType": "HASH"},
                        {"AttributeName": ix.range_key, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": ix.projection},
                }
                for ix in self.indexes
            ]
        return kwargs


@dataclass(frozen=True)
class QueueSpec:
    """An SQS standard queue; `dead_letter` names the QUEUES entry it redrives to."""

    base_name: str
    visibility_timeout_s: int = 360
    retention_s: int = 4 * 24 * 3600
    dead_letter: str | None = None
    max_receive_count: int = 8
    attributes: dict[str, str] = field(default_factory=dict)

    def create_queue_attributes(self, dlq_arn: str | None = None) -> dict[str, str]:
        attrs = {
            "VisibilityTimeout": str(self.visibility_timeout_s),
            "MessageRetentionPeriod": str(self.retention_s),
            **self.attributes,
        }
        if dlq_arn is not None:
            policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(self.max_receive_count)}
            attrs["RedrivePolicy"] = json.dumps(policy, separators=(",", ":"))
        return attrs


# Usage events (keyed by organization + idempotency key) and pending batch records.
# The `by_line` index lists a service line's events in (period_date, id) order.
EVENTS = TableSpec(
    base_name="metering-events",
    indexes=(IndexSpec("by_line", "gsi1pk", "gsi1sk"),),
)

# Day and hour rollups, plus the "applied" markers that make aggregation exactly-once.
# The sparse `by_period` index finds a line's hour rollups by period_date (reconciliation).
ROLLUPS = TableSpec(
    base_name="metering-rollups",
    indexes=(IndexSpec("by_period", "gsi1pk", "gsi1sk"),),
    ttl_attribute="expires_at",
)

# Organizations, workspaces, service lines, meters, plans, subscriptions and API keys.
CATALOG = TableSpec(base_name="metering-catalog")

TABLES: dict[str, TableSpec] = {"events": EVENTS, "rollups": ROLLUPS, "catalog": CATALOG}

# Lambda's function timeout for the aggregator is 60 s; AWS asks for a visibility
# timeout of at least six times that.
QUEUES: dict[str, QueueSpec] = {
    "usage_dlq": QueueSpec(base_name="metering-usage-dlq", retention_s=14 * 24 * 3600),
    "usage": QueueSpec(base_name="metering-usage", dead_letter="usage_dlq"),
}


def resource_name(base_name: str, stage: str) -> str:
    """The physical name of a table or queue in a stage."""
    return f"{base_name}-{stage}"
