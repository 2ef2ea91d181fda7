"""The catalog over DynamoDB: one table, items keyed by owner and kind.

Layout (pk / sk):
- ``METER`` / ``<meter id>``, ``PLAN`` / ``<plan id>``: the platform catalog (small, cached).
- ``ORG#<id>`` / ``ORG``, ``WS#<id>``, ``LIN#<id>``, ``SUB#<plan id>``: an organization's own items.
- ``ID#<id>`` / ``ID``: the guard of a workspace or service-line id, naming its organization; written in
  the same transaction as the item, so no id is ever held by two organizations.
- ``KEY#<sha256>`` / ``KEY``: an API key by its hash; ``KEYID#<key id>`` / ``KEY`` points back to it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from chalicelib.domain.models import ApiKey, Meter, Organization, Plan, ServiceLine, Workspace
from chalicelib.domain.store import Idempotency, IdTakenError
from chalicelib.storage import clients
from chalicelib.storage.cached_catalog import TtlCache
from chalicelib.storage.codec import from_item, key, to_item
from chalicelib.storage.keys import (
    ACTIVE_LINES_SK,
    API_KEY_SK,
    ID_GUARD_SK,
    JOB_CURSOR_SK,
    ORG_SK,
    WORKSPACES_SK,
    api_calls_sk,
    api_key_pk,
    api_key_ref_pk,
    creation_key_sk,
    id_guard_pk,
    job_pk,
    line_sk,
    org_pk,
    plan_subscription_sk,
    workspace_sk,
)

__all__ = ["DynamoCatalogRepository", "IdTakenError", "Idempotency"]

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")
_CACHE_SECONDS = 60.0


class DynamoCatalogRepository:
    """The catalog repository (the CatalogRepository port); meters, plans and organizations are cached
    for a minute per process.

    Conditional writes answer with outcomes (see _create_counted) or IdTakenError; any other AWS error
    is left as botocore raised it, which the operator CLI reports by kind.
    """

    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self._client = client
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}
        # API keys and service lines, which every request reads: kept for a short TTL (storage/cached_catalog.py)
        self.hot: TtlCache[Any] = TtlCache()

    @property
    def client(self) -> DynamoDBClient:
        return self._client or clients.dynamodb()

    # -- reading -------------------------------------------------------------
    def _query(self, pk: str, sk_prefix: str | None = None) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
        }
        if sk_prefix is not None:
            kwargs["KeyConditionExpression"] += " AND begins_with(sk, :sk)"
            kwargs["ExpressionAttributeValues"][":sk"] = {"S": sk_prefix}
        while True:
            page = self.client.query(**kwargs)
            for item in page.get("Items", []):
                yield from_item(item)
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _get(self, pk: str, sk: str) -> dict[str, Any] | None:
        item = self.client.get_item(TableName=self.table_name, Key=key(pk, sk)).get("Item")
        return from_item(item) if item else None

    def _cached(self, name: str, load: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
            if hit and now - hit[0] < _CACHE_SECONDS:
                return hit[1]  # type: ignore[no-any-return]
        value = load()
        with self._lock:
            self._cache[name] = (now, value)
        return value

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
        self.hot.clear()

    @staticmethod
    def _strip(item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if k not in ("pk", "sk", "kind")}

    def list_meters(self) -> list[Meter]:
        return self._cached(
            "meters",
            lambda: sorted((Meter.model_validate(self._strip(i)) for i in self._query("METER")), key=lambda m: m.id),
        )

    def get_meter(self, meter_id: str) -> Meter | None:
        return next((m for m in self.list_meters() if m.id == meter_id), None)

    def get_meter_by_uuid(self, meter_uuid: str) -> Meter | None:
        wanted = meter_uuid.lower()
        return next((m for m in self.list_meters() if m.uuid == wanted), None)

    def list_plans(self) -> list[Plan]:
        return self._cached(
            "plans",
            lambda: sorted((Plan.model_validate(self._strip(i)) for i in self._query("PLAN")), key=lambda p: p.id),
        )

    def get_plan(self, plan_id: str) -> Plan | None:
        return next((p for p in self.list_plans() if p.id == plan_id), None)

    def get_organization(self, organization_id: str) -> Organization | None:
        """An organization (cached for a minute per process, like the plans it points to)."""

        def load() -> Organization | None:
            item = self._get(org_pk(organization_id), ORG_SK)
            return Organization.model_validate(self._strip(item)) if item else None

        return self._cached(f"org:{organization_id}", load)

    def get_organization_plan(self, organization_id: str) -> Plan | None:
        """The plan an organization is on; None for an unknown organization."""
        org = self.get_organization(organization_id)
        return self.get_plan(org.plan_id) if org else None

    def list_workspaces(self, organization_id: str) -> list[Workspace]:
        items = self._query(org_pk(organization_id), workspace_sk(""))
        return sorted((Workspace.model_validate(self._strip(i)) for i in items), key=lambda w: w.id)

    def list_service_lines(self, organization_id: str) -> list[ServiceLine]:
        items = self._query(org_pk(organization_id), line_sk(""))
        return sorted((ServiceLine.model_validate(self._strip(i)) for i in items), key=lambda s: s.id)

    def get_service_line(self, organization_id: str, line_id: str) -> ServiceLine | None:
        """A service line (kept for the cache's TTL once found: a pause takes effect within it)."""

        def load() -> ServiceLine | None:
            item = self._get(org_pk(organization_id), line_sk(line_id))
            return ServiceLine.model_validate(self._strip(item)) if item else None

        line: ServiceLine | None = self.hot.get(f"line:{organization_id}:{line_id}", load)
        return line

    def service_lines_page(
        self, start: dict[str, Any] | None, limit: int
    ) -> tuple[list[ServiceLine], dict[str, Any] | None]:
        """Up to about `limit` service lines of every organization from `start` (a scan page; jobs only)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "kind = :kind",
            "ExpressionAttributeValues": {":kind": {"S": "service_line"}},
            "Limit": limit,
        }
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = self.client.scan(**kwargs)
        lines = [ServiceLine.model_validate(self._strip(from_item(i))) for i in page.get("Items", [])]
        return lines, page.get("LastEvaluatedKey")

    def get_job_cursor(self, job: str) -> dict[str, Any] | None:
        """Where a paged job stopped last time (None: start from the beginning)."""
        item = self._get(job_pk(job), JOB_CURSOR_SK)
        return json.loads(item["cursor"]) if item and item.get("cursor") else None

    def put_job_cursor(self, job: str, cursor: dict[str, Any] | None, at: str) -> None:
        self._put(job_pk(job), JOB_CURSOR_SK, "job", {"cursor": json.dumps(cursor) if cursor else "", "at": at})

    def all_service_lines(self) -> list[ServiceLine]:
        """Every service line of every organization (a scan of the small catalog table; jobs only)."""
        lines: list[ServiceLine] = []
        start: dict[str, Any] | None = None
        while True:
            page, start = self.service_lines_page(start, 1000)
            lines.extend(page)
            if start is None:
                return sorted(lines, key=lambda s: s.id)

    def get_api_key(self, key_hash: str) -> ApiKey | None:
        """An API key by hash (kept for the cache's TTL once found: a revocation takes effect within it)."""

        def load() -> ApiKey | None:
            item = self._get(api_key_pk(key_hash), API_KEY_SK)
            return ApiKey.model_validate(self._strip(item)) if item else None

        api_key: ApiKey | None = self.hot.get(f"key:{key_hash}", load)
        return api_key

    # -- writing (catalog loading, the key command) ---------------------------
    def _put(self, pk: str, sk: str, kind: str, values: dict[str, Any]) -> None:
        self.client.put_item(TableName=self.table_name, Item=to_item({"pk": pk, "sk": sk, "kind": kind, **values}))

    def put_meter(self, meter: Meter) -> None:
        self._put("METER", meter.id, "meter", meter.model_dump(mode="python"))
        self.clear_cache()

    def put_plan(self, plan: Plan) -> None:
        self._put("PLAN", plan.id, "plan", plan.model_dump(mode="python"))
        self.clear_cache()

    def put_organization(self, org: Organization) -> None:
        self._put(org_pk(org.id), ORG_SK, "organization", org.model_dump(mode="json"))
        self._put(
            org_pk(org.id),
            plan_subscription_sk(org.plan_id),
            "subscription",
            {"organization_id": org.id, "plan_id": org.plan_id, "status": "active"},
        )
        self.clear_cache()

    def _guard(self, generated_id: str, organization_id: str, kind: str, new: bool) -> dict[str, Any]:
        """The Put of an id's guard: only if the id is free (new), or free or already this organization's."""
        condition = "attribute_not_exists(pk)" if new else "attribute_not_exists(pk) OR organization_id = :org"
        put: dict[str, Any] = {
            "TableName": self.table_name,
            "Item": to_item(
                {
                    "pk": id_guard_pk(generated_id),
                    "sk": ID_GUARD_SK,
                    "kind": f"{kind}_id",
                    "organization_id": organization_id,
                }
            ),
            "ConditionExpression": condition,
        }
        if not new:
            put["ExpressionAttributeValues"] = to_item({":org": organization_id})
        return {"Put": put}

    def _put_guarded(self, generated_id: str, organization_id: str, sk: str, kind: str, values: dict[str, Any]) -> None:
        """Create or update an organization's item whose id must be globally unique (IdTakenError if not)."""
        item = to_item({"pk": org_pk(organization_id), "sk": sk, "kind": kind, **values})
        try:
            self.client.transact_write_items(
                TransactItems=[
                    self._guard(generated_id, organization_id, kind, new=False),  # type: ignore[list-item]
                    {"Put": {"TableName": self.table_name, "Item": item}},
                ]
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "TransactionCanceledException":
                raise IdTakenError(generated_id) from None
            raise

    def get_id_owner(self, generated_id: str) -> str | None:
        """The organization a workspace or service-line id belongs to, if any."""
        item = self._get(id_guard_pk(generated_id), ID_GUARD_SK)
        return str(item["organization_id"]) if item else None

    def put_workspace(self, ws: Workspace) -> None:
        self._put_guarded(ws.id, ws.organization_id, workspace_sk(ws.id), "workspace", ws.model_dump(mode="json"))

    def put_service_line(self, line: ServiceLine) -> None:
        values = line.model_dump(mode="python")
        values["created_at"] = line.created_at.isoformat()
        self._put_guarded(line.id, line.organization_id, line_sk(line.id), "service_line", values)
        self.hot.forget(f"line:{line.organization_id}:{line.id}")

    # -- service lines under the plan's active-line limit ------------------------
    def _counter_update(
        self, organization_id: str, delta: int, limit: int | None, counter: str = ACTIVE_LINES_SK
    ) -> dict[str, Any]:
        update: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": key(org_pk(organization_id), counter),
            "UpdateExpression": "ADD active :d",
            "ExpressionAttributeValues": {":d": {"N": str(delta)}},
        }
        if limit is not None and delta > 0:
            update["ConditionExpression"] = "attribute_not_exists(active) OR active < :limit"
            update["ExpressionAttributeValues"][":limit"] = {"N": str(limit)}
        return update

    def _create_counted(
        self,
        organization_id: str,
        generated_id: str,
        sk: str,
        kind: str,
        values: dict[str, Any],
        limit: int | None,
        counter: str,
        idempotency: Idempotency | None = None,
    ) -> str | None:
        """Store a new item of an organization, its id's guard, its count against a limit and, with a key,
        the key's record, atomically.

        Returns None when stored, "replay" when the key was used before (nothing written), "limit" when the
        limit is reached, "exists" when the id is taken (by this organization or any other).
        """
        item = to_item({"pk": org_pk(organization_id), "sk": sk, "kind": kind, **values})
        actions: list[dict[str, Any]] = [
            {"Update": self._counter_update(organization_id, 1, limit, counter)},
            {"Put": {"TableName": self.table_name, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}},
            self._guard(generated_id, organization_id, kind, new=True),
        ]
        if idempotency is not None:
            record = {
                "pk": org_pk(organization_id),
                "sk": creation_key_sk(kind, idempotency.key),
                "kind": "creation_key",
                "target_id": generated_id,
                "payload_hash": idempotency.payload_hash,
            }
            actions.append(
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": to_item(record),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=actions)  # type: ignore[arg-type]
            return None
        except ClientError as err:
            reasons = err.response.get("CancellationReasons", [])  # type: ignore[typeddict-item]
            if err.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            failed = [i for i, reason in enumerate(reasons) if reason.get("Code") == "ConditionalCheckFailed"]
            if 3 in failed:
                return "replay"
            if 1 in failed or 2 in failed:
                return "exists"
            if 0 in failed:
                return "limit"
            raise

    def get_creation_key(self, organization_id: str, kind: str, key: str) -> Idempotency | None:
        """What a creation's idempotency key was first used for: the id it created and the payload's hash."""
        item = self._get(org_pk(organization_id), creation_key_sk(kind, key))
        if item is None:
            return None
        return Idempotency(key, str(item["payload_hash"]), str(item["target_id"]))

    def create_service_line(
        self, line: ServiceLine, active_limit: int | None, idempotency: Idempotency | None = None
    ) -> str | None:
        """A new active line under the plan's active-line limit (see _create_counted for the outcomes)."""
        values = line.model_dump(mode="python")
        values["created_at"] = line.created_at.isoformat()
        return self._create_counted(
            line.organization_id,
            line.id,
            line_sk(line.id),
            "service_line",
            values,
            active_limit,
            ACTIVE_LINES_SK,
            idempotency,
        )

    def set_service_line_status(
        self, organization_id: str, line_id: str, status: str, active_limit: int | None
    ) -> str | None:
        """Pause or resume a line, keeping the active count; None when done, "limit" or "unchanged" otherwise."""
        self.hot.forget(f"line:{organization_id}:{line_id}")
        delta = 1 if status == "active" else -1
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {"Update": self._counter_update(organization_id, delta, active_limit)},  # type: ignore[typeddict-item]
                    {
                        "Update": {
                            "TableName": self.table_name,
                            "Key": key(org_pk(organization_id), line_sk(line_id)),
                            "UpdateExpression": "SET #s = :new",
                            "ConditionExpression": "attribute_exists(pk) AND #s <> :new",
                            "ExpressionAttributeNames": {"#s": "status"},
                            "ExpressionAttributeValues": {":new": {"S": status}},
                        }
                    },
                ]
            )
            self.hot.forget(f"line:{organization_id}:{line_id}")  # a read racing the write may have kept the old
            return None
        except ClientError as err:
            if err.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            reasons = err.response.get("CancellationReasons", [])  # type: ignore[typeddict-item]
            if len(reasons) > 1 and reasons[1].get("Code") == "ConditionalCheckFailed":
                return "unchanged"
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                return "limit"
            raise

    def create_workspace(self, ws: Workspace, limit: int | None, idempotency: Idempotency | None = None) -> str | None:
        """A new workspace under the plan's workspace limit (see _create_counted for the outcomes)."""
        return self._create_counted(
            ws.organization_id,
            ws.id,
            workspace_sk(ws.id),
            "workspace",
            ws.model_dump(),
            limit,
            WORKSPACES_SK,
            idempotency,
        )

    def recount_workspaces(self, organization_id: str) -> int:
        """Reset the workspace counter from the workspaces themselves (catalog loading only)."""
        count = len(self.list_workspaces(organization_id))
        self._put(org_pk(organization_id), WORKSPACES_SK, "counter", {"active": count})
        return count

    def recount_active_lines(self, organization_id: str) -> int:
        """Reset the active-line counter from the lines themselves (catalog loading only)."""
        active = sum(1 for line in self.list_service_lines(organization_id) if line.status == "active")
        self._put(org_pk(organization_id), ACTIVE_LINES_SK, "counter", {"active": active})
        return active

    # -- API calls per organization and month -----------------------------------
    def get_api_calls(self, organization_id: str, month: str) -> int:
        item = self._get(org_pk(organization_id), api_calls_sk(month))
        return int(item["calls"]) if item else 0

    def add_api_calls(self, organization_id: str, month: str, calls: int) -> int:
        """Add to an organization's call count for a month; returns the new total."""
        response = self.client.update_item(
            TableName=self.table_name,
            Key=key(org_pk(organization_id), api_calls_sk(month)),
            UpdateExpression="ADD calls :n",
            ExpressionAttributeValues={":n": {"N": str(calls)}},
            ReturnValues="UPDATED_NEW",
        )
        return int(response["Attributes"]["calls"]["N"])

    def put_api_key(self, api_key: ApiKey) -> None:
        values = api_key.model_dump(mode="json")
        self._put(api_key_pk(api_key.key_hash), API_KEY_SK, "api_key", values)
        self.hot.forget(f"key:{api_key.key_hash}")
        self._put(api_key_ref_pk(api_key.key_id), API_KEY_SK, "api_key_ref", {"key_hash": api_key.key_hash})

    def list_api_keys(self, organization_id: str | None = None) -> list[ApiKey]:
        """The stage's API keys (optionally one organization's), by organization then creation time.

        One Scan of the catalog table for the keys' hashes (the table holds no usage and stays
        small), then each key read as the service reads it.
        """
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "#kind = :kind",
            "ProjectionExpression": "key_hash",
            "ExpressionAttributeNames": {"#kind": "kind"},
            "ExpressionAttributeValues": {":kind": {"S": "api_key"}},
        }
        found: list[ApiKey] = []
        while True:
            page = self.client.scan(**kwargs)
            for raw in page.get("Items", []):
                api_key = self.get_api_key(raw["key_hash"]["S"])
                if api_key is not None:
                    found.append(api_key)
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(
            (k for k in found if organization_id is None or k.organization_id == organization_id),
            key=lambda k: (k.organization_id, k.created_at, k.key_id),
        )

    def revoke_api_key(self, key_id: str) -> bool:
        ref = self._get(api_key_ref_pk(key_id), API_KEY_SK)
        if ref is None:
            return False
        self.client.update_item(
            TableName=self.table_name,
            Key=key(api_key_pk(ref["key_hash"]), API_KEY_SK),
            UpdateExpression="SET #s = :revoked",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":revoked": {"S": "revoked"}},
        )
        self.hot.forget(f"key:{ref['key_hash']}")
        return True
