"""The catalog repository against the emulated DynamoDB."""

from __future__ import annotations

from decimal import Decimal

from chalicelib.container import Container
from chalicelib.domain.auth import hash_key
from chalicelib.services import catalog_admin


def test_catalog_loads_nine_active_meters_and_one_archived(container: Container) -> None:
    meters = container.catalog.list_meters()
    active = [m.id for m in meters if m.active]
    assert len(active) == 9
    assert {"talent.hours", "agent.run_seconds", "ods.cycles"} <= set(active)
    archived = [m for m in meters if not m.active]
    assert [m.status for m in archived] == ["ARCHIVED"]
    by_uuid = container.catalog.get_meter_by_uuid(meters[0].uuid.upper())
    assert by_uuid == meters[0]


def test_plans_round_trip_with_null_limits_and_decimal_prices(container: Container) -> None:
    enterprise = container.catalog.get_plan("plan_enterprise_annual")
    assert enterprise is not None
    assert enterprise.price is None
    assert enterprise.limits.workspaces is None
    assert enterprise.limits.agent_credits_monthly == "custom"
    starter = container.catalog.get_plan("plan_starter_monthly")
    assert starter is not None and starter.price == Decimal("299.00")
    assert starter.limits.active_service_lines == 3


def test_demo_organizations_and_service_lines(container: Container) -> None:
    lines = container.catalog.list_service_lines("ORG-26-090500")
    assert [line.id for line in lines] == ["LIN-26-084729", "LIN-26-091100"]
    assert lines[0].rates["talent.hours"] == Decimal("95")
    assert container.catalog.get_service_line("ORG-26-100200", "LIN-26-084729") is None
    org = container.catalog.get_organization("ORG-26-090500")
    assert org is not None and org.plan_id == "plan_enterprise_annual"


def test_keys_are_found_by_hash_and_revocation_sticks(container: Container) -> None:
    issued = catalog_admin.issue_key(container.catalog, "ORG-26-090500", frozenset({"usage:read"}), "t")
    stored = container.catalog.get_api_key(hash_key(issued.secret))
    assert stored is not None and stored.status == "active"
    assert stored.key_hash != issued.secret
    assert container.catalog.revoke_api_key(issued.key.key_id) is True
    revoked = container.catalog.get_api_key(hash_key(issued.secret))
    assert revoked is not None and revoked.status == "revoked"
    assert container.catalog.revoke_api_key("key_doesnotexist") is False
