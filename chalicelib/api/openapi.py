"""The OpenAPI 3.1 document, generated from the routes' pydantic models (never written twice)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from chalice.app import Blueprint, Response
from pydantic import BaseModel

from chalicelib import jsonutil
from chalicelib.api.http import ANY_CONTENT_TYPE, ROUTES, RouteDoc

bp = Blueprint(__name__)

ERROR_STATUSES = {
    400: "The request is invalid (the body names the field).",
    401: "A valid API key is required.",
    403: "The key lacks a scope, or the plan does not allow this.",
    404: "Not found for this organization.",
    409: "Conflicts with the current state (an idempotency key reused with another payload...).",
    413: "The request body is too large.",
    422: "The request cannot be applied (archived meter, meter not permitted...).",
    429: "The organization's monthly API calls are used up.",
    500: "An internal error.",
    503: "Temporarily unavailable; retry.",
}
_PATH_PARAM = re.compile(r"{(\w+)}")

# The monthly API-call quota, on every response of an organization whose plan has a limit.
RATE_LIMIT_HEADERS: dict[str, dict[str, Any]] = {
    "X-RateLimit-Limit": {
        "description": "The plan's API calls per calendar month (UTC); only for plans with a limit.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Remaining": {
        "description": "Calls left this month, as this server knows it (concurrent servers may lag by a few).",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Reset": {
        "description": "When the count starts again: the Unix time (seconds) of the next month's first second, UTC.",
        "schema": {"type": "integer"},
    },
}
RETRY_AFTER = {
    "description": "Seconds until calls are allowed again (the start of the next month, UTC).",
    "schema": {"type": "integer", "minimum": 1},
}


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        name = model.__name__
        if name not in self.schemas:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
            self.schemas.update(schema.pop("$defs", {}))
            self.schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}


def _param_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without `null` (a parameter is absent rather than null)."""
    options = schema.get("anyOf")
    if options:
        kept = [o for o in options if o.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return {**(kept[0] if len(kept) == 1 else {"anyOf": kept}), **rest}
    return {k: v for k, v in schema.items() if k != "default"}


def _operation(route: RouteDoc, components: _Components) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in _PATH_PARAM.findall(route.path)
    ]
    if route.query is not None:
        properties = route.query.model_json_schema(mode="validation").get("properties", {})
        for name, field in route.query.model_fields.items():
            alias = field.alias or name
            param: dict[str, Any] = {
                "name": alias,
                "in": "query",
                "required": field.is_required(),
                "schema": _param_schema(properties.get(alias, {})),
            }
            if field.description:
                param["description"] = field.description
            parameters.append(param)
    for header, description in route.headers.items():
        parameters.append(
            {
                "name": header,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": description,
            }
        )
    content_type = route.dialect.content_type
    responses: dict[str, Any] = {}
    quota_headers = {name: {"$ref": f"#/components/headers/{name}"} for name in RATE_LIMIT_HEADERS}
    for status, model in sorted(route.responses.items()):
        response: dict[str, Any] = {"description": "Success" if status < 300 else str(status)}
        if model is not None:
            response["content"] = {content_type: {"schema": components.ref(model)}}
        if status < 300:
            response["headers"] = dict(quota_headers)
        responses[str(status)] = response
    error_model = getattr(route.dialect, "error_model", None)
    for status, description in ERROR_STATUSES.items():
        response = {"description": description}
        if error_model is not None:
            response["content"] = {content_type: {"schema": components.ref(error_model)}}
        if status == 429:
            response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}, **quota_headers}
        responses.setdefault(str(status), response)
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "security": [{"bearerAuth": []}],
        "parameters": parameters,
        "responses": responses,
    }
    if route.scope:
        operation["description"] = f"Requires an API key with the `{route.scope}` scope."
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": components.ref(route.body)}},
        }
    return operation


def build_document(routes: list[RouteDoc] | None = None) -> dict[str, Any]:
    """The OpenAPI document of every registered route."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes if routes is not None else ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Usage metering API",
            "version": "1.0.0",
            "description": "Native usage and metering API (Scrums.com documents 000/001) and the meter API, "
            "Metronome and Scalr dialects over the same event store. A request body is read as JSON whatever "
            "its Content-Type (or none). An unknown path is a 404 `not_found` and a method a path does not "
            "serve a 405 `method_not_allowed` (with `Allow`), in the error envelope of the dialect that owns "
            "the path.",
        },
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "headers": {"Retry-After": RETRY_AFTER, **RATE_LIMIT_HEADERS},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


@lru_cache(maxsize=1)
def _document_text() -> str:
    return jsonutil.dumps(build_document())


@bp.route("/openapi.json", methods=["GET"], content_types=ANY_CONTENT_TYPE)
def openapi_document() -> Response:
    """The OpenAPI document (no key needed)."""
    return Response(body=_document_text(), status_code=200, headers={"Content-Type": "application/json"})
