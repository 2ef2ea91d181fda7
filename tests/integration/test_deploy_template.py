"""The packaged CloudFormation template: what `chalice package --merge-template` really produces.

Chalice's merge replaces lists and merges dicts deeply, so these tests read the
packaged result, not the merge input.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import boto3
import pytest

from chalicelib import observability
from chalicelib.container import Container
from chalicelib.local.runtime import make_context, scheduled_event
from chalicelib.storage import clients
from chalicelib.storage.keys import rollup_pk
from chalicelib.storage.schema import QUEUES, TABLES, resource_name
from tests.conftest import auth
from tests.e2e.flows import FailingQueue, drain
from tools.deploy_template import (
    CORRECTION_MARKS,
    DEFAULT_THROTTLING,
    FUNCTIONS,
    PENDING_PREFIX,
    SQS_EVENT_SOURCE_ACTIONS,
    STAGE_OPERATIONS,
    STAGE_THROTTLING,
    logical_id,
    merge_template,
    role_id,
    xray_policy,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("package")
    merge = out / "merge.json"
    merge.write_text(
        subprocess.run(
            [sys.executable, "-m", "tools.deploy_template", "--stage", "prod"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "METERING_STAGE": "prod"}
    env["METERING_USAGE_QUEUE"] = "metering-usage-prod"
    chalice = str(Path(sys.executable).parent / "chalice")
    subprocess.run(
        [chalice, "package", "--stage", "prod", "--merge-template", str(merge), str(out / "pkg")],
        cwd=ROOT,
        check=True,
        env=env,
        capture_output=True,
    )
    packaged: dict[str, Any] = json.loads((out / "pkg" / "sam.json").read_text())
    return packaged


def resources_of(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_tables_in_the_template_are_the_ones_the_code_defines(template: dict[str, Any]) -> None:
    tables = resources_of(template, "AWS::DynamoDB::Table")
    assert set(tables) == {logical_id("Table", name) for name in TABLES}
    for name, spec in TABLES.items():
        props = tables[logical_id("Table", name)]["Properties"]
        expected = spec.create_table_kwargs(resource_name(spec.base_name, "prod"))
        assert props["TableName"] == expected["TableName"]
        assert props["KeySchema"] == expected["KeySchema"]
        assert props["AttributeDefinitions"] == expected["AttributeDefinitions"]
        assert props.get("GlobalSecondaryIndexes") == expected.get("GlobalSecondaryIndexes")
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        if spec.ttl_attribute:
            assert props["TimeToLiveSpecification"] == {"AttributeName": spec.ttl_attribute, "Enabled": True}
        else:
            assert "TimeToLiveSpecification" not in props


def test_usage_queue_redrives_to_its_dead_letter_queue(template: dict[str, Any]) -> None:
    queues = resources_of(template, "AWS::SQS::Queue")
    assert set(queues) == {logical_id("Queue", name) for name in QUEUES}
    usage = queues[logical_id("Queue", "usage")]["Properties"]
    assert usage["QueueName"] == "metering-usage-prod"
    assert usage["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": [logical_id("Queue", "usage_dlq"), "Arn"]}
    assert usage["RedrivePolicy"]["maxReceiveCount"] == QUEUES["usage"].max_receive_count
    aggregator = template["Resources"]["AggregateUsage"]
    # AWS: the visibility timeout should be at least six times the function timeout.
    assert usage["VisibilityTimeout"] >= 6 * aggregator["Properties"]["Timeout"]


def test_aggregator_event_source_reports_partial_batch_failures(template: dict[str, Any]) -> None:
    aggregator = template["Resources"]["AggregateUsage"]
    event = aggregator["Properties"]["Events"]["AggregateUsageSqsEventSource"]
    assert event["Type"] == "SQS"
    props = event["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["Queue"] == {
        "Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:metering-usage-prod"
    }
    assert props["BatchSize"] == 100
    assert "QueueUsage" in aggregator["DependsOn"]


def test_schedules_are_packaged(template: dict[str, Any]) -> None:
    schedules = {
        name: event["Properties"]["Schedule"]
        for name, res in resources_of(template, "AWS::Serverless::Function").items()
        for event in res["Properties"].get("Events", {}).values()
        if event["Type"] == "Schedule"
    }
    assert schedules == {"SweepPending": "rate(2 minutes)", "ReconcileRollups": "rate(10 minutes)"}


FUNCTION_ROLES = {name: role_id(name) for name in FUNCTIONS}
ACCOUNT_ARN = "arn:aws:{service}:us-east-1:123456789012:{resource}"
PENDING_KEYS = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [PENDING_PREFIX + "*"]}}
MARK_ATTRIBUTES = {"ForAllValues:StringEquals": {"dynamodb:Attributes": list(CORRECTION_MARKS)}}


def render(pattern: dict[str, str] | str) -> str:
    """A policy resource as the ARN it means in the test account and region."""
    text = pattern["Fn::Sub"] if isinstance(pattern, dict) else pattern
    for name, value in (("Partition", "aws"), ("Region", "us-east-1"), ("AccountId", "123456789012")):
        text = text.replace("${AWS::" + name + "}", value)
    return text


def role_statements(template: dict[str, Any], function: str) -> list[dict[str, Any]]:
    """The statements of a function's least-privilege policy (tracing's policy aside, tested on its own)."""
    policies = template["Resources"][FUNCTION_ROLES[function]]["Properties"]["Policies"]
    assert len(policies) == 2 and policies[1] == xray_policy()  # the second exists only when tracing is on
    statements: list[dict[str, Any]] = policies[0]["PolicyDocument"]["Statement"]
    return statements


def test_each_function_runs_as_its_own_role(template: dict[str, Any]) -> None:
    functions = resources_of(template, "AWS::Serverless::Function")
    assert set(functions) == set(FUNCTIONS.values())
    assert set(resources_of(template, "AWS::IAM::Role")) == set(FUNCTION_ROLES.values())
    for name, logical in FUNCTIONS.items():
        props = functions[logical]["Properties"]
        assert props["Role"] == {"Fn::GetAtt": [FUNCTION_ROLES[name], "Arn"]}
        assert props["FunctionName"] == f"usage-metering-prod-{name}"
        trust = template["Resources"][FUNCTION_ROLES[name]]["Properties"]["AssumeRolePolicyDocument"]
        assert trust["Statement"] == [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ]


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_policy_names_every_resource_and_no_wildcard_resource(template: dict[str, Any], function: str) -> None:
    own_log_group = f"arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/usage-metering-prod-{function}"
    for statement in role_statements(template, function):
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in statement["Action"])
        resources = statement["Resource"]
        assert isinstance(resources, list) and resources
        for resource in map(render, resources):
            # the only wildcard: the log streams Lambda creates in the function's own log group
            assert "*" not in resource or resource == own_log_group + ":log-stream:*"
            if resource.startswith("arn:aws:logs:"):
                assert resource.startswith(own_log_group)
        assert statement.get("Condition", PENDING_KEYS) in (PENDING_KEYS, MARK_ATTRIBUTES)


def leading_keys_match(patterns: list[str], keys: tuple[str, ...] | None) -> bool:
    """IAM's ForAllValues:StringLike on dynamodb:LeadingKeys; unknown keys never match."""
    if not keys:
        return False
    regexes = [
        re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p)) for p in patterns
    ]
    return all(any(r.fullmatch(k) for r in regexes) for k in keys)


