"""The CloudFormation merge template for `chalice package`, built from the one schema.

Chalice writes the functions, the API, the schedules and the SQS event source;
this adds what it cannot: the tables (keys, indexes, TTL, point-in-time
recovery, on-demand billing), the usage queue with its dead-letter queue and
redrive policy, `ReportBatchItemFailures` on the aggregator's event source, and
a least-privilege IAM policy naming each table, index and queue (no `*`
resource). Chalice's merge replaces lists and merges dicts deeply; the
packaged result is what the tests check.

    python -m tools.deploy_template --stage prod > build/merge-prod.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from chalicelib.storage.schema import QUEUES, TABLES, QueueSpec, TableSpec, resource_name

APP_NAME = "usage-metering"
AGGREGATOR = "AggregateUsage"
AGGREGATOR_EVENT = "AggregateUsageSqsEventSource"

# Every DynamoDB and SQS call the code makes (checked against recorded calls in the tests).
DYNAMODB_ACTIONS = [
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:Scan",
    "dynamodb:UpdateItem",
]
SQS_SEND_ACTIONS = ["sqs:GetQueueUrl", "sqs:SendMessage"]
SQS_CONSUME_ACTIONS = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:ChangeMessageVisibility",
]


def logical_id(kind: str, name: str) -> str:
    return kind + "".join(part.capitalize() for part in name.split("_"))


def table_resource(spec: TableSpec, table_name: str) -> dict[str, Any]:
    kwargs = spec.create_table_kwargs(table_name)
    props: dict[str, Any] = {
        "TableName": table_name,
        "BillingMode": kwargs["BillingMode"],
        "AttributeDefinitions": kwargs["AttributeDefinitions"],
        "KeySchema": kwargs["KeySchema"],
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        "SSESpecification": {"SSEEnabled": True},
    }
    if "GlobalSecondaryIndexes" in kwargs:
        props["GlobalSecondaryIndexes"] = kwargs["GlobalSecondaryIndexes"]
    if spec.ttl_attribute:
        props["TimeToLiveSpecification"] = {"AttributeName": spec.ttl_attribute, "Enabled": True}
    return {
        "Type": "AWS::DynamoDB::Table",
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": props,
    }


def queue_resource(spec: QueueSpec, queue_name: str) -> dict[str, Any]:
    props: dict[str, Any] = {
        "QueueName": queue_name,
        "VisibilityTimeout": spec.visibility_timeout_s,
        "MessageRetentionPeriod": spec.retention_s,
        "SqsManagedSseEnabled": True,
    }
    if spec.dead_letter:
        props["RedrivePolicy"] = {
            "deadLetterTargetArn": {"Fn::GetAtt": [logical_id("Queue", spec.dead_letter), "Arn"]},
            "maxReceiveCount": spec.max_receive_count,
        }
    return {"Type": "AWS::SQS::Queue", "Properties": props}


def arn(service: str, resource: str) -> dict[str, str]:
    return {"Fn::Sub": f"arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{resource}"}


def policy(stage: str) -> dict[str, Any]:
    tables = [resource_name(spec.base_name, stage) for spec in TABLES.values()]
    table_arns = [arn("dynamodb", f"table/{t}") for t in tables]
    index_arns = [
        arn("dynamodb", f"table/{t}/index/*") for t, s in zip(tables, TABLES.values(), strict=True) if s.indexes
    ]
    queues = {logical: resource_name(spec.base_name, stage) for logical, spec in QUEUES.items()}
    log_prefix = f"log-group:/aws/lambda/{APP_NAME}-{stage}-"
    return {
        "PolicyName": "MeteringLeastPrivilege",
        "PolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "Tables", "Effect": "Allow", "Action": DYNAMODB_ACTIONS, "Resource": table_arns},
                {"Sid": "Indexes", "Effect": "Allow", "Action": ["dynamodb:Query"], "Resource": index_arns},
                {
                    "Sid": "SendUsage",
                    "Effect": "Allow",
                    "Action": SQS_SEND_ACTIONS,
                    "Resource": [arn("sqs", q) for q in queues.values()],
                },
                {
                    "Sid": "ConsumeUsage",
                    "Effect": "Allow",
                    "Action": SQS_CONSUME_ACTIONS,
                    "Resource": [arn("sqs", queues["usage"])],
                },
                {
                    "Sid": "Logs",
                    "Effect": "Allow",
                    "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                    "Resource": [arn("logs", log_prefix + "*"), arn("logs", log_prefix + "*:log-stream:*")],
                },
            ],
        },
    }


def merge_template(stage: str) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    for logical, spec in TABLES.items():
        resources[logical_id("Table", logical)] = table_resource(spec, resource_name(spec.base_name, stage))
    for logical, queue in QUEUES.items():
        resources[logical_id("Queue", logical)] = queue_resource(queue, resource_name(queue.base_name, stage))
    resources["DefaultRole"] = {"Properties": {"Policies": [policy(stage)]}}
    # Chalice names the queue by ARN (Fn::Sub); merging a Fn::GetAtt into that dict would make it
    # invalid, so the queue's creation order comes from DependsOn instead.
    resources[AGGREGATOR] = {
        "DependsOn": [logical_id("Queue", "usage")],
        "Properties": {
            "Timeout": 60,
            "MemorySize": 512,
            "Events": {AGGREGATOR_EVENT: {"Properties": {"FunctionResponseTypes": ["ReportBatchItemFailures"]}}},
        },
    }
    return {"Resources": resources}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args(argv)
    json.dump(merge_template(args.stage), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
