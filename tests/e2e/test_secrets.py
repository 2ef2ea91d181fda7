"""Per-stage settings and secrets: a deployed function never runs with the public cursor secret, reads
its own from Secrets Manager once, and the late-event bound is a stage setting with a documented default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import config
from chalicelib.api.schemas import UsageQuery
from chalicelib.config import DEV_CURSOR_SECRET, ConfigurationError, Settings, reset_settings
from chalicelib.container import Container, set_container
from chalicelib.domain import cursors
from chalicelib.domain.usage import check_period_date
from chalicelib.errors import MeteringError
from chalicelib.services import catalog_admin
from tests.conftest import FULL_KEY
from tests.support import Clock
from tools.deploy_template import FUNCTIONS, cursor_secret_name, merge_template, role_id

ROOT = Path(__file__).resolve().parents[2]
GENERATED = "Zq8w3r7Yk2Lm9Xc4Vb6Nn1Pa5Sd0Fg7Hj3Kk8Ll2Qw9Ee4Rt6Yu1Ii5Oo0Pp7Aa3"


@pytest.fixture
def on_lambda(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment of a deployed function, without its secret."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "usage-metering-prod-api_handler")
    monkeypatch.delenv("AWS_SAM_LOCAL", raising=False)
    for name in ("METERING_CURSOR_SECRET", "METERING_CURSOR_SECRET_ID", "METERING_PERIOD_DAYS_BACK"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- a deployed function without its secret does not start -----------------------------------------


def test_a_deployed_function_without_a_secret_fails_at_start(on_lambda: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="METERING_CURSOR_SECRET_ID is not set"):
        config.check_environment()
    with pytest.raises(ConfigurationError):
        Settings.from_env()


@pytest.mark.parametrize("value", [DEV_CURSOR_SECRET, "short-secret"])
def test_a_deployed_function_refuses_the_public_or_a_short_secret(on_lambda: pytest.MonkeyPatch, value: str) -> None:
    on_lambda.setenv("METERING_CURSOR_SECRET", value)
    with pytest.raises(ConfigurationError, match="METERING_CURSOR_SECRET"):
        config.check_environment()


def test_importing_the_app_on_lambda_without_a_secret_stops_with_a_clear_error() -> None:
    """Lambda's init phase imports app.py: that is where a missing secret stops the function."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_CURSOR_SECRET")}
    env.update(AWS_LAMBDA_FUNCTION_NAME="usage-metering-prod-api_handler", AWS_DEFAULT_REGION="us-east-1")
    env.pop("AWS_SAM_LOCAL", None)
    run = subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "ConfigurationError" in run.stderr and "METERING_CURSOR_SECRET_ID is not set" in run.stderr


def test_off_lambda_the_development_secret_is_used() -> None:
    """The local stack and the tests need no secret (and the default is public, so it never leaves them)."""
    assert not config.on_lambda()
    settings = Settings.from_env()
    assert settings.cursor_secret in (DEV_CURSOR_SECRET, os.environ.get("METERING_CURSOR_SECRET"))


# -- a deployed function reads its own secret, once --------------------------------------------------


@pytest.fixture
def deployed(aws: Settings, on_lambda: pytest.MonkeyPatch) -> Any:
    """A Secrets Manager secret, as the template generates it, named to a deployed function's settings."""
    secret = boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name=cursor_secret_name("prod"), SecretString=GENERATED
    )
    on_lambda.setenv("METERING_CURSOR_SECRET_ID", secret["ARN"])
    reset_settings()
    yield secret["ARN"]
    reset_settings()


def test_a_deployed_function_reads_its_secret_once_at_first_use(deployed: str) -> None:
    config.check_environment()  # starts
    settings = Settings.from_env()
    assert settings.cursor_secret == GENERATED
    boto3.client("secretsmanager", region_name="us-east-1").delete_secret(
        SecretId=deployed, ForceDeleteWithoutRecovery=True
    )
    assert settings.cursor_secret == GENERATED  # kept for the life of the process
    assert GENERATED not in repr(settings)