def allowed(statements: list[dict[str, Any]], call: Call) -> bool:
    for statement in statements:
        if f"{call.service}:{call.action}" not in statement["Action"]:
            continue
        if statement.get("Condition") == MARK_ATTRIBUTES:
            # IAM's ForAllValues:StringEquals on dynamodb:Attributes; a call whose attributes are unknown never matches
            if call.attributes is None or not set(call.attributes) <= set(CORRECTION_MARKS):
                continue
        elif "Condition" in statement:
            assert statement["Condition"] == PENDING_KEYS, "a condition this test cannot evaluate"
            if not leading_keys_match(
                statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"], call.keys
            ):
                continue
        for pattern in map(render, statement["Resource"]):
            if pattern == call.resource or (pattern.endswith("*") and call.resource.startswith(pattern[:-1])):
                return True
    return False


class Call(NamedTuple):
    function: str | None  # the Lambda function whose code made the call; None outside every function
    service: str
    action: str  # the IAM action, without the service prefix
    resource: str
    keys: tuple[str, ...] | None  # partition keys of the items touched; None when not known (queries, scans)
    attributes: tuple[str, ...] | None = None  # attributes an update names (keys included); None when not known


def named_attributes(update: dict[str, Any]) -> tuple[str, ...]:
    """Every top-level attribute an update names: its keys, and those of its update and condition expressions."""
    names = update.get("ExpressionAttributeNames", {})
    found = set(update["Key"])
    for expression in (update.get("UpdateExpression", ""), update.get("ConditionExpression", "")):
        for token in re.findall(r"[#:]?[A-Za-z_][A-Za-z0-9_]*", expression):
            if token.startswith(":"):  # a value
                continue
            if token.startswith("#"):
                found.add(names[token])
            elif token.upper() not in {"SET", "ADD", "REMOVE", "DELETE", "AND", "OR", "NOT"} and not re.fullmatch(
                r"attribute_(not_)?exists|size|begins_with|contains|attribute_type|if_not_exists|list_append", token
            ):
                found.add(token)
    return tuple(sorted(found))


