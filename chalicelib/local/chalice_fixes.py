"""Chalice's local router, made to route a greedy `{name+}` as API Gateway does.

`chalice local` and `chalice.test.Client` match a route only when it has as many path segments as
the request, so a catch-all `/v1/{proxy+}` takes `/v1/nope` but not `/v1/nope/deeper`. For the
deeper path Chalice answers its own 403 "Missing Authentication Token", which quotes the caller's
Authorization header. API Gateway routes any depth to the greedy route. This keeps Chalice's
matching for every path it matches, and only for a path nothing matched tries the greedy routes,
the most specific first, capturing the rest of the path as API Gateway does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

_installed = False


def greedy_match(route_urls: list[str], path: str) -> tuple[str, dict[str, str]] | None:
    """The greedy route (`.../{name+}`) that takes `path`, with its captures; the longest prefix wins."""
    parts = path.rstrip("/").split("/") if path != "/" else [""]
    best: tuple[str, dict[str, str]] | None = None
    for route in route_urls:
        route_parts = route.split("/")
        last = route_parts[-1]
        if not (last.startswith("{") and last.endswith("+}")) or len(parts) < len(route_parts):
            continue
        captured: dict[str, str] = {}
        for got, want in zip(parts, route_parts[:-1], strict=False):
            if want.startswith("{") and want.endswith("}"):
                captured[want[1:-1]] = got
            elif got != want:
                break
        else:
            captured[last[1:-2]] = "/".join(parts[len(route_parts) - 1 :])
            if best is None or len(route_parts) > len(best[0].split("/")):
                best = (route, captured)
    return best


def install() -> None:
    """Make chalice.local's RouteMatcher fall back to the greedy routes (idempotent)."""
    global _installed
    if _installed:
        return
    from chalice import local

    original = local.RouteMatcher.match_route

    def match_route(self: Any, url: str) -> Any:
        try:
            return original(self, url)
        except ValueError:
            found = greedy_match(self.route_urls, urlparse(url).path)
            if found is None:
                raise
            query = parse_qs(urlparse(url).query, keep_blank_values=True)
            return local.MatchResult(found[0], found[1], query)

    local.RouteMatcher.match_route = match_route  # type: ignore[method-assign]
    _installed = True
