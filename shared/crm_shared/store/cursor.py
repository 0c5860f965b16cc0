"""Opaque page cursors: the sort key of a page's last row, as URL-safe text."""

from __future__ import annotations

import base64
import json
from typing import Any


class BadCursor(ValueError):
    """A cursor this API did not hand out."""


def encode(*key: Any) -> str:
    """A cursor for the row with this sort key (JSON values)."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode(cursor: str, size: int) -> list[Any]:
    """The sort key a cursor holds, or BadCursor."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, list) or len(key) != size:
        raise BadCursor("cursor: not a cursor this API returned")
    return key
