"""The composition root: the one place concrete adapters are chosen."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from chalicelib.config import Settings, get_settings
from chalicelib.storage.catalog_repo import DynamoCatalogRepository


@dataclass
class Container:
    """The adapters a use case may need, built from settings."""

    settings: Settings
    catalog: DynamoCatalogRepository

    @classmethod
    def from_settings(cls, settings: Settings) -> Container:
        return cls(settings=settings, catalog=DynamoCatalogRepository(settings.catalog_table))


_lock = threading.Lock()
_container: Container | None = None


def get_container() -> Container:
    """The process-wide container, built on first use."""
    global _container
    with _lock:
        if _container is None:
            _container = Container.from_settings(get_settings())
        return _container


def set_container(container: Container | None) -> None:
    """Replace (or with None, forget) the process-wide container."""
    global _container
    with _lock:
        _container = container
