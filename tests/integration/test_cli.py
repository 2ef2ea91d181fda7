"""The operator command against the emulated stage."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.cli import run
from chalicelib.container import Container
from chalicelib.domain.auth import hash_key

ROOT = Path(__file__).resolve().parents[2]


def test_create_and_revoke_a_key(container: Container, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["keys", "create", "--org", "ORG-26-090500", "--scopes", "read", "--name", "ops"], container) == 0
    out = capsys.readouterr().out
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("secret:"))
    key_id = next(line.split()[2] for line in out.splitlines() if line.startswith("key id:"))
    stored = container.catalog.get_api_key(hash_key(secret))
    assert stored is not None and stored.organization_id == "ORG-26-090500" and "usage:read" in stored.scopes
    assert run(["keys", "revoke", key_id], container) == 0
    revoked = container.catalog.get_api_key(hash_key(secret))
    assert revoked is not None and revoked.status == "revoked"
    assert run(["keys", "revoke", "key_missing"], container) == 1


def test_create_refuses_unknown_scope_and_organization(container: Container) -> None:
    assert run(["keys", "create", "--org", "ORG-26-090500", "--scopes", "root"], container) == 2
    assert run(["keys", "create", "--org", "ORG-00-000000"], container) == 2


def test_catalog_load_is_repeatable(container: Container, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["catalog", "load"], container) == 0
    assert run(["catalog", "load"], container) == 0
    assert "loaded 10 meters and 9 plans" in capsys.readouterr().out
    assert len(container.catalog.list_meters()) == 10


def test_a_new_stage_gets_its_first_organization_workspace_and_key(
    container: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["orgs", "create", "--id", "ORG-26-000777", "--name", "Acme", "--plan", "plan_nope"], container) == 2
    assert (
        run(["orgs", "create", "--id", "ORG-26-000777", "--name", "Acme", "--plan", "plan_growth_annual"], container)
        == 0
    )
    org = container.catalog.get_organization("ORG-26-000777")
    assert org is not None and org.plan_id == "plan_growth_annual"
    assert run(["workspaces", "create", "--org", "ORG-26-000000", "--id", "WS-1", "--name", "x"], container) == 2
    assert (
        run(["workspaces", "create", "--org", "ORG-26-000777", "--id", "WS-26-000777", "--name", "Core"], container)
        == 0
    )
    assert [w.id for w in container.catalog.list_workspaces("ORG-26-000777")] == ["WS-26-000777"]
    assert run(["keys", "create", "--org", "ORG-26-000777", "--scopes", "all"], container) == 0
    assert "secret:" in capsys.readouterr().out


def test_keys_list_shows_each_key_without_its_secret(container: Container, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["keys", "create", "--org", "ORG-26-100200", "--scopes", "read", "--name", "reporting"], container) == 0
    created = capsys.readouterr().out
    secret = next(line.split()[1] for line in created.splitlines() if line.startswith("secret:"))
    key_id = next(line.split()[2] for line in created.splitlines() if line.startswith("key id:"))
    assert run(["keys", "revoke", key_id], container) == 0
    capsys.readouterr()

    assert run(["keys", "list", "--org", "ORG-26-100200"], container) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert (
        rows[key_id][1:3] == ["ORG-26-100200", "revoked"]
        and rows[key_id][-1] == "accounts:billing,catalog:read,usage:read"
    )
    assert all(row[1] == "ORG-26-100200" for row in rows.values())
    assert len(rows) == 2  # the demo key of that organization, and this one
    assert secret not in out

    assert run(["keys", "list"], container) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 4  # header, three demo keys and this one


def cli_without_aws(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The operator command in a process with no AWS credentials anywhere."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "METERING_"))}
    clean.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "chalicelib.cli", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_aws_credentials_is_one_clear_line_not_a_traceback() -> None:
    done = cli_without_aws("keys", "list")
    assert done.returncode == 1
    assert done.stderr.startswith("error: no AWS credentials found") and "--endpoint-url" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unreachable_endpoint_is_one_clear_line() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = cli_without_aws("keys", "create", "--org", "ORG-26-090500", METERING_AWS_ENDPOINT=f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: cannot reach http://127.0.0.1:{port}: is the local stack running (make run)?"
