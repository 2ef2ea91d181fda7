"""The CloudFormation merge template for `chalice package`, built from the one schema.

Chalice writes the functions, the API, the schedules and the SQS event source;
this adds what it cannot: the tables (keys, indexes, TTL, point-in-time
recovery, on-demand billing), the usage queue with its dead-letter queue and
redrive policy, `ReportBatchItemFailures` on the aggregator's event source, one
IAM role per function granting only what that function calls on each named
table, index, queue and its own log group (no `*` resource; writes to the
events table other than storing events are limited to pending records), and
API Gateway stage throttling (template parameters with per-stage defaults), and
operations (docs/operations.md): CloudWatch alarms sent to an SNS topic whose
subscription is a parameter, a log group with retention per function, a
CloudWatch dashboard, X-Ray tracing as a parameter, and the aggregator's
reserved concurrency.
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

from chalicelib import observability as obs
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

# The attributes of a stored event a correction may write (storage/events_repo.py, put_correction): its keys
# (named by the call) and the marks naming its void or adjustments. Never its quantity.
CORRECTION_MARKS = ("pk", "sk", "voided_by", "void_slot", "adjusted_by")

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
    attributes: tuple[str, ...] = ()  # when set, the only attributes a call may name (dynamodb:Attributes)


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
            # A void or an adjustment marks the event it corrects (in the transaction that stores it): only
            # the mark attributes, never the quantity or anything else of a stored event.
            Grant("MarkCorrectedEvents", dynamodb("UpdateItem"), (table("events"),), attributes=CORRECTION_MARKS),
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
    if grant.attributes:
        # Every attribute the call names must be one of these (the keys and a correction's marks).
        body["Condition"] = {"ForAllValues:StringEquals": {"dynamodb:Attributes": list(grant.attributes)}}
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


# -- operations: alarms, their topic, log retention, a dashboard, tracing, aggregator concurrency ------------


@dataclass(frozen=True)
class StageOperations:
    """Per-stage defaults of the operations parameters (a deploy overrides them with --parameter-overrides)."""

    log_retention_days: int
    tracing: bool
    # 0: no reservation. A new AWS account's concurrency quota can be 10, where any reservation fails,
    # so dev reserves none; docs/operations.md says why prod reserves 10.
    aggregator_concurrency: int


STAGE_OPERATIONS = {"dev": StageOperations(14, False, 0), "prod": StageOperations(90, True, 10)}
DEFAULT_OPERATIONS = STAGE_OPERATIONS["dev"]
# The values CloudWatch Logs accepts for RetentionInDays.
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
ALARM_PROTOCOLS = ("email", "email-json", "https", "http", "sms", "sqs", "lambda")
ALARM_TOPIC = "AlarmTopic"
DASHBOARD = "OperationsDashboard"
API_STAGE = "api"  # .chalice/config.json: api_gateway_stage
TRACING_ON = "TracingOn"
HAS_SUBSCRIPTION = "HasAlarmSubscription"
CONCURRENCY_RESERVED = "AggregatorConcurrencyReserved"
XRAY_ACTIONS = ("xray:PutTraceSegments", "xray:PutTelemetryRecords")
# The oldest usage message may wait this long before an operator hears of it. Normal lag is seconds; a
# failing message comes back after the visibility timeout (360 s), so one failure alone stays under it.
QUEUE_AGE_ALARM_SECONDS = 900
# The API's 5xx share (percent) over 5 minutes that alarms, once at least API_5XX_MIN_REQUESTS came in.
API_5XX_PERCENT = 5
API_5XX_MIN_REQUESTS = 20


def api_name(stage: str) -> str:
    """The REST API's name: its CloudWatch metrics are keyed by it, so each stage has its own."""
    return f"{APP_NAME}-{stage}"


def log_group_id(function: str) -> str:
    return f"{FUNCTIONS[function]}LogGroup"


