"""Small SQL helpers that read the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store.bulk import insert_rows


async def upsert(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], *, key: Sequence[str]
) -> None:
    """Insert rows, or update every non-key column where the key exists already."""
    await insert_rows(conn, table, rows, on_conflict="update", key=key)


# A clock's read by table and name, built once: every consumed batch runs it.
_clock_reads: dict[tuple[Table, str], Select[Any]] = {}


async def clock_value(conn: AsyncConnection, table: Table, name: str) -> datetime | None:
    """The time a clock kept as a row (`name`, `value`) of `table` stands at, if set."""
    read = _clock_reads.get((table, name))
    if read is None:
        read = _clock_reads[(table, name)] = select(table.c.value).where(table.c.name == name)
    value: datetime | None = (await conn.execute(read)).scalar_one_or_none()
    return value


async def advance_clock(conn: AsyncConnection, table: Table, name: str, to: datetime) -> datetime:
    """Move the clock to `to` if that is later (it moves forward only); where it stands."""
    current = await clock_value(conn, table, name)
    if current is not None and current >= to:
        return current
    await upsert(conn, table, [{"name": name, "value": to}], key=["name"])
    return to
