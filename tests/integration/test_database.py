"""Transactions of `crm_shared.store.db.Database` on SQLite (the embedded default)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store.db import Database

metadata = MetaData()
rows = Table("rows", metadata, Column("n", Integer, primary_key=True))


async def _count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(rows))).scalar_one())


async def test_a_read_sees_one_snapshot_even_when_a_write_commits_between_its_queries(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with db.transaction() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(rows.insert().values(n=1))
        async with db.read() as reader:
            before = await _count(reader)
            async with db.transaction() as writer:
                await writer.execute(rows.insert().values(n=2))
            during = await _count(reader)
        async with db.read() as reader:
            after = await _count(reader)
    finally:
        await db.dispose()
    assert (before, during, after) == (1, 1, 2)