def partition_keys(entries: list[dict[str, Any]]) -> tuple[str, ...] | None:
    keys = tuple(entry["pk"]["S"] for entry in entries if "pk" in entry)
    return keys if len(keys) == len(entries) else None


class Recorder:
    """Every AWS call the code makes once enabled, with the function making it (a botocore hook)."""

    def __init__(self) -> None:
        self.enabled = False
        self.session: Any = None
        self.function: str | None = None
        self.calls: list[Call] = []

    def switch(self, on: bool) -> None:
        """Record or not; the first time, hook the current default session and make clients anew.

        moto replaces boto3's default session when it starts, and a client copies its
        session's hooks when it is made, so this must follow the emulator's start.
        """
        session = boto3._get_default_session()
        if on and self.session is not session:
            session.events.register("before-parameter-build", self)
            self.session = session
            clients.reset_clients()
        self.enabled = on

    def add(
        self,
        service: str,
        action: str,
        resource: str,
        keys: tuple[str, ...] | None = None,
        attributes: tuple[str, ...] | None = None,
    ) -> None:
        self.calls.append(
            Call(
                self.function, service, action, ACCOUNT_ARN.format(service=service, resource=resource), keys, attributes
            )
        )

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        if not self.enabled:
            return
        service = model.service_model.endpoint_prefix
        name = model.name
        if service == "dynamodb":
            if name == "TransactWriteItems":
                kinds = {
                    "Put": "PutItem",
                    "Update": "UpdateItem",
                    "Delete": "DeleteItem",
                    "ConditionCheck": "ConditionCheckItem",
                }
                for entry in params["TransactItems"]:
                    ((kind, body),) = entry.items()
                    self.add(
                        "dynamodb",
                        kinds[kind],
                        f"table/{body['TableName']}",
                        partition_keys([body.get("Item") or body["Key"]]),
                        named_attributes(body) if kind == "Update" else None,
                    )
            elif name == "BatchWriteItem":
                for table, requests in params["RequestItems"].items():
                    items = [
                        r["PutRequest"]["Item"] if "PutRequest" in r else r["DeleteRequest"]["Key"] for r in requests
                    ]
                    self.add("dynamodb", name, f"table/{table}", partition_keys(items))
            elif name == "BatchGetItem":
                for table, request in params["RequestItems"].items():
                    self.add("dynamodb", name, f"table/{table}", partition_keys(request["Keys"]))
            else:
                table = f"table/{params['TableName']}"
                if "IndexName" in params:
                    table = f"{table}/index/{params['IndexName']}"
                item = params.get("Item") or params.get("Key")
                self.add("dynamodb", name, table, partition_keys([item]) if item else None)
        elif service == "sqs":
            url = params.get("QueueUrl") or params.get("QueueName", "")
            self.add("sqs", name, url.rsplit("/", 1)[-1])


@contextmanager
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A recorder that knows which function runs: the API handler (the app itself) or an event handler."""
    from app import app

    hook = Recorder()

    def running(function: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            outer, hook.function = hook.function, function
            try:
                return handler(*args, **kwargs)
            finally:
                hook.function = outer

        return run

    monkeypatch.setattr(type(app), "__call__", running("api_handler", type(app).__call__))
    for name in FUNCTIONS:
        if name != "api_handler":
            monkeypatch.setitem(app.handler_map, name, running(name, app.handler_map[name]))
    try:
        yield hook
    finally:
        if hook.session is not None:
            hook.session.events.unregister("before-parameter-build", hook)


@pytest.fixture(scope="module")
def flow_calls() -> list[Call]:
    """Every AWS call of a full flow through the real handlers with the prod stage's names."""
    from tests.e2e.flows import run_full_flow

    with pytest.MonkeyPatch.context() as monkeypatch, recording(monkeypatch) as hook:
        monkeypatch.setenv("METERING_STAGE", "prod")
        for env in ("EVENTS_TABLE", "ROLLUPS_TABLE", "CATALOG_TABLE", "USAGE_QUEUE", "USAGE_DLQ"):
            monkeypatch.delenv(f"METERING_{env}", raising=False)
        seen = run_full_flow(hook.switch)
    assert seen["sweep"]["requeued"] == 1 and seen["drained_after_sweep"] == 1
    assert hook.calls, "the flow made no AWS calls"
    # Outside every function, the flow only plays Lambda's SQS event source, which polls with the aggregator's role.
    outside = {(c.service, c.action, c.resource) for c in hook.calls if c.function is None}
    assert outside <= {("sqs", a.split(":")[1], queue_arn("usage")) for a in SQS_EVENT_SOURCE_ACTIONS}
    return [c._replace(function=c.function or "aggregate_usage") for c in hook.calls]


