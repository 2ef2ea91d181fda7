"""The CloudFormation merge template for `chalice package`, built from the one schema.

Chalice writes the functions, the API, the schedules and the SQS event source;
this adds what it cannot: the tables (keys, indexes, TTL, point-in-time
recovery, on-demand billing), the usage queue with its dead-letter queue and
redrive policy, `ReportBatchItemFailures` on the aggregator's event source, one
IAM role per function granting only what that function calls on each named
table, index, queue and its own log group (no `*` resource; writes to the
events table other than storing events are limited to pending records), and
API Gateway stage throttling (template parameters with per-stage defaults).
.chalice/config.json tells Chalice not to manage roles; each function's role
here replaces the `iam_role_arn` placeholder. Chalice's merge replaces lists
and merges dicts deeply; the packaged result is what the tests check.

    python -m tools.deploy_template --stage prod > build/merge-prod.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from chalicelib.storage.schema import QUEUES, TABLES, QueueSpec, TableSpec, resource_name

APP_NAME = "usage-metering"
AGGREGATOR = "AggregateUsage"
AGGREGATOR_EVENT = "AggregateUsageSqsEventSource"
API = "RestAPI"

# Chalice's function name -> the logical id chalice package gives the function.
FUNCTIONS = {
    "api_handler": "APIHandler",
    "aggregate_usage": AGGREGATOR,
    "sweep_pending": "SweepPending",
    "reconcile_rollups": "ReconcileRollups",
}

# The partition of the events table that holds pending batch records (the rest are immutable events).
# chalicelib/storage keeps the key format; the recorded-call test fails if the two ever differ.
PENDING_PREFIX = "PENDING#"

# Lambda's SQS event source polls with the function's role and needs exactly these.
SQS_EVENT_SOURCE_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
SQS_SEND_ACTIONS = ("sqs:GetQueueUrl", "sqs:SendMessage")
LOG_ACTIONS = ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents")


@dataclass(frozen=True)
class Throttling:
    """API Gateway stage throttling: steady requests per second and the burst above it."""

    rate_limit: float
    burst_limit: int


# Defaults per stage; a deploy can override them per stack with
# --parameter-overrides ApiThrottlingRateLimit=... ApiThrottlingBurstLimit=...
STAGE_THROTTLING = {"dev": Throttling(10, 20), "prod": Throttling(100, 200)}
DEFAULT_THROTTLING = STAGE_THROTTLING["dev"]


@dataclass(frozen=True)
class Grant:
    """One policy statement: actions on named resources; `pending_only` limits items to pending records."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[tuple[str, str], ...]  # (service, resource) pairs, e.g. ("sqs", "metering-usage-prod")
    pending_only: bool = False


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


def function_name(stage: str, function: str) -> str:
    """The Lambda function's name (as `chalice deploy` names it), so its log group can be named exactly."""
    return f"{APP_NAME}-{stage}-{function}"


