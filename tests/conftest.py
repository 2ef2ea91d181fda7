"""Shared fixtures: the embedded AWS emulation, a container, the Chalice test client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chalicelib.config import Settings
from chalicelib.container import Container, set_container
from chalicelib.local.emulator import Emulator
from chalicelib.services import catalog_admin

FULL_KEY = "mk_demo_ORG2609050_full_access_0001"
READ_KEY = "mk_demo_ORG2609050_read_only_0002"
OTHER_ORG_KEY = "mk_demo_ORG26100200_full_access_0003"


@pytest.fixture
def aws() -> Iterator[Settings]:
    """A fresh emulated AWS with the stage's tables and queues."""
    emulator = Emulator()
    settings = emulator.start()
    try:
        yield settings
    finally:
        emulator.stop()


@pytest.fixture
def container(aws: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The composition root over the emulator, with the catalog and demo data loaded."""
    for name in ("DEMO_API_KEY", "DEMO_READONLY_API_KEY", "DEMO_API_KEY_2"):
        monkeypatch.delenv(name, raising=False)
    built = Container.from_settings(aws)
    catalog_admin.load_platform_catalog(built.catalog)
    catalog_admin.load_demo_data(built.catalog)
    set_container(built)
    try:
        yield built
    finally:
        set_container(None)


@pytest.fixture
def client(container: Container):  # type: ignore[no-untyped-def]
    """chalice.test.Client over the real app."""
    from chalice.test import Client

    from app import app

    with Client(app) as test_client:
        yield test_client


def auth(key: str = FULL_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


# The longest modules start first, so that on two workers (make test: pytest-xdist, one module per worker)
# the rest of the suite runs beside them instead of after them.
# Measured on two workers (seconds): the soak 95-120, the Python client 108 (alone), the local stack 61,
# the pipeline faults 32, the browser 27, the package 18, the backfill 15, OpenAPI 15, the CLI 11, ingest
# properties 10.
LONGEST_FIRST = (
    "tests/integration/test_pipeline_soak.py",
    "tests/e2e/test_python_client.py",
    "tests/e2e/test_local_stack.py",
    "tests/integration/test_pipeline_faults.py",
    "tests/e2e/test_dashboard_browser.py",
    "tests/integration/test_package.py",
    "tests/e2e/test_cli_backfill.py",
    "tests/e2e/test_openapi.py",
    "tests/integration/test_cli.py",
    "tests/integration/test_ingest_properties.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)
