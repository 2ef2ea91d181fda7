"""Tenant isolation by construction: generated ids are globally unique, and every item an
organization owns is keyed by that organization, so even a colliding line id mixes nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import simplejson

from chalicelib.container import Container
from chalicelib.domain.models import ServiceLine, Workspace
from chalicelib.storage import clients
from chalicelib.storage.catalog_repo import IdTakenError
from chalicelib.storage.codec import from_item, to_item
from chalicelib.storage.keys import line_sk, org_pk
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, auth
from tests.support import Clock, body, run_aggregator

ORG_A = "ORG-26-090500"  # the demo enterprise organization (FULL_KEY)
ORG_B = "ORG-26-100200"  # the demo starter organization (OTHER_ORG_KEY)
WORKSPACE_A = "WS-26-000101"
WORKSPACE_B = "WS-26-000201"
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
DAYS = [date(2026, 5, d) for d in (2, 5, 9)]


@pytest.fixture
def clock(container: Container) -> Clock:
    fixed = Clock(NOW)
    container.clock = fixed
    return fixed


def force_draws(monkeypatch: pytest.MonkeyPatch, *draws: int) -> None:
    """Make the service-line id draw return these numbers (then repeat the last): a collision on demand."""
    queue = list(draws)

    def randbelow(_: int) -> int:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    monkeypatch.setattr("chalicelib.services.service_lines.secrets.randbelow", randbelow)


def create_line(client: Any, key: str, workspace: str) -> Any:
    payload = {"workspace_id": workspace, "name": "Squad", "product_line": "talent", "rates": {"talent.hours": 95}}
    return client.http.post("/v1/service-lines", headers=auth(key), body=simplejson.dumps(payload))


def ingest(client: Any, key: str, line: str, quantity: str, day: date, idem: str) -> None:
    event = {
        "service_line_id": line,
        "meter": "talent.hours",
        "quantity": Decimal(quantity),
        "period_date": day.isoformat(),
        "idempotency_key": idem,
        "metadata": {"ticket": idem},
    }
    response = client.http.post(
        "/v1/metering/events", headers=auth(key), body=simplejson.dumps(event, use_decimal=True)
    )
    assert response.status_code == 201, response.body


def summary(client: Any, key: str) -> dict[str, Any]:
    response = client.http.get("/v1/usage/summary?from=2026-05-01&to=2026-05-31", headers=auth(key))
    assert response.status_code == 200, response.body
    data: dict[str, Any] = body(response)["data"]
    return data


def listing(client: Any, key: str) -> list[dict[str, Any]]:
    response = client.http.get("/v1/usage?from=2026-05-01&to=2026-05-31&limit=100", headers=auth(key))
    assert response.status_code == 200, response.body
    data: list[dict[str, Any]] = body(response)["data"]
    return data


def test_a_line_id_another_organization_holds_is_never_handed_out(
    client: Any, container: Container, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_draws(monkeypatch, 123456)
    response = create_line(client, FULL_KEY, WORKSPACE_A)
    assert response.status_code == 201, response.body
    taken = body(response)["data"]["id"]
    assert taken == "LIN-26-223456"

    force_draws(monkeypatch, 123456, 123456, 654321)  # B's first two draws collide with A's id
    response = create_line(client, OTHER_ORG_KEY, WORKSPACE_B)
    assert response.status_code == 201, response.body
    assert body(response)["data"]["id"] == "LIN-26-754321"
    assert container.catalog.get_id_owner(taken) == ORG_A
    assert container.catalog.get_id_owner("LIN-26-754321") == ORG_B


def test_when_every_draw_collides_the_create_is_refused_and_nothing_is_written(
    client: Any, container: Container, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_draws(monkeypatch, 123456)
    assert create_line(client, FULL_KEY, WORKSPACE_A).status_code == 201
    before = [line.id for line in container.catalog.list_service_lines(ORG_B)]

    response = create_line(client, OTHER_ORG_KEY, WORKSPACE_B)  # every draw is A's id

    assert response.status_code == 503, response.body
    assert body(response)["error"]["code"] == "service_unavailable"
    assert [line.id for line in container.catalog.list_service_lines(ORG_B)] == before
    assert container.catalog.get_id_owner("LIN-26-223456") == ORG_A


def test_a_workspace_or_line_id_of_another_organization_is_refused_by_the_catalog(container: Container) -> None:
    with pytest.raises(IdTakenError):
        container.catalog.put_workspace(Workspace(id=WORKSPACE_A, organization_id=ORG_B, name="Mine now"))
    line = container.catalog.get_service_line(ORG_A, "LIN-26-084729")
    assert line is not None
    with pytest.raises(IdTakenError):
        container.catalog.put_service_line(line.model_copy(update={"organization_id": ORG_B}))
    assert [w.id for w in container.catalog.list_workspaces(ORG_B)] == [WORKSPACE_B]
    assert "LIN-26-084729" not in {line.id for line in container.catalog.list_service_lines(ORG_B)}
    # Writing an organization's own item again (the demo loader, the CLI) is an update, not a conflict.
    container.catalog.put_workspace(Workspace(id=WORKSPACE_A, organization_id=ORG_A, name="Renamed"))


def collide(container: Container, line_id: str) -> None:
    """Give organization B a line with A's id behind the guard's back: the collision the guard prevents."""
    line = ServiceLine(
        id=line_id,
        organization_id=ORG_B,
        workspace_id=WORKSPACE_B,
        name="Colliding line",
        product_line="talent",
        status="active",
        currency="USD",
        rates={"talent.hours": Decimal("95")},
        created_at=NOW,
    )
    values = line.model_dump(mode="python")
    values["created_at"] = NOW.isoformat()
    item = {"pk": org_pk(ORG_B), "sk": line_sk(line_id), "kind": "service_line", **values}
    clients.dynamodb().put_item(TableName=container.catalog.table_name, Item=to_item(item))


def test_even_a_colliding_line_id_mixes_no_data(client: Any, container: Container, clock: Clock) -> None:
    shared = "LIN-26-084729"  # A's talent line; B gets the same id by force
    collide(container, shared)
    for index, day in enumerate(DAYS):
        ingest(client, FULL_KEY, shared, f"{index + 1}.25", day, f"a-{index}")
    run_aggregator(client, container)
    a_before = summary(client, FULL_KEY)
    a_listing = listing(client, FULL_KEY)

    ingest(client, OTHER_ORG_KEY, shared, "1000", DAYS[1], "b-0")
    run_aggregator(client, container)

    assert summary(client, FULL_KEY) == a_before
    assert listing(client, FULL_KEY) == a_listing
    b_events = listing(client, OTHER_ORG_KEY)
    assert [(e["service_line_id"], e["quantity"]) for e in b_events] == [(shared, Decimal(1000))]
    b_line = next(e for e in summary(client, OTHER_ORG_KEY)["by_service_line"] if e["service_line_id"] == shared)
    assert b_line["meters"] == [
        {"meter": "talent.hours", "quantity": Decimal(1000), "unit": "hours", "aggregation": "sum"}
    ]
    assert b_line["cost_estimate"] == Decimal("95000.00")


def partition_keys_by_org(container: Container) -> dict[str, set[str]]:
    """Every partition key (table and index) of every organization-owned item, by organization."""
    owned: dict[str, set[str]] = {}
    for table in (container.events.table_name, container.rollups.table_name):
        for page in clients.dynamodb().get_paginator("scan").paginate(TableName=table):
            for raw in page["Items"]:
                item = from_item(raw)
                org = item.get("organization_id")
                if org is None or item["pk"].startswith(("PENDING#", "APPLIED#")):
                    continue
                keys = owned.setdefault(str(org), set())
                keys.add(f"{table}:{item['pk']}")
                if "gsi1pk" in item:
                    keys.add(f"{table}/index:{item['gsi1pk']}")
    return owned


def test_two_organizations_items_never_share_a_partition_key(client: Any, container: Container, clock: Clock) -> None:
    shared = "LIN-26-084729"
    collide(container, shared)
    for index, day in enumerate(DAYS):
        ingest(client, FULL_KEY, shared, "2", day, f"a-{index}")
        ingest(client, OTHER_ORG_KEY, shared, "3", day, f"a-{index}")  # the same idempotency key too
        ingest(client, OTHER_ORG_KEY, "LIN-26-100201", "4", day, f"b-{index}")
    run_aggregator(client, container)

    owned = partition_keys_by_org(container)
    assert set(owned) == {ORG_A, ORG_B}
    assert owned[ORG_A] and owned[ORG_B]
    assert not owned[ORG_A] & owned[ORG_B]
    for org, keys in owned.items():
        assert all(org in key for key in keys), keys