def queue_arn(name: str) -> str:
    return ACCOUNT_ARN.format(service="sqs", resource=resource_name(QUEUES[name].base_name, "prod"))


def table_arn(name: str) -> str:
    return ACCOUNT_ARN.format(service="dynamodb", resource=f"table/{resource_name(TABLES[name].base_name, 'prod')}")


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_call_a_function_makes_is_allowed_by_its_own_role(
    template: dict[str, Any], flow_calls: list[Call], function: str
) -> None:
    calls = {c for c in flow_calls if c.function == function}
    assert calls, f"the flow never ran {function}"
    statements = role_statements(template, function)
    assert sorted(c for c in calls if not allowed(statements, c)) == []


# Grants the full flow cannot exercise, each with the path that needs it.
NOT_IN_FLOW = {
    (
        "api_handler",
        "secretsmanager:GetSecretValue",
        "secret:usage-metering-prod-cursor-secret-??????",
    ): "a deployed API handler reads its cursor secret once per container; the flow runs off Lambda",
    ("api_handler", "dynamodb:GetItem", "table/metering-events-prod"): "re-reading a slot after a write that failed",
    ("aggregate_usage", "sqs:ReceiveMessage", "metering-usage-prod"): "Lambda's event source polls the queue",
    ("aggregate_usage", "sqs:DeleteMessage", "metering-usage-prod"): "Lambda's event source deletes handled messages",
    ("aggregate_usage", "sqs:GetQueueUrl", "metering-usage-dlq-prod"): "a poison message goes to the dead-letter queue",
    ("aggregate_usage", "sqs:SendMessage", "metering-usage-dlq-prod"): "a poison message goes to the dead-letter queue",
    (
        "sweep_pending",
        "sqs:GetQueueUrl",
        "metering-usage-prod",
    ): "in one process the API handler looked the URL up first",
    ("aggregate_usage", "dynamodb:UpdateItem", "table/metering-events-prod"): "marking a dead-lettered batch",
    (
        "aggregate_usage",
        "dynamodb:GetItem",
        "table/metering-events-prod",
    ): "a single event whose message never came (a crash after its write): is its batch the sweeper's?",
    (
        "reconcile_rollups",
        "sqs:GetQueueUrl",
        "metering-usage-prod",
    ): "in one process the API handler looked the URL up first",
}


def granted(template: dict[str, Any], function: str) -> set[tuple[str, str]]:
    """(action, resource ARN) pairs a function's role grants, its logs aside."""
    return {
        (action, render(resource))
        for statement in role_statements(template, function)
        if statement["Sid"] != "Logs"
        for action in statement["Action"]
        for resource in statement["Resource"]
    }


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_grant_is_used_by_its_function(template: dict[str, Any], flow_calls: list[Call], function: str) -> None:
    """Least privilege the other way: nothing is granted that the function's code does not call."""
    used = {(f"{c.service}:{c.action}", c.resource) for c in flow_calls if c.function == function}
    listed = {
        (action, ACCOUNT_ARN.format(service=action.split(":")[0], resource=resource))
        for fn, action, resource in NOT_IN_FLOW
        if fn == function
    }
    grants_of = granted(template, function)
    assert grants_of - used - listed == set()
    assert listed <= grants_of  # the list names only real grants


def test_no_function_can_change_or_delete_a_stored_event(template: dict[str, Any], flow_calls: list[Call]) -> None:
    events = table_arn("events")
    stored = {k for c in flow_calls if c.resource == events and c.action == "PutItem" for k in c.keys or ()}
    event_keys = {k for k in stored if not k.startswith(PENDING_PREFIX)}
    pending_keys = stored - event_keys
    assert event_keys and pending_keys
    for function in FUNCTIONS:
        statements = role_statements(template, function)
        for action in ("DeleteItem", "UpdateItem", "BatchWriteItem"):
            for key in event_keys:
                assert not allowed(statements, Call(function, "dynamodb", action, events, (key,)))
                # a correction's mark is the only update of an event: never with its quantity (or anything else)
                for attribute in ("quantity", "meter", "period_date", "service_line_id", "metadata", "kind"):
                    naming = ("pk", "sk", "voided_by", attribute)
                    assert not allowed(statements, Call(function, "dynamodb", action, events, (key,), naming))
            # one event among pending records is refused as a whole
            mixed = (*sorted(pending_keys), *sorted(event_keys))
            assert not allowed(statements, Call(function, "dynamodb", action, events, mixed))


