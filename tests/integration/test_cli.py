"""The operator command against the emulated stage."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from chalicelib import catalog
from chalicelib.cli import build_parser, run
from chalicelib.container import Container
from chalicelib.domain.auth import hash_key
from tests.e2e.localstack import running_stack_process

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
    meters, plans = len(catalog.read("meters")), len(catalog.read("plans"))
    assert f"loaded {meters} meters and {plans} plans" in capsys.readouterr().out
    assert len(container.catalog.list_meters()) == meters


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


# -- the installed command: `pip install -e .` (make install) gives `usage-metering` -------------------------

SCRIPT = Path(sys.executable).parent / "usage-metering"


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand, as the words that name it (`("keys", "list")`)."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(command_paths(sub, (*path, name)))
    return found


def installed(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The console script, run from outside the repository, with no AWS credentials anywhere."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "METERING_"))}
    clean.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
        **env,
    )
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120)


def test_the_console_script_is_installed_and_its_help_lists_every_command(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"usage-metering": "chalicelib.cli:main"}
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK), "make install runs `pip install -e .`"
    done = installed("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: usage-metering ")
    commands = [path for path in command_paths(build_parser()) if len(path) == 1]
    assert {c for (c,) in commands} == {"catalog", "orgs", "workspaces", "keys", "import", "export"}
    listed = done.stdout.split("positional arguments:")[1].split("options:")[0]
    for (name,) in commands:
        assert re.search(rf"^\s+{name}\s+\S", listed, re.MULTILINE), name  # each command, with what it does


def test_every_command_and_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    paths = command_paths(build_parser())
    assert ("keys", "list") in paths and ("catalog", "load") in paths and len(paths) == 13
    for path in paths:
        with pytest.raises(SystemExit) as exited:
            run([*path, "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: usage-metering" + "".join(f" {word}" for word in path)), out
        if path:
            assert out.split("\n\n")[1].strip().endswith("."), out  # a sentence saying what it does


def test_the_package_holds_the_code_and_its_catalog_data_and_declares_what_lambda_needs(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lambda_needs = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert set(lambda_needs) <= set(project["dependencies"])
    assert any(d.startswith("boto3") for d in project["dependencies"])  # Lambda has it; the command needs it
    source = tmp_path / "source"  # pip builds in the tree it is given: a copy, so the checkout's build/ is left alone
    for name in ("chalicelib", "tests", "tools", "client"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", source / "pyproject.toml")
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*build, "."], cwd=source, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("usage_metering-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "usage-metering = chalicelib.cli:main" in archive.read(entry_points).decode()
    assert {"chalicelib/cli.py", "chalicelib/catalog/meters.json", "chalicelib/catalog/plans.json"} <= names
    assert not any(n.startswith(("tests/", "tools/", "client/")) for n in names)


def test_keys_list_and_create_against_the_local_stack_from_outside_the_repository(tmp_path: Path) -> None:
    with running_stack_process() as stack:
        assert stack.aws_url.startswith("http://127.0.0.1:")
        listed = installed("keys", "list", "--endpoint-url", stack.aws_url, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        rows = [line.split() for line in listed.stdout.splitlines()[1:]]
        assert sorted(row[1] for row in rows) == ["ORG-26-090500", "ORG-26-090500", "ORG-26-100200"]  # demo keys
        created = installed(
            "keys",
            "create",
            "--org",
            "ORG-26-100200",
            "--scopes",
            "read",
            "--name",
            "cli",
            cwd=tmp_path,
            METERING_AWS_ENDPOINT=stack.aws_url,
        )
        assert created.returncode == 0, created.stderr
        key_id = next(line.split()[2] for line in created.stdout.splitlines() if line.startswith("key id:"))
        again = installed("--endpoint-url", stack.aws_url, "keys", "list", "--org", "ORG-26-100200", cwd=tmp_path)
        assert key_id in again.stdout and len(again.stdout.splitlines()) == 1 + 2
        loaded = installed("catalog", "load", "--endpoint-url", stack.aws_url, cwd=tmp_path)  # the packaged JSON
        packaged = f"loaded {len(catalog.read('meters'))} meters and {len(catalog.read('plans'))} plans"
        assert loaded.returncode == 0 and packaged in loaded.stdout, loaded.stderr