def operations_parameters(stage: str) -> dict[str, Any]:
    defaults = STAGE_OPERATIONS.get(stage, DEFAULT_OPERATIONS)
    return {
        "AlarmSubscriptionEndpoint": {
            "Type": "String",
            "Default": "",
            "Description": "Where alarms are sent (an email address, an HTTPS URL...); empty: the topic only.",
        },
        "AlarmSubscriptionProtocol": {
            "Type": "String",
            "Default": "email",
            "AllowedValues": list(ALARM_PROTOCOLS),
            "Description": "The SNS protocol of AlarmSubscriptionEndpoint.",
        },
        "LogRetentionDays": {
            "Type": "Number",
            "Default": str(defaults.log_retention_days),
            "AllowedValues": [str(days) for days in LOG_RETENTION_DAYS],
            "Description": "How long every function's log group keeps its logs.",
        },
        "TracingEnabled": {
            "Type": "String",
            "Default": "true" if defaults.tracing else "false",
            "AllowedValues": ["true", "false"],
            "Description": "X-Ray tracing of the functions and the API stage.",
        },
        "AggregatorReservedConcurrency": {
            "Type": "Number",
            "Default": defaults.aggregator_concurrency,
            "MinValue": 0,
            "MaxValue": 1000,
            "Description": "Concurrent aggregator invocations reserved and allowed (0: no reservation, else at "
            "least 2); docs/operations.md explains the choice.",
        },
    }


def operations_conditions() -> dict[str, Any]:
    return {
        TRACING_ON: {"Fn::Equals": [{"Ref": "TracingEnabled"}, "true"]},
        HAS_SUBSCRIPTION: {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmSubscriptionEndpoint"}, ""]}]},
        CONCURRENCY_RESERVED: {"Fn::Not": [{"Fn::Equals": [{"Ref": "AggregatorReservedConcurrency"}, "0"]}]},
    }


def operations_rules() -> dict[str, Any]:
    """What the parameters cannot say alone: an SQS event source's maximum concurrency is at least 2."""
    return {
        "AggregatorConcurrencyIsZeroOrAtLeastTwo": {
            "Assertions": [
                {
                    "Assert": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AggregatorReservedConcurrency"}, "1"]}]},
                    "AssertDescription": "AggregatorReservedConcurrency is 0 (no reservation) or at least 2.",
                }
            ]
        }
    }


def xray_policy() -> dict[str, Any]:
    """Tracing's only grant, when tracing is on. X-Ray's write actions name no resource, so `*` is the only form."""
    return {
        "Fn::If": [
            TRACING_ON,
            {
                "PolicyName": "XRayTraces",
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{"Sid": "XRay", "Effect": "Allow", "Action": list(XRAY_ACTIONS), "Resource": "*"}],
                },
            },
            {"Ref": "AWS::NoValue"},
        ]
    }


def metric(namespace: str, name: str, dimensions: dict[str, Any], stat: str, period: int) -> dict[str, Any]:
    return {
        "Namespace": namespace,
        "MetricName": name,
        "Dimensions": [{"Name": key, "Value": value} for key, value in dimensions.items()],
        "Statistic": stat,
        "Period": period,
    }


def alarm(description: str, watched: dict[str, Any], threshold: float, periods: int = 1) -> dict[str, Any]:
    """An alarm on one metric above a threshold; missing data (no traffic) is not a breach."""
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": description,
            **watched,
            "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": threshold,
            "EvaluationPeriods": periods,
            "DatapointsToAlarm": periods,
            "TreatMissingData": "notBreaching",
            "AlarmActions": [{"Ref": ALARM_TOPIC}],
            "OKActions": [{"Ref": ALARM_TOPIC}],
        },
    }