def test_only_the_aggregator_consumes_the_queue_and_feeds_the_dead_letter_queue(template: dict[str, Any]) -> None:
    for function in FUNCTIONS:
        statements = role_statements(template, function)
        consumes = {
            allowed(statements, Call(function, "sqs", action.split(":")[1], queue_arn("usage"), None))
            for action in SQS_EVENT_SOURCE_ACTIONS
        }
        dead_letters = allowed(statements, Call(function, "sqs", "SendMessage", queue_arn("usage_dlq"), None))
        assert consumes == {function == "aggregate_usage"}
        assert dead_letters == (function == "aggregate_usage")


def test_the_api_role_reads_no_table_whole_and_writes_no_rollup(template: dict[str, Any]) -> None:
    statements = role_statements(template, "api_handler")
    for table in TABLES:
        assert not allowed(statements, Call("api_handler", "dynamodb", "Scan", table_arn(table), None))
    for action in ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"):
        assert not allowed(statements, Call("api_handler", "dynamodb", action, table_arn("rollups"), ("R#x",)))


def test_api_stage_is_throttled_with_parameters_defaulting_per_stage(template: dict[str, Any]) -> None:
    settings = template["Resources"]["RestAPI"]["Properties"]["MethodSettings"]
    assert settings == [
        {
            "ResourcePath": "/*",
            "HttpMethod": "*",
            "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
            "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
        }
    ]
    params = template["Parameters"]
    prod = STAGE_THROTTLING["prod"]
    assert (params["ApiThrottlingRateLimit"]["Default"], params["ApiThrottlingBurstLimit"]["Default"]) == (
        prod.rate_limit,
        prod.burst_limit,
    )
    for stage, expected in (("dev", STAGE_THROTTLING["dev"]), ("staging", DEFAULT_THROTTLING)):
        merged = merge_template(stage)["Parameters"]
        assert merged["ApiThrottlingRateLimit"]["Default"] == expected.rate_limit
        assert merged["ApiThrottlingBurstLimit"]["Default"] == expected.burst_limit
    assert prod.burst_limit >= prod.rate_limit


# -- operations: alarms, their topic, log retention, the dashboard, tracing, aggregator concurrency ----------

Emitted = set[tuple[str, str, frozenset[tuple[str, str]]]]  # (namespace, metric, dimension set with values)


def emitted_metrics(text: str) -> Emitted:
    """Every (namespace, metric, dimension name=value set) in the embedded-metric documents written."""
    found: Emitted = set()
    for line in text.splitlines():
        if not (line.startswith("{") and '"_aws"' in line):
            continue
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                dims = frozenset((name, document[name]) for name in dimension_set)
                for m in directive["Metrics"]:
                    found.add((directive["Namespace"], m["Name"], dims))
    return found


@pytest.fixture
def emitted(client: Any, container: Container, capsys: pytest.CaptureFixture[str]) -> Emitted:
    """What the code emits through a real flow: ingest in two dialects, an unknown path, aggregation,
    and a reconciliation that finds a rollup drifted behind the pipeline's back and repairs it."""
    from app import app

    headers = auth()
    capsys.readouterr()
    event = {"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": 2, "idempotency_key": "o-1"}
    assert client.http.post("/v1/metering/events", headers=headers, body=json.dumps(event)).status_code == 201
    assert client.http.post("/v1/metering/events", headers=headers, body=json.dumps(event)).status_code == 200
    report = {"value": 2, "customerId": "ORG-26-090500", "meterName": "agent.runs"}
    meter_usage = client.http.post(
        "/v1/meter-usage", headers={**headers, "Idempotency-Key": "o-r1"}, body=json.dumps(report)
    )
    assert meter_usage.status_code == 202
    assert client.http.get("/v1/no-such-thing/here", headers=headers).status_code == 404
    batch = {"events": [{**event, "idempotency_key": "o-2"}, {**event, "meter": "no.such.meter"}]}
    assert client.http.post("/v1/metering/events/batch", headers=headers, body=json.dumps(batch)).status_code == 200
    queue = container.queue
    container.queue = FailingQueue()  # type: ignore[assignment]
    lost = {**event, "idempotency_key": "o-lost"}  # stored, its queue message lost: the sweeper sends it again
    assert client.http.post("/v1/metering/events", headers=headers, body=json.dumps(lost)).status_code == 201
    container.queue = queue
    drain(app, container, lambda on: None)
    today = container.clock().date().isoformat()
    start = container.clock()
    container.clock = lambda: start + timedelta(minutes=10)
    app.handler_map["sweep_pending"](scheduled_event("sweep", "us-east-1"), make_context("s"))
    drain(app, container, lambda on: None)
    clients.dynamodb().update_item(  # drift: a rollup changed behind the pipeline's back
        TableName=container.settings.rollups_table,
        Key={"pk": {"S": rollup_pk("ORG-26-090500", "LIN-26-084729")}, "sk": {"S": f"D#{today}#talent.hours"}},
        UpdateExpression="ADD quantity :q",
        ExpressionAttributeValues={":q": {"N": "5"}},
        ConditionExpression="attribute_exists(pk)",
    )
    container.clock = lambda: start + timedelta(minutes=20)  # past the reconciler's quiet period
    app.handler_map["reconcile_rollups"](scheduled_event("reconcile", "us-east-1"), make_context("r"))
    drain(app, container, lambda on: None)
    return emitted_metrics(capsys.readouterr().out) | emitted_only_on_failures()


