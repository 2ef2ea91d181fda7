"""Routes of workspaces (plan-gated) and of the agent-credit entitlement (document 001)."""

from __future__ import annotations

from chalice.app import Blueprint

from chalicelib.api.http import IDEMPOTENCY_HEADER_DOC, Call, Reply, endpoint
from chalicelib.api.schemas import AgentCreditsEnvelope, WorkspaceCreate, WorkspaceEnvelope, WorkspaceListPublic
from chalicelib.domain.auth import CATALOG_READ, METERING_WRITE, WORKSPACES_WRITE
from chalicelib.domain.models import Workspace
from chalicelib.services import entitlements, workspaces

bp = Blueprint(__name__)


def _public(workspace: Workspace) -> dict[str, str]:
    return workspace.model_dump(mode="json")


@endpoint(
    bp,
    "/v1/workspaces",
    methods=("POST",),
    scope=WORKSPACES_WRITE,
    max_body_bytes=4096,
    body=WorkspaceCreate,
    responses={201: WorkspaceEnvelope, 200: WorkspaceEnvelope},
    headers=IDEMPOTENCY_HEADER_DOC,
)
def create_workspace(call: Call) -> Reply:
    """Create a workspace; 403 plan_limit_exceeded past the plan's workspace limit."""
    body = call.body_as(WorkspaceCreate)
    created, replay = workspaces.create_workspace(
        call.container.catalog, call.organization_id, body.name, call.container.clock(), call.idempotency_header()
    )
    return Reply({"data": _public(created)}, 200 if replay else 201)


@endpoint(bp, "/v1/workspaces", scope=CATALOG_READ, responses={200: WorkspaceListPublic})
def list_workspaces(call: Call) -> Reply:
    """The organization's workspaces."""
    found = workspaces.list_workspaces(call.container.catalog, call.organization_id)
    return Reply({"data": [_public(w) for w in found], "meta": {"cursor": None, "has_more": False}})


@endpoint(bp, "/v1/entitlements/agent-credits", scope=METERING_WRITE, responses={200: AgentCreditsEnvelope})
def agent_credits(call: Call) -> Reply:
    """Whether this month's agent credits allow another run (1 credit = 1 agent run); 429 when they do not."""
    now = call.container.clock()
    credits = entitlements.agent_credits(call.container.catalog, call.container.rollups, call.organization_id, now)
    entitlements.require_agent_credit(credits, now)
    return Reply(
        {
            "data": {
                "organization_id": credits.organization_id,
                "month": credits.month,
                "limit": credits.limit,
                "used": credits.used,
                "remaining": credits.remaining,
                "allowed": credits.allowed,
                "resets_at": credits.resets_at.isoformat().replace("+00:00", "Z"),
            }
        }
    )
