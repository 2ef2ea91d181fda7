"""Loading the catalog and demo data, and creating or revoking API keys."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

from chalicelib import catalog as catalog_data
from chalicelib.domain.auth import hash_key, key_id_for, new_key_secret, parse_scopes
from chalicelib.domain.models import ApiKey, Meter, Organization, Plan, ServiceLine, Workspace
from chalicelib.services.ports import CatalogWriter


@dataclass(frozen=True)
class IssuedKey:
    """A key as handed to its owner once: the secret is never stored."""

    secret: str
    key: ApiKey


def load_platform_catalog(repo: CatalogWriter) -> tuple[int, int]:
    """Write the meters and plans of the repo's catalog; returns (meters, plans) written."""
    meters = [Meter.model_validate(m) for m in catalog_data.read("meters")]
    plans = [Plan.model_validate(p) for p in catalog_data.read("plans")]
    for meter in meters:
        repo.put_meter(meter)
    for plan in plans:
        repo.put_plan(plan)
    return len(meters), len(plans)


def issue_key(
    repo: CatalogWriter,
    organization_id: str,
    scopes: frozenset[str],
    name: str,
    secret: str | None = None,
    now: datetime | None = None,
) -> IssuedKey:
    """Create an API key bound to one organization; the secret is returned, only its hash stored."""
    secret = secret or new_key_secret()
    api_key = ApiKey(
        key_id=key_id_for(secret),
        key_hash=hash_key(secret),
        organization_id=organization_id,
        scopes=scopes,
        name=name,
        created_at=now or datetime.now(UTC),
    )
    repo.put_api_key(api_key)
    return IssuedKey(secret=secret, key=api_key)


def load_demo_data(repo: CatalogWriter) -> dict[str, IssuedKey]:
    """The demo organizations, workspaces, service lines and keys; keys pinned by DEMO_* variables."""
    demo = catalog_data.read("demo")
    for org in demo["organizations"]:
        repo.put_organization(Organization.model_validate(org))
    for ws in demo["workspaces"]:
        repo.put_workspace(Workspace.model_validate(ws))
    for line in demo["service_lines"]:
        repo.put_service_line(ServiceLine.model_validate(line))
    for org in demo["organizations"]:
        repo.recount_active_lines(org["id"])
        repo.recount_workspaces(org["id"])
    keys: dict[str, IssuedKey] = {}
    for spec in demo["api_keys"]:
        secret = os.environ.get(spec["env"]) or spec["default"]
        keys[spec["env"]] = issue_key(
            repo, spec["organization_id"], parse_scopes(spec["scopes"]), spec["name"], secret=secret
        )
    return keys
