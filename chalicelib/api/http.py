"""The HTTP edge shared by every route: authentication, parsing, rendering, errors.

Chalice turns an exception raised in a route into its own response before
middleware sees it, so every route goes through `endpoint`, which maps the
service's errors (by class) to the route's dialect in one place.

What Chalice or API Gateway would otherwise answer in their own shapes is
answered here too (`answer_the_rest`): an unknown path is a 404 `not_found`,
a method a path does not serve is a 405 `method_not_allowed` with `Allow`,
each in the envelope of the dialect that owns the path (`PathOwner`). Every
route accepts any Content-Type (or none) and reads its body as JSON, so there
is no 415. No error body quotes a request header.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from chalice.app import Blueprint, Chalice, Response
from pydantic import BaseModel, ValidationError

from chalicelib import jsonutil, observability
from chalicelib.api.schemas import ErrorPublic
from chalicelib.container import Container, get_container
from chalicelib.domain.auth import hash_key
from chalicelib.domain.models import Principal
from chalicelib.domain.usage import MAX_IDEMPOTENCY_KEY, check_idempotency_key
from chalicelib.errors import ErrorCode, MeteringError, validation_error

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_HEADER_DOC = {
    IDEMPOTENCY_HEADER: "Makes the request safe to retry: the same key and request answer what the first did "
    "(200), the same key with another request is 409 idempotency_conflict."
}

log = logging.getLogger("usage-metering.http")
M = TypeVar("M", bound=BaseModel)

JSON = "application/json"
# Every route takes any Content-Type (curl -d sends a form type; many clients send none) and reads JSON.
ANY_CONTENT_TYPE = ["*/*"]
ALL_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


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

    def idempotency_header(self, max_length: int = MAX_IDEMPOTENCY_KEY) -> str | None:
        """The `Idempotency-Key` header, validated; None when it is not sent."""
        value = self.header(IDEMPOTENCY_HEADER)
        if value is None:
            return None
        key = check_idempotency_key(value, IDEMPOTENCY_HEADER)
        if len(key) > max_length:
            raise validation_error(IDEMPOTENCY_HEADER, f"must be at most {max_length} characters here")
        return key

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


# A Reply body that is no body at all (OpenMeter's 204, Metronome's ingest 200): sent empty, without Content-Type.
NO_BODY: Any = object()


def render(status: int, body: Any, content_type: str, request_id: str, headers: Mapping[str, str] = {}) -> Response:
    if body is NO_BODY:
        return Response(body="", status_code=status, headers={"X-Request-Id": request_id, **headers})
    return Response(
        body=jsonutil.dumps(body),
        status_code=status,
        headers={"Content-Type": content_type, "X-Request-Id": request_id, **headers},
    )


def error_headers(error: MeteringError) -> Mapping[str, str]:
    """Headers an error carries besides its body (a 429's Retry-After and rate-limit headers)."""
    headers: Mapping[str, str] = getattr(error, "response_headers", None) or {}
    return headers


def request_id_of(request: Any) -> str:
    """The request's id: API Gateway's (made up locally by the middleware), the same in logs and bodies."""
    context = request.context or {}
    return str(context.get("requestId") or uuid.uuid4())


def log_request(
    request_id: str, method: str, route: str, status: int, organization_id: str | None, started: float
) -> None:
    observability.record_request(status, time.monotonic() - started)
    log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": method,
            "route": route,
            "status": status,
            "organization_id": organization_id,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        },
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
            request_id = request_id_of(request)
            started = time.monotonic()
            observability.bind_route(f"{request.method} {path}", dialect)  # the route template, not the raw path
            organization_id = None
            quota_headers: Mapping[str, str] = {}
            try:
                container = get_container()
                headers = {k.lower(): v for k, v in (request.headers or {}).items()}
                principal = authenticate(container, headers.get("authorization"))
                organization_id = principal.organization_id
                if scope is not None and not principal.can(scope):  # a refused call is not charged
                    raise MeteringError(ErrorCode.INSUFFICIENT_SCOPE, f"This operation needs the '{scope}' scope.")
                quota = container.limiter.check(principal.organization_id, container.clock())
                quota_headers = quota.headers() if quota is not None else {}
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
                headers = {**quota_headers, **reply.headers}
                response = render(reply.status, reply.body, reply.content_type, request_id, headers)
            except MeteringError as error:
                if error.http_status >= 500:
                    log.error("request failed: %s", error)
                body = dialect.error_body(error, request_id)
                headers = {**quota_headers, **error_headers(error)}
                response = render(error.http_status, body, dialect.content_type, request_id, headers)
            except Exception:
                log.exception("request failed unexpectedly")
                internal = MeteringError(ErrorCode.INTERNAL_ERROR)
                response = render(500, dialect.error_body(internal, request_id), dialect.content_type, request_id)
            log_request(request_id, request.method, path, response.status_code, organization_id, started)
            return response

        view.__name__ = fn.__name__
        view.__doc__ = fn.__doc__
        bp.route(path, methods=list(methods), content_types=ANY_CONTENT_TYPE)(view)
        return fn

    return decorate


# -- what no route answers: unknown paths, other methods -----------------------------------