def grants(stage: str) -> dict[str, list[Grant]]:
    """What each function calls, and nothing more (the tests check it against every recorded call)."""

    def table(name: str) -> tuple[str, str]:
        return ("dynamodb", f"table/{resource_name(TABLES[name].base_name, stage)}")

    def index(name: str, index_name: str) -> tuple[str, str]:
        if index_name not in {ix.name for ix in TABLES[name].indexes}:
            raise ValueError(f"table {name} has no index {index_name}")
        return ("dynamodb", f"{table(name)[1]}/index/{index_name}")

    def queue(name: str) -> tuple[str, str]:
        return ("sqs", resource_name(QUEUES[name].base_name, stage))

    def dynamodb(*actions: str) -> tuple[str, ...]:
        return tuple(f"dynamodb:{a}" for a in actions)

    return {
        # Routes: authenticate, read the catalog, ingest (events, pending records, the queue), read usage.
        "api_handler": [
            Grant("Catalog", dynamodb("GetItem", "PutItem", "Query", "UpdateItem"), (table("catalog"),)),
            Grant("WriteEvents", dynamodb("GetItem", "PutItem"), (table("events"),)),
            Grant("DropEmptyPendingBatch", dynamodb("DeleteItem"), (table("events"),), pending_only=True),
            Grant("ListEvents", dynamodb("Query"), (index("events", "by_line"),)),
            Grant("ReadRollups", dynamodb("Query"), (table("rollups"),)),
            Grant("SendUsage", SQS_SEND_ACTIONS, (queue("usage"),)),
            Grant("ReadCursorSecret", ("secretsmanager:GetSecretValue",), (cursor_secret_arn(stage),)),
        ],
        # SQS aggregator: read the batch's events, apply rollups with their markers, clear (or mark
        # dead-lettered) pending records; and run reconciliation work items: a line's events, its
        # batches' pending state, its rollups and markers, repairing drift.
        "aggregate_usage": [
            Grant("ReadEvents", dynamodb("BatchGetItem", "GetItem"), (table("events"),)),
            Grant(
                "SettlePendingBatches",
                dynamodb("BatchWriteItem", "UpdateItem"),
                (table("events"),),
                pending_only=True,
            ),
            Grant("ListEvents", dynamodb("Query"), (index("events", "by_line"),)),
            Grant(
                "ApplyAndRepairRollups",
                dynamodb("BatchGetItem", "PutItem", "Query", "UpdateItem"),
                (table("rollups"),),
            ),
            Grant("FindHourRollups", dynamodb("Query"), (index("rollups", "by_period"),)),
            Grant("ConsumeUsage", SQS_EVENT_SOURCE_ACTIONS, (queue("usage"),)),
            Grant("DeadLetter", SQS_SEND_ACTIONS, (queue("usage_dlq"),)),
        ],
        # Sweeper: find pending batches, claim and re-enqueue them.
        "sweep_pending": [
            Grant("FindPendingBatches", dynamodb("Query"), (table("events"),)),
            Grant("ClaimPendingBatch", dynamodb("UpdateItem"), (table("events"),), pending_only=True),
            Grant("SendUsage", SQS_SEND_ACTIONS, (queue("usage"),)),
        ],
        # Reconciliation planner: the next slice of service lines (a scan from its saved cursor),
        # sent as work items through the usage queue.
        "reconcile_rollups": [
            Grant("ListServiceLines", dynamodb("Scan"), (table("catalog"),)),
            Grant("KeepCursor", dynamodb("GetItem", "PutItem"), (table("catalog"),)),
            Grant("SendWorkItems", SQS_SEND_ACTIONS, (queue("usage"),)),
        ],
    }


def statement(grant: Grant) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Sid": grant.sid,
        "Effect": "Allow",
        "Action": list(grant.actions),
        "Resource": [arn(service, resource) for service, resource in grant.resources],
    }
    if grant.pending_only:
        # Every item the call touches must be a pending record: no function deletes or changes an event.
        body["Condition"] = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [PENDING_PREFIX + "*"]}}
    return body


def role_resource(stage: str, function: str, function_grants: list[Grant]) -> dict[str, Any]:
    """The function's own execution role: its grants and its own log group."""
    log_group = f"log-group:/aws/lambda/{function_name(stage, function)}"
    logs = {
        "Sid": "Logs",
        "Effect": "Allow",
        "Action": list(LOG_ACTIONS),
        "Resource": [arn("logs", log_group), arn("logs", log_group + ":log-stream:*")],
    }
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            },
            "Policies": [
                {
                    "PolicyName": f"{FUNCTIONS[function]}LeastPrivilege",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [*(statement(g) for g in function_grants), logs],
                    },
                }
            ],
        },
    }


def role_id(function: str) -> str:
    return f"{FUNCTIONS[function]}Role"