def test_cursors_of_a_deployed_function_cannot_be_made_or_read_with_the_public_secret(deployed: str) -> None:
    from chalice.test import Client

    from app import app

    container = Container.from_settings(Settings.from_env())
    catalog_admin.load_platform_catalog(container.catalog)
    catalog_admin.load_demo_data(container.catalog)
    container.clock = Clock(datetime(2026, 11, 28, 12, tzinfo=UTC))
    set_container(container)
    try:
        with Client(app) as client:
            headers = {"Authorization": f"Bearer {FULL_KEY}"}
            for n in range(3):
                event = {"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": n + 1}
                assert (
                    client.http.post("/v1/metering/events", headers=headers, body=json.dumps(event)).status_code == 201
                )
            first = client.http.get("/v1/usage?limit=1", headers=headers)
            assert first.status_code == 200, first.body
            token = json.loads(first.body)["meta"]["cursor"]
            filters = UsageQuery.model_validate({"limit": "1"}).model_dump(mode="json", exclude={"cursor", "limit"})
            bound = cursors.binding("ORG-26-090500", "usage", filters)
            assert cursors.decode(token, bound, GENERATED)
            with pytest.raises(MeteringError):
                cursors.decode(token, bound, DEV_CURSOR_SECRET)
            forged = cursors.encode(cursors.decode(token, bound, GENERATED), bound, DEV_CURSOR_SECRET)
            refused = client.http.get(f"/v1/usage?limit=1&cursor={forged}", headers=headers)
            assert refused.status_code == 400 and json.loads(refused.body)["error"]["code"] == "invalid_cursor"
            second = client.http.get(f"/v1/usage?limit=1&cursor={token}", headers=headers)
            assert second.status_code == 200, second.body
    finally:
        set_container(None)


# -- the packaged template creates the secret and lets only the API handler read it ------------------


def test_the_template_generates_the_secret_and_names_it_to_every_function() -> None:
    template = merge_template("prod")
    resources = template["Resources"]
    secret = resources["CursorSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["Properties"]["Name"] == "usage-metering-prod-cursor-secret"
    assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32
    for logical in FUNCTIONS.values():
        variables = resources[logical]["Properties"]["Environment"]["Variables"]
        assert variables["METERING_CURSOR_SECRET_ID"] == {"Ref": "CursorSecret"}
    readers = []
    for function in FUNCTIONS:
        policy = resources[role_id(function)]["Properties"]["Policies"][0]["PolicyDocument"]
        for statement in policy["Statement"]:
            if any(a.startswith("secretsmanager:") for a in statement["Action"]):
                readers.append(function)
                assert statement["Action"] == ["secretsmanager:GetSecretValue"]
                (resource,) = statement["Resource"]
                assert resource["Fn::Sub"].endswith(":secret:usage-metering-prod-cursor-secret-??????")
    assert readers == ["api_handler"]


# -- the late-event bound: a stage setting with a documented default --------------------------------


def test_the_late_event_bound_is_a_stage_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERING_PERIOD_DAYS_BACK", raising=False)
    assert Settings.from_env().period_days_back == config.DEFAULT_PERIOD_DAYS_BACK == 366
    monkeypatch.setenv("METERING_PERIOD_DAYS_BACK", "30")
    assert Settings.from_env().period_days_back == 30
    for bad in ("0", "-5", "ten", "3661", "1.5"):
        monkeypatch.setenv("METERING_PERIOD_DAYS_BACK", bad)
        with pytest.raises(ConfigurationError, match="METERING_PERIOD_DAYS_BACK"):
            Settings.from_env()
    stages = json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"]
    for stage, settings in stages.items():
        assert int(settings["environment_variables"]["METERING_PERIOD_DAYS_BACK"]) >= 1, stage


def test_the_documents_own_example_is_within_the_default_bound() -> None:
    """Document 000 reports usage of 2026-04-14; on 2026-11-28 that is 228 days back."""
    today = date(2026, 11, 28)
    assert check_period_date("2026-04-14", today, days_back=config.DEFAULT_PERIOD_DAYS_BACK) == date(2026, 4, 14)
    with pytest.raises(MeteringError) as late:
        check_period_date("2026-04-14", today, days_back=200)
    assert late.value.field == "period_date"
    assert "at most 200 days back" in late.value.message and "2026-05-12" in late.value.message


def test_a_late_event_is_told_the_bound_and_the_earliest_date(client: Any, container: Container) -> None:
    today = date(2026, 11, 28)
    container.clock = Clock(datetime(2026, 11, 28, 12, tzinfo=UTC))
    late = (today - timedelta(days=4000)).isoformat()
    event = {"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": 1, "period_date": late}
    headers = {"Authorization": f"Bearer {FULL_KEY}"}
    response = client.http.post("/v1/metering/events", headers=headers, body=json.dumps(event))
    assert response.status_code == 400
    error = json.loads(response.body)["error"]
    assert error["code"] == "validation_error" and error["field"] == "period_date"
    message = error["message"]
    assert late in message and "too late" in message
    days = int(message.split("at most ", 1)[1].split(" days back", 1)[0])
    assert f"earliest date accepted today is {(today - timedelta(days=days)).isoformat()}" in message
    future = {**event, "period_date": "2026-12-01"}
    ahead = json.loads(client.http.post("/v1/metering/events", headers=headers, body=json.dumps(future)).body)
    assert "latest date accepted today is 2026-11-29" in ahead["error"]["message"]
