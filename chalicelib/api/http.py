"""The HTTP edge shared by every route: authentication, parsing, rendering, errors.

Chalice turns an exception raised in a route into its own response before
middleware sees it, so every route goes through `endpoint`, which maps the
service's errors (by class) to the route's dialect in one place.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from chalice.app import Blueprint, Response
from pydantic import BaseModel, ValidationError

from chalicelib import jsonutil
from chalicelib.api.schemas import ErrorPublic
from chalicelib.container import Container, get_container
from chalicelib.domain.auth import hash_key
from chalicelib.domain.models import Principal
from chalicelib.errors import ErrorCode, MeteringError, validation_error

log = logging.getLogger("usage-metering.http")
M = TypeVar("M", bound=BaseModel)

JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    """What a route returns: a status, a JSON-able body and extra headers."""

    body: Any
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = JSON


class Dialect(Protocol):
    """How one API dialect shapes its error bodies (and, for the OpenAPI document, their model)."""

    content_type: str

    def error_body(self, error: MeteringError, request_id: str) -> Any: ...


class NativeDialect:
    """The native envelope: {"error": {"code", "message", "field"?, "request_id"}}."""

    content_type = JSON
    error_model: type[BaseModel] = ErrorPublic

    def error_body(self, error: MeteringError, request_id: str) -> Any:
        return {"error": {**error.to_dict(), "request_id": request_id}}


NATIVE = NativeDialect()


@dataclass(frozen=True)
class RouteDoc:
    """What the OpenAPI document says of a route: its models, scope and dialect."""

    path: str
    method: str
    name: str
    summary: str
    scope: str | None
    dialect: Dialect
    query: type[BaseModel] | None
    body: type[BaseModel] | None
    responses: Mapping[int, type[BaseModel] | None]
    headers: Mapping[str, str]


ROUTES: list[RouteDoc] = []


@dataclass(frozen=True)
class Call:
    """One parsed request as a use case sees it."""

    request_id: str
    principal: Principal
    query: Mapping[str, str]
    headers: Mapping[str, str]
    raw_body: bytes
    path: Mapping[str, str]
    container: Container
    max_body_bytes: int

    @property
    def organization_id(self) -> str:
        return self.principal.organization_id

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON (numbers exact); a clear 400 or 413 when it is not."""
        if len(self.raw_body) > self.max_body_bytes:
            raise MeteringError(ErrorCode.PAYLOAD_TOO_LARGE, f"The request body exceeds {self.max_body_bytes} bytes.")
        if not self.raw_body.strip():
            raise MeteringError(ErrorCode.INVALID_JSON, "The request body is empty; a JSON object is required.")
        try:
            return jsonutil.loads(self.raw_body)
        except jsonutil.JsonParseError as exc:
            raise MeteringError(ErrorCode.INVALID_JSON, f"The request body is not valid JSON: {exc}") from exc

    def body_as(self, model: type[M]) -> M:
        return parse_model(model, self.json())

    def query_as(self, model: type[M]) -> M:
        return parse_model(model, dict(self.query))


def parse_model(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate data into a model; the first failure becomes a 400 naming its field."""
    if not isinstance(data, dict):
        raise MeteringError(ErrorCode.VALIDATION_ERROR, "A JSON object is required.", field=prefix or "body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix) from None


def from_validation_error(exc: ValidationError, prefix: str = "") -> MeteringError:
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"]) or "body"
    name = f"{prefix}.{loc}" if prefix else loc
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return validation_error(name, message)


def authenticate(container: Container, authorization: str | None) -> Principal:
    """The caller behind an `Authorization: Bearer <key>` header, or 401."""
    if not authorization:
        raise MeteringError(ErrorCode.UNAUTHORIZED, "Missing Authorization header (Bearer <api key>).")
    scheme, _, secret = authorization.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret or len(secret) > 256:
        raise MeteringError(ErrorCode.UNAUTHORIZED, "The Authorization header must be 'Bearer <api key>'.")
    api_key = container.catalog.get_api_key(hash_key(secret))
    if api_key is None or api_key.status != "active":
        raise MeteringError(ErrorCode.UNAUTHORIZED, "The API key is unknown or revoked.")
    return Principal(organization_id=api_key.organization_id, key_id=api_key.key_id, scopes=api_key.scopes)


def _as_bytes(raw: str | bytes | None) -> bytes:
    if raw is None:
        return b""
    return raw.encode("utf-8") if isinstance(raw, str) else raw


def render(status: int, body: Any, content_type: str, request_id: str, headers: Mapping[str, str] = {}) -> Response:
    return Response(
        body=jsonutil.dumps(body),
        status_code=status,
        headers={"Content-Type": content_type, "X-Request-Id": request_id, **headers},
    )


def endpoint(
    bp: Blueprint,
    path: str,
    *,
    methods: tuple[str, ...] = ("GET",),
    scope: str | None,
    dialect: Dialect = NATIVE,
    max_body_bytes: int | None = None,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    responses: Mapping[int, type[BaseModel] | None] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Callable[[Callable[[Call], Reply]], Callable[[Call], Reply]]:
    """Register a route whose function takes a `Call` and returns a `Reply`.

    `query`, `body`, `responses` (status -> model) and `headers` (request headers the
    route reads, name -> description) feed the OpenAPI document; they do not validate.
    """

    def decorate(fn: Callable[[Call], Reply]) -> Callable[[Call], Reply]:
        for method in methods:
            ROUTES.append(
                RouteDoc(
                    path=path,
                    method=method.lower(),
                    name=fn.__name__,
                    summary=(fn.__doc__ or fn.__name__).strip().splitlines()[0],
                    scope=scope,
                    dialect=dialect,
                    query=query,
                    body=body,
                    responses=responses or {200: None},
                    headers=headers or {},
                )
            )

        def view(**path_params: str) -> Response:
            request = bp.current_request
            context = request.context or {}
            request_id = str(context.get("requestId") or uuid.uuid4())
            started = time.monotonic()
            organization_id = None
            try:
                container = get_container()
                headers = {k.lower(): v for k, v in (request.headers or {}).items()}
                principal = authenticate(container, headers.get("authorization"))
                organization_id = principal.organization_id
                if scope is not None and not principal.can(scope):  # a refused call is not charged
                    raise MeteringError(ErrorCode.INSUFFICIENT_SCOPE, f"This operation needs the '{scope}' scope.")
                container.limiter.check(principal.organization_id, container.clock())
                call = Call(
                    request_id=request_id,
                    principal=principal,
                    query={k: v for k, v in (request.query_params or {}).items()},
                    headers=headers,
                    raw_body=_as_bytes(request.raw_body),
                    path=path_params,
                    container=container,
                    max_body_bytes=max_body_bytes or container.settings.max_body_bytes,
                )
                reply = fn(call)
                response = render(reply.status, reply.body, reply.content_type, request_id, reply.headers)
            except MeteringError as error:
                if error.http_status >= 500:
                    log.error("request failed: %s", error)
                body = dialect.error_body(error, request_id)
                response = render(error.http_status, body, dialect.content_type, request_id)
            except Exception:
                log.exception("request failed unexpectedly")
                internal = MeteringError(ErrorCode.INTERNAL_ERROR)
                response = render(500, dialect.error_body(internal, request_id), dialect.content_type, request_id)
            log.info(
                "request",
                extra={
                    "method": request.method,
                    "route": path,
                    "status": response.status_code,
                    "organization_id": organization_id,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
            return response

        view.__name__ = fn.__name__
        view.__doc__ = fn.__doc__
        bp.route(path, methods=list(methods))(view)
        return fn

    return decorate