def api_throttling(stage: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template parameters (per-stage defaults) and the stage's method settings that use them."""
    defaults = STAGE_THROTTLING.get(stage, DEFAULT_THROTTLING)
    parameters = {
        "ApiThrottlingRateLimit": {
            "Type": "Number",
            "Default": defaults.rate_limit,
            "MinValue": 1,
            "Description": "API Gateway stage: steady-state requests per second across all clients.",
        },
        "ApiThrottlingBurstLimit": {
            "Type": "Number",
            "Default": defaults.burst_limit,
            "MinValue": 1,
            "Description": "API Gateway stage: requests allowed in a burst above the steady rate.",
        },
    }
    method_settings = {
        "ResourcePath": "/*",
        "HttpMethod": "*",
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
    }
    return parameters, method_settings


CURSOR_SECRET = "CursorSecret"
# API Gateway answers these itself (unknown path, throttling, a timeout...): the native error envelope,
# fixed messages (API Gateway's own message for an unknown path quotes the request's Authorization header).
GATEWAY_ERRORS = {
    "MISSING_AUTHENTICATION_TOKEN": ("404", "not_found", "No resource exists at this path."),
    "RESOURCE_NOT_FOUND": ("404", "not_found", "No resource exists at this path."),
    "THROTTLED": ("429", "rate_limited", "Too many requests at once; retry after a second."),
    "QUOTA_EXCEEDED": ("429", "rate_limited", "Too many requests; retry later."),
    "REQUEST_TOO_LARGE": ("413", "payload_too_large", "The request body is too large."),
    "INTEGRATION_TIMEOUT": ("504", "service_unavailable", "The service did not answer in time; retry."),
    "DEFAULT_4XX": (None, "invalid_request", "The request was refused before it reached the service."),
    "DEFAULT_5XX": (None, "service_unavailable", "The service is temporarily unavailable; retry."),
}


def cursor_secret_name(stage: str) -> str:
    return f"{APP_NAME}-{stage}-cursor-secret"


def cursor_secret_arn(stage: str) -> tuple[str, str]:
    """The secret as a (service, resource) pair; Secrets Manager appends six random characters to the name."""
    return ("secretsmanager", f"secret:{cursor_secret_name(stage)}-??????")


def secrets_and_gateway_responses(stage: str, resources: dict[str, Any]) -> None:
    """The cursor secret (generated at deploy, named to every function, read by the API handler only) and
    API Gateway's own error answers in the native envelope."""
    resources[CURSOR_SECRET] = {
        "Type": "AWS::SecretsManager::Secret",
        "DeletionPolicy": "Delete",
        "UpdateReplacePolicy": "Delete",
        "Properties": {
            "Name": cursor_secret_name(stage),
            "Description": "Encrypts and authenticates the usage API's page cursors (read once per container).",
            "GenerateSecretString": {"PasswordLength": 64, "ExcludePunctuation": True},
        },
    }
    for logical in FUNCTIONS.values():
        props = resources[logical]["Properties"]
        props["Environment"] = {"Variables": {"METERING_CURSOR_SECRET_ID": {"Ref": CURSOR_SECRET}}}
    responses: dict[str, Any] = {}
    for kind, (status, code, message) in GATEWAY_ERRORS.items():
        body = json.dumps({"error": {"code": code, "message": message, "request_id": "$context.requestId"}})
        headers = {"Content-Type": "'application/json'"}  # API Gateway adds x-amzn-RequestId itself
        if kind == "THROTTLED":
            headers["Retry-After"] = "'1'"
        response: dict[str, Any] = {
            "ResponseParameters": {"Headers": headers},
            "ResponseTemplates": {"application/json": body},
        }
        if status is not None:
            response["StatusCode"] = status
        responses[kind] = response
    resources[API]["Properties"]["GatewayResponses"] = responses


def merge_template(stage: str) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    for logical, spec in TABLES.items():
        resources[logical_id("Table", logical)] = table_resource(spec, resource_name(spec.base_name, stage))
    for logical, queue in QUEUES.items():
        resources[logical_id("Queue", logical)] = queue_resource(queue, resource_name(queue.base_name, stage))
    outputs: dict[str, Any] = {}
    for function, function_grants in grants(stage).items():
        role = role_id(function)
        resources[role] = role_resource(stage, function, function_grants)
        # Chalice writes the role as the config's iam_role_arn (a string): this replaces it.
        resources[FUNCTIONS[function]] = {
            "Properties": {"FunctionName": function_name(stage, function), "Role": {"Fn::GetAtt": [role, "Arn"]}}
        }
        outputs[f"{role}Arn"] = {"Value": {"Fn::GetAtt": [role, "Arn"]}}
    # Chalice names the queue by ARN (Fn::Sub); merging a Fn::GetAtt into that dict would make it
    # invalid, so the queue's creation order comes from DependsOn instead.
    resources[AGGREGATOR]["DependsOn"] = [logical_id("Queue", "usage")]
    resources[AGGREGATOR]["Properties"].update(
        Timeout=60,
        MemorySize=512,
        Events={AGGREGATOR_EVENT: {"Properties": {"FunctionResponseTypes": ["ReportBatchItemFailures"]}}},
    )
    parameters, method_settings = api_throttling(stage)
    resources[API] = {"Properties": {"MethodSettings": [method_settings]}}
    secrets_and_gateway_responses(stage, resources)
    return {"Parameters": parameters, "Resources": resources, "Outputs": outputs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args(argv)
    json.dump(merge_template(args.stage), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
