"""The packaged CloudFormation template: what `chalice package --merge-template` really produces.

Chalice's merge replaces lists and merges dicts deeply, so these tests read the
packaged result, not the merge input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.storage import clients
from chalicelib.storage.schema import QUEUES, TABLES, resource_name
from tools.deploy_template import logical_id

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
    assert schedules == {"SweepPending": "rate(2 minutes)", "ReconcileRollups": "cron(17 * * * ? *)"}


def policy_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    policies = template["Resources"]["DefaultRole"]["Properties"]["Policies"]
    assert [p["PolicyName"] for p in policies] == ["MeteringLeastPrivilege"]
    statements: list[dict[str, Any]] = policies[0]["PolicyDocument"]["Statement"]
    return statements


def test_policy_names_every_resource_and_no_wildcard_resource(template: dict[str, Any]) -> None:
    for statement in policy_statements(template):
        resources = statement["Resource"]
        assert isinstance(resources, list) and resources
        for resource in resources:
            assert resource != "*"
            text = resource["Fn::Sub"] if isinstance(resource, dict) else resource
            assert not text.startswith("*") and ":*:*:" not in text
        assert all("*" not in action for action in statement["Action"])


def allowed(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    for statement in statements:
        if action not in statement["Action"]:
            continue
        for pattern in statement["Resource"]:
            text = pattern["Fn::Sub"].replace("${AWS::Partition}", "aws").replace("${AWS::Region}", "us-east-1")
            text = text.replace("${AWS::AccountId}", "123456789012")
            if text == resource or (text.endswith("*") and resource.startswith(text[:-1])):
                return True
    return False


class Recorder:
    """Every (service, IAM action, resource ARN) the code asks AWS for, once enabled (a botocore hook)."""

    def __init__(self) -> None:
        self.enabled = False
        self.session: Any = None
        self.calls: list[tuple[str, str, str]] = []

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

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        if not self.enabled:
            return
        service = model.service_model.endpoint_prefix
        name = model.name
        if service == "dynamodb":
            items: list[tuple[str, str]] = []
            if name == "TransactWriteItems":
                kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem"}
                for entry in params["TransactItems"]:
                    ((kind, body),) = entry.items()
                    items.append((kinds[kind], body["TableName"]))
            elif name in ("BatchGetItem", "BatchWriteItem"):
                items.extend((name, table) for table in params["RequestItems"])
            else:
                table = params["TableName"]
                if "IndexName" in params:
                    table = f"{table}/index/{params['IndexName']}"
                items.append((name, table))
            for action, table in items:
                self.calls.append(("dynamodb", action, f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}"))
        elif service == "sqs":
            url = params.get("QueueUrl") or params.get("QueueName", "")
            self.calls.append(("sqs", name, f"arn:aws:sqs:us-east-1:123456789012:{url.rsplit('/', 1)[-1]}"))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    hook = Recorder()
    yield hook
    if hook.session is not None:
        hook.session.events.unregister("before-parameter-build", hook)


def test_policy_covers_every_call_the_code_makes(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    """Run the real handlers over a full flow with the prod stage's names; every call must be allowed."""
    monkeypatch.setenv("METERING_STAGE", "prod")
    for env in ("METERING_EVENTS_TABLE", "METERING_ROLLUPS_TABLE", "METERING_CATALOG_TABLE"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.delenv("METERING_USAGE_QUEUE", raising=False)
    monkeypatch.delenv("METERING_USAGE_DLQ", raising=False)
    from tests.e2e.flows import run_full_flow

    seen = run_full_flow(recorder.switch)
    assert seen["sweep"]["requeued"] == 1 and seen["drained_after_sweep"] == 1
    statements = policy_statements(template)
    assert recorder.calls, "the flow made no AWS calls"
    denied = sorted({(a, r) for svc, a, r in recorder.calls if not allowed(statements, f"{svc}:{a}", r)})
    assert denied == []
    actions = {a for _, a, _ in recorder.calls}
    assert {"PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem", "BatchWriteItem"} <= actions
    assert {"SendMessage", "GetQueueUrl"} <= actions