def alarms(stage: str) -> dict[str, Any]:
    """The alarms an operator needs: each on a metric the code emits or an AWS metric of a resource here."""
    usage_queue = resource_name(QUEUES["usage"].base_name, stage)
    dead_letters = resource_name(QUEUES["usage_dlq"].base_name, stage)
    aggregator = {"FunctionName": function_name(stage, "aggregate_usage")}
    api = {"ApiName": api_name(stage), "Stage": API_STAGE}

    def api_metric(key: str, name: str) -> dict[str, Any]:
        return {
            "Id": key,
            "ReturnData": False,
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/ApiGateway",
                    "MetricName": name,
                    "Dimensions": [{"Name": k, "Value": v} for k, v in api.items()],
                },
                "Period": 300,
                "Stat": "Sum",
            },
        }

    return {
        "DeadLetterQueueAlarm": alarm(
            "Messages wait in the dead-letter queue: a batch or work item failed 5 times (the message says why). "
            "Fix the cause and redrive it (docs/operations.md).",
            metric("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": dead_letters}, "Maximum", 300),
            0,
        ),
        "UsageQueueAgeAlarm": alarm(
            f"The oldest usage message is over {QUEUE_AGE_ALARM_SECONDS} s old: the aggregator is failing, "
            "throttled or too few for the load; summaries fall behind.",
            metric("AWS/SQS", "ApproximateAgeOfOldestMessage", {"QueueName": usage_queue}, "Maximum", 60),
            QUEUE_AGE_ALARM_SECONDS,
            periods=3,
        ),
        "AggregatorErrorsAlarm": alarm(
            "The aggregator raised (its whole batch comes back): see its log group.",
            metric("AWS/Lambda", "Errors", aggregator, "Sum", 300),
            0,
        ),
        "AggregatorThrottlesAlarm": alarm(
            "The aggregator was throttled: its reserved concurrency, or the account's, is exhausted.",
            metric("AWS/Lambda", "Throttles", aggregator, "Sum", 300),
            0,
        ),
        "Api5xxAlarm": alarm(
            f"Over {API_5XX_PERCENT}% of API requests answered 5xx in 5 minutes (at least "
            f"{API_5XX_MIN_REQUESTS} requests).",
            {
                "Metrics": [
                    api_metric("errors", "5XXError"),
                    api_metric("requests", "Count"),
                    {
                        "Id": "percent",
                        "Label": "5xx share (%)",
                        "Expression": f"IF(requests >= {API_5XX_MIN_REQUESTS}, 100 * errors / requests, 0)",
                        "ReturnData": True,
                    },
                ]
            },
            API_5XX_PERCENT,
        ),
        "ReconcileDriftAlarm": alarm(
            "Reconciliation found rollups that differed from the raw events and repaired them: summaries were "
            "wrong until then. The aggregator's `aggregated` log lines count them (rollups_repaired).",
            metric(obs.NAMESPACE, obs.ROLLUPS_REPAIRED, {"service": obs.SERVICE}, "Sum", 600),
            0,
        ),
    }


def dashboard_body(stage: str) -> dict[str, Any]:
    """Ingest rate, queue depth, aggregation lag and errors, on one page (`${AWS::Region}` left to Fn::Sub)."""
    ns, service = obs.NAMESPACE, ("service", obs.SERVICE)
    usage_queue = ("QueueName", resource_name(QUEUES["usage"].base_name, stage))
    dead_letters = ("QueueName", resource_name(QUEUES["usage_dlq"].base_name, stage))
    api = ("ApiName", api_name(stage), "Stage", API_STAGE)
    region = "${AWS::Region}"

    def own(name: str, **options: Any) -> list[Any]:
        return [ns, name, *service, *([options] if options else [])]

    def widget(title: str, metrics: list[Any], x: int, y: int, stat: str = "Sum", **extra: Any) -> dict[str, Any]:
        props = {"title": title, "region": region, "view": "timeSeries", "stat": stat, "period": 60}
        return {
            "type": "metric",
            "x": x,
            "y": y,
            "width": 12,
            "height": 6,
            "properties": {**props, "metrics": metrics, **extra},
        }

    routes = ",".join(("service", *obs.METRICS[obs.REQUESTS].breakdown))
    by_route = f"SEARCH('{{{ns},{routes}}} MetricName=\"{obs.REQUESTS}\"', 'Sum', 60)"
    functions = [["AWS/Lambda", "Errors", "FunctionName", function_name(stage, f)] for f in FUNCTIONS]
    return {
        "widgets": [
            widget(
                "Ingest rate (events per minute)",
                [
                    own(obs.EVENTS_ACCEPTED),
                    own(obs.EVENTS_DUPLICATE),
                    own(obs.EVENTS_REJECTED),
                    own(obs.EVENTS_ROLLED_UP),
                ],
                0,
                0,
            ),
            widget(
                "Requests by endpoint, dialect and outcome",
                [[{"expression": by_route, "id": "routes", "label": ""}]],
                12,
                0,
            ),
            widget(
                "Queue depth (messages)",
                [
                    ["AWS/SQS", "ApproximateNumberOfMessagesVisible", *usage_queue, {"label": "usage: waiting"}],
                    ["AWS/SQS", "ApproximateNumberOfMessagesNotVisible", *usage_queue, {"label": "usage: in flight"}],
                    ["AWS/SQS", "ApproximateNumberOfMessagesVisible", *dead_letters, {"label": "dead-letter queue"}],
                ],
                0,
                6,
                stat="Maximum",
            ),
            widget(
                "Aggregation lag",
                [
                    own(obs.AGGREGATION_LAG, stat="Maximum", label="sent to rolled up, max (ms)"),
                    own(obs.AGGREGATION_LAG, stat="p99", label="sent to rolled up, p99 (ms)"),
                    [
                        "AWS/SQS",
                        "ApproximateAgeOfOldestMessage",
                        *usage_queue,
                        {"stat": "Maximum", "yAxis": "right", "label": "oldest waiting (s)"},
                    ],
                ],
                12,
                6,
                stat="Maximum",
            ),
            widget(
                "Errors",
                [
                    *functions,
                    ["AWS/Lambda", "Throttles", "FunctionName", function_name(stage, "aggregate_usage")],
                    ["AWS/ApiGateway", "5XXError", *api],
                    own(obs.ROLLUP_UNITS_POISONED),
                    own(obs.MESSAGES_DEAD_LETTERED),
                ],
                0,
                12,
            ),
            widget(
                "Reconciliation and sweeping",
                [own(obs.ROLLUPS_REPAIRED), own(obs.RECONCILE_ITEMS_PLANNED), own(obs.BATCHES_SWEPT)],
                12,
                12,
            ),
        ]
    }


