"""Workspaces: create and list, gated by the plan's workspace limit (document 001)."""

from __future__ import annotations

import secrets
from datetime import datetime

from chalicelib.domain.models import Workspace
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services.ports import CatalogRepository
from chalicelib.services.service_lines import creation_key, plan_of, replayed_id

ID_DRAWS = 5


def list_workspaces(catalog: CatalogRepository, organization_id: str) -> list[Workspace]:
    return catalog.list_workspaces(organization_id)


def create_workspace(
    catalog: CatalogRepository, organization_id: str, name: str, now: datetime, idempotency_key: str | None = None
) -> tuple[Workspace, bool]:
    """Create a workspace if the plan allows one more; its WS-yy-NNNNNN id is globally unique.

    With an idempotency key, a retry returns the workspace it created (True: a replay); see create_line.
    """
    idempotency = creation_key(idempotency_key, {"name": name})
    plan = plan_of(catalog, organization_id)
    limit = plan.limits.workspaces
    for _ in range(ID_DRAWS):
        workspace = Workspace(
            id=f"WS-{now:%y}-{secrets.randbelow(900000) + 100000}", organization_id=organization_id, name=name
        )
        outcome = catalog.create_workspace(workspace, limit, idempotency)
        if outcome is None:
            return workspace, False
        if outcome == "replay" and idempotency is not None:
            made = replayed_id(catalog, organization_id, "workspace", idempotency)
            return next(w for w in catalog.list_workspaces(organization_id) if w.id == made), True
        if outcome == "limit":
            raise MeteringError(
                ErrorCode.PLAN_LIMIT_EXCEEDED,
                f"Plan '{plan.id}' allows {limit} workspace{'' if limit == 1 else 's'}.",
                details={"limit": "workspaces", "plan_id": plan.id, "max": limit},
            )
    raise MeteringError(ErrorCode.SERVICE_UNAVAILABLE, "Could not allocate a workspace id; retry.")
