"""The unit tests' fixtures: the app's container over the in-memory stores (no emulator)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chalicelib.container import Container
from tests.support import in_memory_container


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    """The composition root over the in-memory stores, with the catalog and demo data loaded."""
    yield from in_memory_container(monkeypatch)
