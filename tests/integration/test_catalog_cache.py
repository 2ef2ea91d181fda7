"""The request path's cache of API keys and service lines (storage/cached_catalog.py), on the emulator.

A container trusts a key or line it read for the cache's TTL: a revocation or a pause made elsewhere
(another container, the CLI) takes effect in it within the TTL, and at once when made through it.
The serving container's cache runs on an injected clock; "elsewhere" is a second catalog repository.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chalicelib.api.http import authenticate
from chalicelib.container import Container
from chalicelib.domain.auth import hash_key
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.storage.cached_catalog import DEFAULT_TTL_SECONDS
from chalicelib.storage.catalog_repo import DynamoCatalogRepository
from tests.conftest import FULL_KEY
from tests.unit.test_ingest_handoff import ORG, TALENT, draft, ingest_one


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(container: Container) -> Iterator[Clock]:
    clock = Clock()
    container.catalog.hot.clock = clock
    container.catalog.hot.ttl = DEFAULT_TTL_SECONDS
    container.catalog.hot.clear()
    yield clock


def elsewhere(container: Container) -> DynamoCatalogRepository:
    """The same catalog as another container (or the CLI) sees it."""
    return DynamoCatalogRepository(container.settings.catalog_table)


def refused(container: Container, secret: str) -> bool:
    try:
        authenticate(container, f"Bearer {secret}")
    except MeteringError as error:
        assert error.code == ErrorCode.UNAUTHORIZED.name.lower()
        return True
    return False


def test_a_key_revoked_elsewhere_works_until_the_ttl_runs_out_then_is_refused(
    container: Container, clock: Clock
) -> None:
    assert authenticate(container, f"Bearer {FULL_KEY}").organization_id == ORG  # read, and kept
    key = container.catalog.get_api_key(hash_key(FULL_KEY))
    assert key is not None
    assert elsewhere(container).revoke_api_key(key.key_id)

    clock.now += DEFAULT_TTL_SECONDS - 1
    assert not refused(container, FULL_KEY)  # within the TTL this container still trusts it
    clock.now += 2
    assert refused(container, FULL_KEY)  # past it, read again: revoked
    clock.now += DEFAULT_TTL_SECONDS * 3
    assert refused(container, FULL_KEY)  # a revoked key is read every time, never trusted again


def test_a_key_revoked_through_this_container_is_refused_at_once(container: Container, clock: Clock) -> None:
    assert not refused(container, FULL_KEY)
    key = container.catalog.get_api_key(hash_key(FULL_KEY))
    assert key is not None and container.catalog.revoke_api_key(key.key_id)
    assert refused(container, FULL_KEY)


def test_an_unknown_key_is_not_kept_so_a_key_created_elsewhere_works_at_once(
    container: Container, clock: Clock
) -> None:
    secret = "mk_cache_test_" + "0" * 24
    assert refused(container, secret)
    original = container.catalog.get_api_key(hash_key(FULL_KEY))
    assert original is not None
    elsewhere(container).put_api_key(
        original.model_copy(update={"key_hash": hash_key(secret), "key_id": "key_cache_test"})
    )
    assert not refused(container, secret)


def test_a_line_paused_elsewhere_takes_usage_until_the_ttl_runs_out_then_refuses_it(
    container: Container, clock: Clock
) -> None:
    assert ingest_one(container, draft(key="cache-1")).status == "accepted"  # the line is read, and kept
    line = container.catalog.get_service_line(ORG, TALENT)
    assert line is not None and line.status == "active"
    elsewhere(container).put_service_line(line.model_copy(update={"status": "paused"}))

    clock.now += DEFAULT_TTL_SECONDS - 1
    assert ingest_one(container, draft(key="cache-2")).status == "accepted"  # still trusted as active
    clock.now += 2
    late = ingest_one(container, draft(key="cache-3"))
    assert late.status == "rejected" and late.error is not None
    assert late.error.code == ErrorCode.SERVICE_LINE_INACTIVE.name.lower()
    # a replay of an event accepted before the pause is still answered as the original
    assert ingest_one(container, draft(key="cache-2")).status == "duplicate"


def test_a_line_paused_through_this_container_refuses_usage_at_once(container: Container, clock: Clock) -> None:
    assert ingest_one(container, draft(key="cache-4")).status == "accepted"
    assert container.catalog.set_service_line_status(ORG, TALENT, "paused", None) is None
    late = ingest_one(container, draft(key="cache-5"))
    assert late.status == "rejected" and late.error is not None
    assert late.error.code == ErrorCode.SERVICE_LINE_INACTIVE.name.lower()
