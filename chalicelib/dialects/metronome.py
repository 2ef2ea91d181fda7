"""Placeholder: this dialect's routes are being written (see the issue on usage queries)."""

from __future__ import annotations

from chalice.app import Blueprint

bp = Blueprint(__name__)
