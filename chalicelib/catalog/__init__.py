"""The catalog as data in the repo: meters, plans and the demo organizations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent


def read(name: str) -> Any:
    """One of the catalog's JSON files (meters, plans, demo)."""
    from chalicelib import jsonutil

    return jsonutil.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))
