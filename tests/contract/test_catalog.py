"""The catalog's contract: the DynamoDB adapter (on the emulator) and the in-memory one answer alike."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.domain.auth import hash_key
from chalicelib.domain.models import ServiceLine, Workspace
from chalicelib.domain.store import Idempotency, IdTakenError
from chalicelib.services import catalog_admin
from chalicelib.services.ports import CatalogRepository
from tests.contract.conftest import as_json

ORG = "ORG-26-090500"  # enterprise: no workspace limit, 25 active lines
STARTER = "ORG-26-100200"  # starter: 3 active lines, 1 workspace
NOW = datetime(2026, 4, 15, 10, 0, tzinfo=UTC)


@pytest.fixture
def loaded(catalog: CatalogRepository, monkeypatch: pytest.MonkeyPatch) -> CatalogRepository:
    """The catalog with the platform meters and plans and the demo organizations."""
    for name in ("DEMO_API_KEY", "DEMO_READONLY_API_KEY", "DEMO_API_KEY_2"):
        monkeypatch.delenv(name, raising=False)
    catalog_admin.load_platform_catalog(catalog)
    catalog_admin.load_demo_data(catalog)
    return catalog


def line(line_id: str, org: str = ORG, workspace: str = "WS-26-000101", **changes: Any) -> ServiceLine:
    values: dict[str, Any] = {
        "id": line_id,
        "organization_id": org,
        "workspace_id": workspace,
        "name": "Line",
        "product_line": "talent",
        "status": "active",
        "currency": "USD",
        "rates": {"talent.hours": Decimal("95")},
        "created_at": NOW,
    }
    return ServiceLine.model_validate({**values, **changes})


# -- what the loading wrote (was tests/integration/test_catalog_repository.py) -------------------------


def test_catalog_loads_fifteen_active_meters_and_one_archived(loaded: CatalogRepository) -> None:
    meters = loaded.list_meters()
    active = [m.id for m in meters if m.active]
    assert len(active) == 15  # the nine summed platform meters and one per other aggregation (issue 12)
    assert {"talent.hours", "agent.run_seconds", "ods.cycles"} <= set(active)
    archived = [m for m in meters if not m.active]
    assert [m.status for m in archived] == ["ARCHIVED"]
    by_uuid = loaded.get_meter_by_uuid(meters[0].uuid.upper())
    assert by_uuid == meters[0]


def test_plans_round_trip_with_null_limits_and_decimal_prices(loaded: CatalogRepository) -> None:
    enterprise = loaded.get_plan("plan_enterprise_annual")
    assert enterprise is not None
    assert enterprise.price is None
    assert enterprise.limits.workspaces is None
    assert enterprise.limits.agent_credits_monthly == "custom"
    starter = loaded.get_plan("plan_starter_monthly")
    assert starter is not None and starter.price == Decimal("299.00")
    assert starter.limits.active_service_lines == 3


def test_demo_organizations_and_service_lines(loaded: CatalogRepository) -> None:
    lines = loaded.list_service_lines("ORG-26-090500")
    assert [line.id for line in lines] == ["LIN-26-084729", "LIN-26-091100"]
    assert lines[0].rates["talent.hours"] == Decimal("95")
    assert loaded.get_service_line("ORG-26-100200", "LIN-26-084729") is None
    org = loaded.get_organization("ORG-26-090500")
    assert org is not None and org.plan_id == "plan_enterprise_annual"
    plan = loaded.get_organization_plan(ORG)
    assert plan is not None and plan.id == "plan_enterprise_annual"
    assert loaded.get_organization_plan("ORG-00-000000") is None


def test_keys_are_found_by_hash_and_revocation_sticks(loaded: CatalogRepository) -> None:
    issued = catalog_admin.issue_key(loaded, "ORG-26-090500", frozenset({"usage:read"}), "t")
    stored = loaded.get_api_key(hash_key(issued.secret))
    assert stored is not None and stored.status == "active"
    assert stored.key_hash != issued.secret
    assert loaded.revoke_api_key(issued.key.key_id) is True
    revoked = loaded.get_api_key(hash_key(issued.secret))
    assert revoked is not None and revoked.status == "revoked"
    assert loaded.revoke_api_key("key_doesnotexist") is False
    listed = loaded.list_api_keys(ORG)
    assert issued.key.key_id in {k.key_id for k in listed}
    assert all(k.organization_id == ORG for k in listed)
    every = loaded.list_api_keys()
    assert every == sorted(every, key=lambda k: (k.organization_id, k.created_at, k.key_id))
    assert {k.organization_id for k in every} == {ORG, STARTER}


# -- creating under the plan's limits ------------------------------------------------------------------


def test_a_new_line_is_counted_against_the_limit(loaded: CatalogRepository) -> None:
    [starter_line] = loaded.list_service_lines(STARTER)
    workspace = starter_line.workspace_id
    assert loaded.create_service_line(line("LIN-26-500001", STARTER, workspace), 3) is None
    assert loaded.create_service_line(line("LIN-26-500002", STARTER, workspace), 3) is None
    assert loaded.create_service_line(line("LIN-26-500003", STARTER, workspace), 3) == "limit"
    assert loaded.get_service_line(STARTER, "LIN-26-500003") is None
    assert loaded.get_id_owner("LIN-26-500003") is None
    assert loaded.get_id_owner("LIN-26-500001") == STARTER
    assert loaded.get_service_line(STARTER, "LIN-26-500001") == line("LIN-26-500001", STARTER, workspace)


def test_a_taken_id_is_refused_in_any_organization(loaded: CatalogRepository) -> None:
    assert loaded.create_service_line(line("LIN-26-084729"), None) == "exists"  # this organization's own
    [starter_line] = loaded.list_service_lines(STARTER)
    taken = line("LIN-26-084729", STARTER, starter_line.workspace_id)
    assert loaded.create_service_line(taken, None) == "exists"  # another organization's
    assert loaded.get_service_line(STARTER, "LIN-26-084729") is None
    with pytest.raises(IdTakenError):
        loaded.put_service_line(taken)
    with pytest.raises(IdTakenError):
        loaded.put_workspace(Workspace(id="WS-26-000101", organization_id=STARTER, name="mine"))
    loaded.put_service_line(line("LIN-26-084729", name="Renamed"))  # its owner may update it
    renamed = loaded.get_service_line(ORG, "LIN-26-084729")
    assert renamed is not None and renamed.name == "Renamed"


def test_a_creation_key_replays_and_names_what_it_made(loaded: CatalogRepository) -> None:
    key = Idempotency("create-1", "f" * 64)
    assert loaded.create_service_line(line("LIN-26-600001"), None, key) is None
    assert loaded.create_service_line(line("LIN-26-600002"), None, key) == "replay"
    assert loaded.get_service_line(ORG, "LIN-26-600002") is None
    assert loaded.get_creation_key(ORG, "service_line", "create-1") == Idempotency(
        "create-1", "f" * 64, "LIN-26-600001"
    )
    assert loaded.get_creation_key(ORG, "workspace", "create-1") is None
    assert loaded.get_creation_key(STARTER, "service_line", "create-1") is None
    ws = Workspace(id="WS-26-600001", organization_id=ORG, name="Ops")
    assert loaded.create_workspace(ws, None, key) is None  # a key is per kind of creation
    assert loaded.create_workspace(Workspace(id="WS-26-600002", organization_id=ORG, name="Ops"), None, key) == "replay"
    assert [w.id for w in loaded.list_workspaces(ORG)].count("WS-26-600001") == 1


def test_workspaces_are_counted_against_their_limit(loaded: CatalogRepository) -> None:
    assert len(loaded.list_workspaces(STARTER)) == 1
    assert loaded.create_workspace(Workspace(id="WS-26-700001", organization_id=STARTER, name="x"), 1) == "limit"
    assert loaded.create_workspace(Workspace(id="WS-26-700001", organization_id=STARTER, name="x"), 2) is None
    assert loaded.get_id_owner("WS-26-700001") == STARTER
    assert loaded.recount_workspaces(STARTER) == 2


def test_pausing_and_resuming_keep_the_active_count(loaded: CatalogRepository) -> None:
    [starter_line] = loaded.list_service_lines(STARTER)
    ws = starter_line.workspace_id
    for n in (1, 2):
        assert loaded.create_service_line(line(f"LIN-26-80000{n}", STARTER, ws), 3) is None
    assert loaded.set_service_line_status(STARTER, "LIN-26-800001", "paused", 3) is None
    assert loaded.set_service_line_status(STARTER, "LIN-26-800001", "paused", 3) == "unchanged"
    paused = loaded.get_service_line(STARTER, "LIN-26-800001")
    assert paused is not None and paused.status == "paused"
    assert loaded.create_service_line(line("LIN-26-800003", STARTER, ws), 3) is None  # the paused one freed a place
    assert loaded.set_service_line_status(STARTER, "LIN-26-800001", "active", 3) == "limit"
    assert loaded.set_service_line_status(STARTER, "LIN-26-800002", "paused", 3) is None
    assert loaded.set_service_line_status(STARTER, "LIN-26-800001", "active", 3) is None
    assert loaded.set_service_line_status(STARTER, "LIN-26-999999", "paused", 3) == "unchanged"
    assert loaded.recount_active_lines(STARTER) == 3


# -- jobs: every line of every organization, page by page ---------------------------------------------


def test_service_lines_are_paged_for_jobs(loaded: CatalogRepository) -> None:
    for n in range(30):
        loaded.put_service_line(line(f"LIN-26-9{n:05d}"))
    every = loaded.all_service_lines()
    assert every == sorted(every, key=lambda s: s.id)
    assert len(every) == 30 + 3
    seen: list[ServiceLine] = []
    position = None
    for _ in range(200):
        page, position = loaded.service_lines_page(position, 7)
        seen.extend(page)
        loaded.put_job_cursor("test-job", position, "2026-04-15T10:00:00.000Z")
        position = loaded.get_job_cursor("test-job")
        assert position == as_json(position)
        if position is None:
            break
    assert sorted(seen, key=lambda s: s.id) == every
    assert loaded.get_job_cursor("never-ran") is None


def test_api_calls_add_up_per_organization_and_month(loaded: CatalogRepository) -> None:
    assert loaded.get_api_calls(ORG, "2026-04") == 0
    assert loaded.add_api_calls(ORG, "2026-04", 25) == 25
    assert loaded.add_api_calls(ORG, "2026-04", 3) == 28
    assert loaded.get_api_calls(ORG, "2026-04") == 28
    assert loaded.get_api_calls(ORG, "2026-05") == 0
    assert loaded.get_api_calls(STARTER, "2026-04") == 0