def operations(stage: str, resources: dict[str, Any], outputs: dict[str, Any]) -> None:
    """Alarms and their topic, log groups with retention, the dashboard, tracing and the aggregator's concurrency."""
    resources[ALARM_TOPIC] = {
        "Type": "AWS::SNS::Topic",
        "Properties": {"TopicName": f"{APP_NAME}-{stage}-alarms", "DisplayName": f"{APP_NAME} {stage} alarms"},
    }
    resources["AlarmSubscription"] = {
        "Type": "AWS::SNS::Subscription",
        "Condition": HAS_SUBSCRIPTION,
        "Properties": {
            "TopicArn": {"Ref": ALARM_TOPIC},
            "Protocol": {"Ref": "AlarmSubscriptionProtocol"},
            "Endpoint": {"Ref": "AlarmSubscriptionEndpoint"},
        },
    }
    resources.update(alarms(stage))
    for function, logical in FUNCTIONS.items():
        resources[log_group_id(function)] = {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": f"/aws/lambda/{function_name(stage, function)}",
                "RetentionInDays": {"Ref": "LogRetentionDays"},
            },
        }
        function_resource = resources[logical]
        # The group exists before the function can write: otherwise Lambda creates it, with no retention.
        function_resource["DependsOn"] = [*function_resource.get("DependsOn", []), log_group_id(function)]
        function_resource["Properties"]["Tracing"] = {"Fn::If": [TRACING_ON, "Active", "PassThrough"]}
        resources[role_id(function)]["Properties"]["Policies"].append(xray_policy())
    resources[DASHBOARD] = {
        "Type": "AWS::CloudWatch::Dashboard",
        "Properties": {
            "DashboardName": f"{APP_NAME}-{stage}",
            "DashboardBody": {"Fn::Sub": json.dumps(dashboard_body(stage))},
        },
    }
    api = resources[API]["Properties"]
    api["Name"] = api_name(stage)
    api["DefinitionBody"] = {"info": {"title": api_name(stage)}}  # merged into Chalice's: the same name
    api["TracingEnabled"] = {"Fn::If": [TRACING_ON, True, False]}
    aggregator = resources[AGGREGATOR]["Properties"]
    reserved = {"Ref": "AggregatorReservedConcurrency"}
    aggregator["ReservedConcurrentExecutions"] = {"Fn::If": [CONCURRENCY_RESERVED, reserved, {"Ref": "AWS::NoValue"}]}
    # The event source never invokes past the reservation, so a burst waits in the queue instead of being
    # throttled (a throttled message counts a receive and, at 5, would be dead-lettered).
    aggregator["Events"][AGGREGATOR_EVENT]["Properties"]["ScalingConfig"] = {
        "Fn::If": [CONCURRENCY_RESERVED, {"MaximumConcurrency": reserved}, {"Ref": "AWS::NoValue"}]
    }
    outputs["AlarmTopicArn"] = {"Value": {"Ref": ALARM_TOPIC}}
    outputs["DashboardName"] = {"Value": {"Ref": DASHBOARD}}


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
    operations(stage, resources, outputs)
    return {
        "Parameters": {**parameters, **operations_parameters(stage)},
        "Conditions": operations_conditions(),
        "Rules": operations_rules(),
        "Resources": resources,
        "Outputs": outputs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args(argv)
    json.dump(merge_template(args.stage), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