class MethodNotAllowed(MeteringError):
    """405 method_not_allowed: the path exists, the method does not (`Allow` lists what does)."""

    def __init__(self, method: str, allowed: Sequence[str]) -> None:
        super().__init__(
            ErrorCode.METHOD_NOT_ALLOWED, f"This path does not serve {method}; it serves {', '.join(allowed)}."
        )
        self.response_headers = {"Allow": ", ".join(allowed)}


@dataclass(frozen=True)
class PathOwner:
    """A dialect owns the paths under `prefix` (segment by segment; `{}` matches any one segment).

    With `methods`, only those methods of exactly that path (POST /v1/usage is Metronome's, GET is native).
    With `edge=False` the prefix gets no routes of its own: a catch-all above it answers, in its envelope.
    """

    prefix: str
    dialect: Dialect
    methods: frozenset[str] = frozenset()
    edge: bool = True

    def matches(self, path: str, method: str) -> int:
        """How many segments of `path` this owner claims for `method` (0: none)."""
        mine, theirs = _segments(self.prefix), _segments(path)
        if self.methods and (method not in self.methods or len(mine) != len(theirs)):
            return 0
        if len(mine) > len(theirs):
            return 0
        for want, got in zip(mine, theirs, strict=False):
            if want != "{}" and want != got:
                return 0
        return len(mine) + 1  # the root "/" claims 1: anything beats nothing


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def owner_of(owners: Sequence[PathOwner], path: str, method: str) -> Dialect:
    """The dialect whose envelope answers `method path`: the owner claiming the most segments, else native."""
    best: Dialect = NATIVE
    best_len = 0
    for owner in owners:
        claimed = owner.matches(path, method)
        if claimed > best_len:
            best, best_len = owner.dialect, claimed
    return best


def edge_paths(route_paths: Iterable[str], extra_prefixes: Iterable[str] = ()) -> dict[str, bool]:
    """Every path the edge must answer: each route and each prefix of one (False: no route there), and
    `{proxy+}` under each of them that has no variable child (API Gateway allows one variable child).
    """
    routed = set(route_paths)
    nodes = {"/"}
    for path in [*routed, *extra_prefixes]:
        parts = _segments(path)
        nodes.update("/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1))
    children: dict[str, list[str]] = {node: [] for node in nodes}
    for node in nodes:
        if node != "/":
            parent = node.rsplit("/", 1)[0] or "/"
            children[parent].append(node.rsplit("/", 1)[1])
    result = {node: node in routed for node in nodes}
    for node, kids in children.items():
        if not any(k.startswith("{") for k in kids):
            result[node.rstrip("/") + "/{proxy+}"] = False
    return result


EDGE_ROUTES: set[tuple[str, str]] = set()  # (path, METHOD) the edge answers; the OpenAPI document leaves them out


def answer_the_rest(app: Chalice, owners: Sequence[PathOwner]) -> None:
    """Register, after every blueprint: 404 on unknown paths, 405 (OPTIONS: 204) on other methods.

    Each answer is in the envelope of the path's owner. Run once, when app.py is imported.
    """
    static_prefixes = [o.prefix for o in owners if o.edge and "{}" not in o.prefix]
    for n, (path, routed) in enumerate(sorted(edge_paths(list(app.routes), static_prefixes).items())):
        served = sorted(app.routes.get(path, {})) if routed else []
        missing = [m for m in ALL_METHODS if m not in served]
        if not missing:
            continue
        view = _edge_view(app, owners, path, served)
        view.__name__ = f"edge_{n}"
        app.route(path, methods=missing, content_types=ANY_CONTENT_TYPE)(view)
        EDGE_ROUTES.update((path, m) for m in missing)


def requested_path(route: str, params: Mapping[str, str], context_path: str | None = None) -> str:
    """The path a request asked for, from its route and path parameters (`/v1/{proxy+}` + `a/b` -> `/v1/a/b`).

    Chalice's local server passes no parameter for a greedy `{proxy+}`; its context's path is the path asked for.
    """
    if "+}" in route and not params and context_path:
        return context_path
    for name, value in params.items():
        route = route.replace("{" + name + "+}", value).replace("{" + name + "}", value)
    return route


def _edge_view(app: Chalice, owners: Sequence[PathOwner], path: str, served: Sequence[str]) -> Callable[..., Response]:
    allowed = [*served, *(["OPTIONS"] if "OPTIONS" not in served else [])] if served else []

    def view(**params: str) -> Response:
        request = app.current_request
        assert request is not None  # Chalice sets it before calling a view
        started = time.monotonic()
        request_id = request_id_of(request)
        method = str(request.method).upper()
        if allowed and method == "OPTIONS":
            response = Response(
                body="", status_code=204, headers={"Allow": ", ".join(allowed), "X-Request-Id": request_id}
            )
        else:
            error: MeteringError
            if allowed:
                error = MethodNotAllowed(method, allowed)
            else:
                error = MeteringError(ErrorCode.NOT_FOUND, "No resource exists at this path.")
            asked = requested_path(path, params, (request.context or {}).get("path"))
            dialect = owner_of(owners, asked, method)
            observability.bind_route(observability.UNMATCHED, dialect)
            body = dialect.error_body(error, request_id)
            response = render(error.http_status, body, dialect.content_type, request_id, error_headers(error))
            if method == "HEAD":  # a HEAD answer has headers only
                response.body = ""
        log_request(request_id, method, path, response.status_code, None, started)
        return response

    return view
