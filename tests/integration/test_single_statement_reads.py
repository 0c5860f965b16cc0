"""`Database.fetch_one` / `fetch_all`: one read statement on its own, on every configured
database (on SQLite: synchronously, in autocommit mode, on a connection kept for them)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from crm_shared.store.db import Database

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
)
BY_ID = select(items).where(items.c.id == bindparam("id"))
ALL = select(items).order_by(items.c.id)


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    async with database.transaction() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(items.insert(), [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}])
    try:
        yield database
    finally:
        await database.dispose()


async def test_a_row_by_key_none_when_missing_and_every_row(db: Database) -> None:
    one = await db.fetch_one(BY_ID, {"id": 2})
    missing = await db.fetch_one(BY_ID, {"id": 3})
    every = await db.fetch_all(ALL)
    assert one is not None and dict(one) == {"id": 2, "name": "two"}
    assert missing is None
    assert [dict(row) for row in every] == [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]


async def test_each_read_sees_what_was_committed_before_it(db: Database) -> None:
    # A read that left a transaction open would keep its snapshot: the second read would
    # still see "one", and on SQLite the WAL could not be checkpointed past it.
    assert await db.fetch_one(BY_ID, {"id": 1}) is not None
    async with db.transaction() as conn:
        await conn.execute(items.update().where(items.c.id == 1).values(name="uno"))
    row = await db.fetch_one(BY_ID, {"id": 1})
    assert row is not None and row["name"] == "uno"
    if db.dialect == "sqlite":
        other = sqlite3.connect(make_url(db.url).database or "")
        try:
            busy, log, checkpointed = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            other.close()
        assert (busy, log, checkpointed) == (0, 0, 0)


async def test_a_read_does_not_see_a_write_not_yet_committed(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(items.insert().values(id=3, name="three"))
        # The writer holds SQLite's write lock here; the read neither waits for it nor
        # sees the row.
        assert await db.fetch_one(BY_ID, {"id": 3}) is None
    assert await db.fetch_one(BY_ID, {"id": 3}) is not None


async def test_a_failed_statement_raises_and_the_next_read_works(db: Database) -> None:
    with pytest.raises(DBAPIError):
        await db.fetch_all(text("SELECT * FROM no_such_table"))
    row = await db.fetch_one(BY_ID, {"id": 1})
    assert row is not None and row["name"] == "one"


async def test_reads_go_on_after_the_database_is_disposed_and_used_again(db: Database) -> None:
    assert await db.fetch_one(BY_ID, {"id": 1}) is not None
    await db.dispose()
    async with db.transaction() as conn:
        await conn.execute(items.insert().values(id=4, name="four"))
    row = await db.fetch_one(BY_ID, {"id": 4})
    assert row is not None and row["name"] == "four"


async def test_the_first_read_waits_for_a_free_connection_when_all_are_taken(
    database_url: str,
) -> None:
    # SQLite: 3 + the kept writer + 4 kept readers; PostgreSQL: 1 + 1 overflow
    db = Database(database_url, pool_size=1)
    try:
        async with db.transaction() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(items.insert().values(id=1, name="one"))
        pool = db.engine.pool
        free = 2 if db.dialect == "postgresql" else pool.size() - pool.checkedout()  # type: ignore[attr-defined]
        assert free == (2 if db.dialect == "postgresql" else 7)
        async with contextlib.AsyncExitStack() as held:
            for _ in range(free):
                await held.enter_async_context(db.read())
            reading = asyncio.create_task(db.fetch_one(BY_ID, {"id": 1}))
            await asyncio.sleep(0.2)
            assert not reading.done()  # waiting for a connection, not failing
        row = await asyncio.wait_for(reading, timeout=10)
        assert row is not None and row["name"] == "one"
        rows = await asyncio.gather(*(db.fetch_one(BY_ID, {"id": 1}) for _ in range(20)))
        assert all(r is not None and r["name"] == "one" for r in rows)
    finally:
        await db.dispose()


async def test_an_in_memory_sqlite_database_reads_through_its_one_connection() -> None:
    db = Database("sqlite:///:memory:")
    try:
        async with db.transaction() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(items.insert().values(id=1, name="one"))
        row = await db.fetch_one(BY_ID, {"id": 1})
        every = await db.fetch_all(ALL)
        async with db.transaction() as conn:  # the one connection is free again
            await conn.execute(items.insert().values(id=2, name="two"))
        assert row is not None and row["name"] == "one"
        assert [r["id"] for r in every] == [1]
        assert len(await db.fetch_all(ALL)) == 2
    finally:
        await db.dispose()
