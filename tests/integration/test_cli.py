"""The operator command against the emulated stage."""

from __future__ import annotations

import pytest

from chalicelib.cli import run
from chalicelib.container import Container
from chalicelib.domain.auth import hash_key


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
