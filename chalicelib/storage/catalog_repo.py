"""The catalog over DynamoDB: one table, items keyed by owner and kind.

Layout (pk / sk):
- ``METER`` / ``<meter id>``, ``PLAN`` / ``<plan id>``: the platform catalog (small, cached).
- ``ORG#<id>`` / ``ORG``, ``WS#<id>``, ``LIN#<id>``, ``SUB#<plan id>``: an organization's own items.
- ``KEY#<sha256>`` / ``KEY``: an API key by its hash; ``KEYID#<key id>`` / ``KEY`` points back to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from chalicelib.domain.models import ApiKey, Meter, Organization, Plan, ServiceLine, Workspace
from chalicelib.storage import clients
from chalicelib.storage.codec import from_item, key, to_item

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")
_CACHE_SECONDS = 60.0


class DynamoCatalogRepository:
    """The catalog repository; meters and plans are cached for a minute per process."""

    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self.table_name = table_name
        self._client = client
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}

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
        item = self._get(f"ORG#{organization_id}", "ORG")
        return Organization.model_validate(self._strip(item)) if item else None

    def list_workspaces(self, organization_id: str) -> list[Workspace]:
        items = self._query(f"ORG#{organization_id}", "WS#")
        return sorted((Workspace.model_validate(self._strip(i)) for i in items), key=lambda w: w.id)

    def list_service_lines(self, organization_id: str) -> list[ServiceLine]:
        items = self._query(f"ORG#{organization_id}", "LIN#")
        return sorted((ServiceLine.model_validate(self._strip(i)) for i in items), key=lambda s: s.id)

    def get_service_line(self, organization_id: str, line_id: str) -> ServiceLine | None:
        item = self._get(f"ORG#{organization_id}", f"LIN#{line_id}")
        return ServiceLine.model_validate(self._strip(item)) if item else None

    def all_service_lines(self) -> list[ServiceLine]:
        """Every service line of every organization (a scan of the small catalog table; jobs only)."""
        lines: list[ServiceLine] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "kind = :kind",
            "ExpressionAttributeValues": {":kind": {"S": "service_line"}},
        }
        while True:
            page = self.client.scan(**kwargs)
            lines.extend(ServiceLine.model_validate(self._strip(from_item(i))) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return sorted(lines, key=lambda s: s.id)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get_api_key(self, key_hash: str) -> ApiKey | None:
        item = self._get(f"KEY#{key_hash}", "KEY")
        return ApiKey.model_validate(self._strip(item)) if item else None

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
        self._put(f"ORG#{org.id}", "ORG", "organization", org.model_dump(mode="json"))
        self._put(
            f"ORG#{org.id}",
            f"SUB#{org.plan_id}",
            "subscription",
            {"organization_id": org.id, "plan_id": org.plan_id, "status": "active"},
        )

    def put_workspace(self, ws: Workspace) -> None:
        self._put(f"ORG#{ws.organization_id}", f"WS#{ws.id}", "workspace", ws.model_dump(mode="json"))

    def put_service_line(self, line: ServiceLine) -> None:
        values = line.model_dump(mode="python")
        values["created_at"] = line.created_at.isoformat()
        self._put(f"ORG#{line.organization_id}", f"LIN#{line.id}", "service_line", values)

    def put_api_key(self, api_key: ApiKey) -> None:
        values = api_key.model_dump(mode="json")
        self._put(f"KEY#{api_key.key_hash}", "KEY", "api_key", values)
        self._put(f"KEYID#{api_key.key_id}", "KEY", "api_key_ref", {"key_hash": api_key.key_hash})

    def revoke_api_key(self, key_id: str) -> bool:
        ref = self._get(f"KEYID#{key_id}", "KEY")
        if ref is None:
            return False
        self.client.update_item(
            TableName=self.table_name,
            Key=key(f"KEY#{ref['key_hash']}", "KEY"),
            UpdateExpression="SET #s = :revoked",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":revoked": {"S": "revoked"}},
        )
        return True
