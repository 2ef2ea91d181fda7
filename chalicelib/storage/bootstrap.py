"""Create the tables and queues of a stage from the one schema (local stack and tests)."""

from __future__ import annotations

from chalicelib.config import Settings
from chalicelib.storage import clients
from chalicelib.storage.schema import QUEUES, TABLES


def table_names(settings: Settings) -> dict[str, str]:
    return {"events": settings.events_table, "rollups": settings.rollups_table, "catalog": settings.catalog_table}


def queue_names(settings: Settings) -> dict[str, str]:
    return {"usage": settings.usage_queue, "usage_dlq": settings.usage_dlq}


def create_resources(settings: Settings) -> None:
    """Create every table (with its TTL) and queue (dead-letter queues first); idempotent."""
    ddb = clients.dynamodb()
    existing = set(ddb.list_tables().get("TableNames", []))
    for logical, name in table_names(settings).items():
        spec = TABLES[logical]
        if name in existing:
            continue
        ddb.create_table(**spec.create_table_kwargs(name))
        ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        if spec.ttl_attribute:
            ddb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute}
            )
    sqs = clients.sqs()
    names = queue_names(settings)
    for logical in sorted(QUEUES, key=lambda q: QUEUES[q].dead_letter is not None):
        queue = QUEUES[logical]
        dlq_arn = None
        if queue.dead_letter:
            dlq_url = sqs.get_queue_url(QueueName=names[queue.dead_letter])["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sqs.create_queue(QueueName=names[logical], Attributes=queue.create_queue_attributes(dlq_arn))  # type: ignore[arg-type]
