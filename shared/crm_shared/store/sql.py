"""Small SQL helpers that read the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store.bulk import insert_rows


async def upsert(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], *, key: Sequence[str]
) -> None:
    """Insert rows, or update every non-key column where the key exists already."""
    await insert_rows(conn, table, rows, on_conflict="update", key=key)