def emitted_only_on_failures() -> Emitted:
    """Metrics of failures a flow cannot cause without breaking DynamoDB (a poisoned rollup, a dead-lettered
    message): each is declared in observability.METRICS and passed to `observability.count` by the workers,
    which run outside any route, so they carry the `service` dimension set alone."""
    source = (ROOT / "chalicelib" / "workers" / "pipeline.py").read_text()
    found: Emitted = set()
    for constant in ("ROLLUP_UNITS_POISONED", "MESSAGES_DEAD_LETTERED"):
        assert f"observability.count(observability.{constant}," in source, constant
        name = getattr(observability, constant)
        assert observability.METRICS[name].dimension_sets == (("service",),)
        found.add((observability.NAMESPACE, name, frozenset({("service", observability.SERVICE)})))
    return found


def metric_stats(alarm_props: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics an alarm reads: its one metric, or each MetricStat of its metric math."""
    if "MetricName" in alarm_props:
        return [
            {
                "Namespace": alarm_props["Namespace"],
                "MetricName": alarm_props["MetricName"],
                "Dimensions": alarm_props.get("Dimensions", []),
            }
        ]
    return [q["MetricStat"]["Metric"] for q in alarm_props["Metrics"] if "MetricStat" in q]


def aws_resource_dimensions(template: dict[str, Any]) -> dict[str, set[str]]:
    """The AWS metric dimensions that name a resource of this template, and the names they may take."""
    resources = template["Resources"]
    api = resources["RestAPI"]["Properties"]
    return {
        "QueueName": {r["Properties"]["QueueName"] for r in resources_of(template, "AWS::SQS::Queue").values()},
        "FunctionName": {
            r["Properties"]["FunctionName"] for r in resources_of(template, "AWS::Serverless::Function").values()
        },
        "ApiName": {api["Name"]},
        "Stage": {api["StageName"]},
    }


def check_metric(namespace: str, name: str, dims: dict[str, str], template: dict[str, Any], emitted: Emitted) -> None:
    """A metric an alarm or widget reads is one the code emits (namespace, name, dimensions and their values),
    or an AWS metric of a resource of this template."""
    if namespace == observability.NAMESPACE:
        assert (namespace, name, frozenset(dims.items())) in emitted, (name, dims)
        return
    known = aws_resource_dimensions(template)
    assert namespace in {"AWS/SQS", "AWS/Lambda", "AWS/ApiGateway"}, namespace
    assert dims, f"{namespace} {name} names no resource"
    for key, value in dims.items():
        assert value in known[key], (namespace, name, key, value)


def test_the_code_emits_metrics_by_endpoint_dialect_and_outcome(emitted: Emitted) -> None:
    ns, service = observability.NAMESPACE, ("service", observability.SERVICE)

    def has(name: str, **dims: str) -> bool:
        return (ns, name, frozenset({service, *dims.items()})) in emitted

    native = {"endpoint": "POST /v1/metering/events", "dialect": "native"}
    assert has("EventsAccepted") and has("EventsAccepted", **native) and has("EventsDuplicate", **native)
    assert has("EventsAccepted", endpoint="POST /v1/meter-usage", dialect="meter_api")
    assert has("Requests", **native, outcome="success") and has("RequestLatency", **native)
    assert has("Requests", endpoint="unmatched", dialect="native", outcome="client_error")
    assert has("EventsRejected", **native | {"endpoint": "POST /v1/metering/events/batch"})
    assert has("EventsRolledUp") and has("AggregationLag") and has("RollupsRepaired") and has("BatchesSwept")
    # the endpoint is the route template: no raw path ever becomes a dimension value
    endpoints = {v for _, _, dims in emitted for k, v in dims if k == "endpoint"}
    assert "GET /v1/no-such-thing/here" not in endpoints and all(
        e.split()[0].isupper() or e == "unmatched" for e in endpoints
    )
    for _, name, dims in emitted:  # every metric is declared, with exactly its declared dimension sets
        assert tuple(sorted(k for k, _ in dims)) in {
            tuple(sorted(s)) for s in observability.METRICS[name].dimension_sets
        }


def test_each_alarm_watches_a_metric_the_code_emits_or_a_resource_of_the_template(
    template: dict[str, Any], emitted: Emitted
) -> None:
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    watched = set()
    for alarm in alarms.values():
        for m in metric_stats(alarm["Properties"]):
            dims = {d["Name"]: d["Value"] for d in m["Dimensions"]}
            check_metric(m["Namespace"], m["MetricName"], dims, template, emitted)
            watched.add((m["Namespace"], m["MetricName"], tuple(sorted(dims.items()))))

    def prod(base: str) -> str:
        return resource_name(base, "prod")

    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", (("QueueName", prod("metering-usage-dlq")),)) in watched
    assert ("AWS/SQS", "ApproximateAgeOfOldestMessage", (("QueueName", prod("metering-usage")),)) in watched
    aggregator = (("FunctionName", "usage-metering-prod-aggregate_usage"),)
    assert {("AWS/Lambda", "Errors", aggregator), ("AWS/Lambda", "Throttles", aggregator)} <= watched
    api = (("ApiName", "usage-metering-prod"), ("Stage", "api"))
    assert {("AWS/ApiGateway", "5XXError", api), ("AWS/ApiGateway", "Count", api)} <= watched
    assert ("UsageMetering", "RollupsRepaired", (("service", "usage-metering"),)) in watched
    # the 5xx alarm is a rate: errors over requests, once there are enough requests to mean something
    expression = next(q["Expression"] for q in alarms["Api5xxAlarm"]["Properties"]["Metrics"] if q.get("ReturnData"))
    assert "errors / requests" in expression


def test_every_alarm_notifies_the_topic_whose_subscription_is_a_parameter(template: dict[str, Any]) -> None:
    topics = resources_of(template, "AWS::SNS::Topic")
    assert list(topics) == ["AlarmTopic"]
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    assert len(alarms) == 6
    for alarm in alarms.values():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}] and props["OKActions"] == [{"Ref": "AlarmTopic"}]
        assert props["TreatMissingData"] == "notBreaching"
    (subscription,) = resources_of(template, "AWS::SNS::Subscription").values()
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": "AlarmTopic"},
        "Protocol": {"Ref": "AlarmSubscriptionProtocol"},
        "Endpoint": {"Ref": "AlarmSubscriptionEndpoint"},
    }
    # no endpoint given: the topic exists, nobody is subscribed (an empty endpoint would fail the deploy)
    condition = template["Conditions"][subscription["Condition"]]
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmSubscriptionEndpoint"}, ""]}]}
    params = template["Parameters"]
    assert params["AlarmSubscriptionEndpoint"]["Default"] == ""
    assert "email" in params["AlarmSubscriptionProtocol"]["AllowedValues"]
    assert template["Outputs"]["AlarmTopicArn"]["Value"] == {"Ref": "AlarmTopic"}


def test_every_function_has_a_log_group_with_retention_created_before_it(template: dict[str, Any]) -> None:
    groups = {
        g["Properties"]["LogGroupName"]: (logical, g["Properties"])
        for logical, g in resources_of(template, "AWS::Logs::LogGroup").items()
    }
    functions = resources_of(template, "AWS::Serverless::Function")
    assert len(groups) == len(functions) == len(FUNCTIONS)
    for function in functions.values():
        logical, props = groups[f"/aws/lambda/{function['Properties']['FunctionName']}"]
        assert props["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert logical in function["DependsOn"]
    assert "QueueUsage" in template["Resources"]["AggregateUsage"]["DependsOn"]  # kept beside the log group
    param = template["Parameters"]["LogRetentionDays"]
    assert int(param["Default"]) == STAGE_OPERATIONS["prod"].log_retention_days
    assert param["Default"] in param["AllowedValues"] and "3653" in param["AllowedValues"]
    assert merge_template("dev")["Parameters"]["LogRetentionDays"]["Default"] == "14"


def dashboard(template: dict[str, Any]) -> dict[str, Any]:
    (board,) = resources_of(template, "AWS::CloudWatch::Dashboard").values()
    body: dict[str, Any] = json.loads(
        board["Properties"]["DashboardBody"]["Fn::Sub"].replace("${AWS::Region}", "us-east-1")
    )
    return body


def test_dashboard_widgets_read_metrics_the_code_emits_or_resources_of_the_template(
    template: dict[str, Any], emitted: Emitted
) -> None:
    widgets = dashboard(template)["widgets"]
    titles = [w["properties"]["title"] for w in widgets]
    for topic in ("Ingest rate", "Queue depth", "Aggregation lag", "Errors"):
        assert any(t.startswith(topic) for t in titles), topic
    read = set()
    for widget in widgets:
        assert widget["properties"]["region"] == "us-east-1"
        for entry in widget["properties"]["metrics"]:
            if isinstance(entry[0], dict):  # a SEARCH over an emitted metric's dimension schema
                expression = entry[0]["expression"]
                found = re.fullmatch(r"SEARCH\('\{([^}]*)\} MetricName=\"(\w+)\"', '\w+', \d+\)", expression)
                assert found, expression
                namespace, *dimension_names = found.group(1).split(",")
                assert any(
                    ns == namespace and name == found.group(2) and {k for k, _ in dims} == set(dimension_names)
                    for ns, name, dims in emitted
                ), expression
                read.add(found.group(2))
                continue
            namespace, name, *rest = entry
            pairs = [x for x in rest if not isinstance(x, dict)]
            dims = dict(zip(pairs[::2], pairs[1::2], strict=True))
            check_metric(namespace, name, dims, template, emitted)
            read.add(name)
    assert {"EventsAccepted", "ApproximateNumberOfMessagesVisible", "AggregationLag", "Errors", "Requests"} <= read


def test_tracing_is_a_stage_option_with_its_grant_only_when_on(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["TracingEnabled"]["AllowedValues"] == ["true", "false"]
    assert params["TracingEnabled"]["Default"] == "true"  # prod
    assert merge_template("dev")["Parameters"]["TracingEnabled"]["Default"] == "false"
    assert template["Conditions"]["TracingOn"] == {"Fn::Equals": [{"Ref": "TracingEnabled"}, "true"]}
    for function in resources_of(template, "AWS::Serverless::Function").values():
        assert function["Properties"]["Tracing"] == {"Fn::If": ["TracingOn", "Active", "PassThrough"]}
    assert template["Resources"]["RestAPI"]["Properties"]["TracingEnabled"] == {"Fn::If": ["TracingOn", True, False]}
    for function in FUNCTIONS:
        policies = template["Resources"][FUNCTION_ROLES[function]]["Properties"]["Policies"]
        condition, when_on, when_off = policies[1]["Fn::If"]
        assert condition == "TracingOn" and when_off == {"Ref": "AWS::NoValue"}
        (statement,) = when_on["PolicyDocument"]["Statement"]
        # X-Ray's write actions take no resource ARN: `*` with exactly these two actions
        assert statement["Action"] == ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
        assert statement["Resource"] == "*"


def test_aggregator_concurrency_is_a_stage_setting_its_event_source_never_exceeds(template: dict[str, Any]) -> None:
    param = template["Parameters"]["AggregatorReservedConcurrency"]
    assert param["Default"] == STAGE_OPERATIONS["prod"].aggregator_concurrency >= 2
    assert merge_template("dev")["Parameters"]["AggregatorReservedConcurrency"]["Default"] == 0
    props = template["Resources"]["AggregateUsage"]["Properties"]
    reserved = {"Ref": "AggregatorReservedConcurrency"}
    assert props["ReservedConcurrentExecutions"] == {
        "Fn::If": ["AggregatorConcurrencyReserved", reserved, {"Ref": "AWS::NoValue"}]
    }
    scaling = props["Events"]["AggregateUsageSqsEventSource"]["Properties"]["ScalingConfig"]
    assert scaling == {
        "Fn::If": ["AggregatorConcurrencyReserved", {"MaximumConcurrency": reserved}, {"Ref": "AWS::NoValue"}]
    }
    assert template["Conditions"]["AggregatorConcurrencyReserved"] == {"Fn::Not": [{"Fn::Equals": [reserved, "0"]}]}
    (rule,) = template["Rules"].values()
    assert rule["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [reserved, "1"]}]}
    others = [f for f in resources_of(template, "AWS::Serverless::Function") if f != "AggregateUsage"]
    assert all("ReservedConcurrentExecutions" not in template["Resources"][f]["Properties"] for f in others)
