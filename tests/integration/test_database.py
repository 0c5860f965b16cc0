"""Transactions of `crm_shared.store.db.Database` on SQLite (the embedded default), with both
drivers: `sqlite+inline` (statements on the event loop) and `sqlite+aiosqlite`."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store import sqlite_inline
from crm_shared.store.db import (
    KEPT_READERS,
    WAL_AUTOCHECKPOINT_PAGES,
    WAL_CHECKPOINT_PAGES,
    Database,
)
from tests.support.db import database_with

DRIVERS = ["sqlite", "sqlite+aiosqlite"]

metadata = MetaData()
rows = Table("rows", metadata, Column("n", Integer, primary_key=True))
blobs = Table(
    "blobs", metadata, Column("n", Integer, primary_key=True), Column("data", LargeBinary)
)
# A reference checked at COMMIT, not at the INSERT: a way to make a COMMIT itself fail.
later = Table(
    "later",
    metadata,
    Column("n", Integer, primary_key=True),
    Column(
        "row",
        Integer,
        ForeignKey("rows.n", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
)


async def _count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(rows))).scalar_one())


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_read_sees_one_snapshot_even_when_a_write_commits_between_its_queries(
    tmp_path: Path, driver: str
) -> None:
    db = Database(f"{driver}:///{tmp_path / 'db.sqlite'}")
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


class _Ticker:
    """A task that counts its turns: one after every `interval` seconds of sleep, so a
    loop held by someone else does not tick. Started with `start()`, stopped by `stop()`."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.ticks += 1


async def _table(tmp_path: Path) -> Database:
    return await database_with(f"sqlite:///{tmp_path / 'db.sqlite'}", metadata)


async def test_the_default_sqlite_driver_runs_on_the_event_loop(tmp_path: Path) -> None:
    db = await _table(tmp_path)
    try:
        assert db.engine.dialect.driver == "inline"
    finally:
        await db.dispose()


async def test_a_writer_waits_for_another_connections_write_lock_without_stalling_the_loop(
    tmp_path: Path,
) -> None:
    db = await _table(tmp_path)
    other = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO rows (n) VALUES (1)")
    ticker = _Ticker(0.005)

    async def write() -> float:
        started = time.monotonic()
        async with db.transaction() as conn:
            await conn.execute(rows.insert().values(n=2))
        return time.monotonic() - started

    ticker.start()
    try:
        writer = asyncio.create_task(write())
        await asyncio.sleep(0.3)
        assert not writer.done()  # still waiting for the lock
        ticks_while_waiting = ticker.ticks
        other.execute("COMMIT")
        waited = await asyncio.wait_for(writer, 5)
        async with db.read() as reader:
            assert await _count(reader) == 2
    finally:
        ticker.stop()
        other.close()
        await db.dispose()
    assert waited >= 0.3
    # The loop kept running while the writer waited (a blocked loop would not tick at all).
    assert ticks_while_waiting >= 20


async def test_a_writer_gives_up_after_the_lock_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_inline, "lock_timeout", 0.2)
    db = await _table(tmp_path)
    other = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Exception, match="locked"):
            async with db.transaction() as conn:
                await conn.execute(rows.insert().values(n=1))
        other.execute("COMMIT")
        # The connection went back to the pool usable.
        async with db.transaction() as conn:
            await conn.execute(rows.insert().values(n=1))
        async with db.read() as reader:
            assert await _count(reader) == 1
    finally:
        other.close()
        await db.dispose()


async def test_write_transactions_take_one_kept_connection_and_reads_keep_a_few(
    tmp_path: Path,
) -> None:
    """On a file, the inline driver's transactions skip the pool: every write takes the
    same connection, and reads take an idle one of the last KEPT_READERS when there is
    one. The rest go back to the pool, which has room for the kept ones besides."""
    db = await _table(tmp_path)
    pool = db.engine.pool
    try:
        writers = set()
        for n in range(1, 6):
            async with db.transaction() as conn:
                await conn.execute(rows.insert().values(n=n))
                writers.add(id(conn.sync_connection))
        assert len(writers) == 1
        assert pool.checkedout() == 1  # type: ignore[attr-defined]
        async with contextlib.AsyncExitStack() as held:
            readers = [await held.enter_async_context(db.read()) for _ in range(6)]
            assert [await _count(r) for r in readers] == [5] * 6
            assert pool.checkedout() == 1 + 6  # type: ignore[attr-defined]
        assert pool.checkedout() == 1 + KEPT_READERS == 5  # type: ignore[attr-defined]
        kept = {id(r.sync_connection) for r in readers}
        for _ in range(3):
            async with db.read() as reader:
                assert id(reader.sync_connection) in kept
                assert await _count(reader) == 5
        assert pool.checkedout() == 1 + KEPT_READERS  # type: ignore[attr-defined]
    finally:
        await db.dispose()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_transactions_that_outlive_dispose_close_their_connections(
    tmp_path: Path,
) -> None:
    """`dispose()` closes the kept connections it finds idle; a read or write still running
    then closes its own at its end instead of keeping it, and later transactions take
    fresh connections."""
    db = await _table(tmp_path)
    try:
        async with db.read() as reader, db.transaction() as writer:
            await db.dispose()
            await writer.execute(rows.insert().values(n=1))
            assert await _count(reader) == 0
        assert reader.sync_connection is not None and writer.sync_connection is not None
        assert reader.sync_connection.closed and writer.sync_connection.closed
        assert db._idle_readers == [] and db._writer_kept is None
        async with db.transaction() as conn:
            assert conn.sync_connection is not writer.sync_connection
            await conn.execute(rows.insert().values(n=2))
        async with db.read() as again:
            assert again.sync_connection is not reader.sync_connection
            assert await _count(again) == 2
    finally:
        await db.dispose()


async def test_a_failed_write_or_commit_rolls_back_and_the_next_transaction_works(
    tmp_path: Path,
) -> None:
    db = await _table(tmp_path)
    try:
        async with db.transaction() as conn:
            await conn.execute(rows.insert().values(n=1))
        with pytest.raises(IntegrityError):  # a statement fails: the transaction is undone
            async with db.transaction() as conn:
                await conn.execute(rows.insert().values(n=2))
                await conn.execute(rows.insert().values(n=1))
        with pytest.raises(RuntimeError):  # so is one whose caller fails
            async with db.transaction() as conn:
                await conn.execute(rows.insert().values(n=3))
                raise RuntimeError("the handler failed")
        # SQLite keeps a transaction open when its COMMIT fails on a deferred reference;
        # the writer is replaced, and nothing of that transaction stays.
        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            async with db.transaction() as conn:
                await conn.execute(rows.insert().values(n=4))
                await conn.execute(later.insert().values(n=1, row=99))
        with pytest.raises(RuntimeError):  # a read too
            async with db.read() as reader:
                assert await _count(reader) == 1
                raise RuntimeError("the request failed")
        async with db.transaction() as conn:
            await conn.execute(rows.insert().values(n=5))
        async with db.read() as reader:
            found = [n for (n,) in await reader.execute(select(rows.c.n).order_by(rows.c.n))]
        assert found == [1, 5]
    finally:
        await db.dispose()
    with sqlite3.connect(tmp_path / "db.sqlite") as plain:
        assert plain.execute("SELECT count(*) FROM later").fetchone() == (0,)


async def test_a_long_transaction_lets_the_loop_run(tmp_path: Path) -> None:
    """Statements run straight on the loop's thread, but a transaction that runs them for
    longer than `yield_every` lets the loop's other tasks run in between."""
    db = await _table(tmp_path)
    ticker = _Ticker(0)
    ticker.start()
    await asyncio.sleep(0)
    try:
        async with db.transaction() as conn:
            started, n = ticker.ticks, 0
            deadline = time.perf_counter() + 0.2
            while time.perf_counter() < deadline:
                n += 1
                await conn.execute(rows.insert().values(n=n))
            during_write = ticker.ticks - started
        async with db.read() as reader:
            started = ticker.ticks
            deadline = time.perf_counter() + 0.2
            while time.perf_counter() < deadline:
                await _count(reader)
            during_read = ticker.ticks - started
    finally:
        ticker.stop()
        await db.dispose()
    # One tick per yield, every 5 ms: ~40 in 0.2 s; none if the loop were held throughout.
    assert during_write >= 10 and during_read >= 10, (during_write, during_read)


async def test_results_outlive_their_transaction_and_streams_step_through_rows(
    tmp_path: Path,
) -> None:
    db = await _table(tmp_path)
    try:
        async with db.transaction() as conn:
            await conn.execute(rows.insert(), [{"n": n} for n in range(1, 1001)])
        async with db.read() as reader:
            result = await reader.execute(select(rows.c.n).order_by(rows.c.n))
        assert [n for (n,) in result.all()] == list(range(1, 1001))
        async with db.read() as reader:
            stream = await reader.stream(select(rows.c.n).order_by(rows.c.n))
            seen = [n async for (n,) in stream]
        assert seen == list(range(1, 1001))
        async with db.transaction() as conn:
            deleted = await conn.execute(rows.delete().where(rows.c.n > 500))
        assert deleted.rowcount == 500
    finally:
        await db.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_every_connection_checkpoints_the_wal_rarely(tmp_path: Path, driver: str) -> None:
    """SQLite's default checkpoints every 1,000 pages; the checkpointer thread does it every
    20,000 (see `_configure_sqlite`), and a connection, write or read, with either driver,
    only at twice that, should the thread fall behind."""
    db = Database(f"{driver}:///{tmp_path / 'db.sqlite'}")
    try:
        async with db.transaction() as writer:
            pages = (await writer.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar_one()
        async with db.read() as reader:
            read_pages = (await reader.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar_one()
        assert db.checkpointer is not None and db.checkpointer.running
        assert db.checkpointer.pages == WAL_CHECKPOINT_PAGES == 20_000
    finally:
        await db.dispose()
    assert (
        (pages, read_pages)
        == (WAL_AUTOCHECKPOINT_PAGES, WAL_AUTOCHECKPOINT_PAGES)
        == (
            40_000,
            40_000,
        )
    )
    assert not db.checkpointer.running  # stopped with the pool


async def _write_blobs(db: Database, payload: bytes, transactions: int) -> int:
    """Write 20 blobs in each of `transactions`; return how many there are."""
    for _ in range(transactions):
        async with db.transaction() as conn:
            await conn.execute(blobs.insert(), [{"data": payload} for _ in range(20)])
    async with db.read() as conn:
        return int((await conn.exec_driver_sql("SELECT count(*) FROM blobs")).scalar_one())


def _wal_bytes(path: Path) -> int:
    """The WAL file's size: the most it held since created (it is reused, not shrunk).
    Only stat: opening and closing it would drop SQLite's locks on it in this process."""
    wal = Path(str(path) + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def _wal_bytes_of_writes(path: Path, payload: bytes, transactions: int) -> int:
    """The WAL of a new database after these writes, nothing checkpointed."""
    db = Database(f"sqlite:///{path}")
    assert db.checkpointer is not None
    db.checkpointer.poll = 3600.0  # started with the first connection; never wakes
    try:
        async with db.transaction() as conn:
            await conn.run_sync(metadata.create_all)
        await _write_blobs(db, payload, transactions)
        return _wal_bytes(path)
    finally:
        await db.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_the_checkpointer_thread_copies_the_wal_into_the_database(
    tmp_path: Path, driver: str
) -> None:
    """The thread copies the WAL into the database as writes come; once it holds `pages`
    frames a write ends with a RESTART, and the writes after start the WAL over. No
    connection checkpoints (they would at 40,000 frames)."""
    path = tmp_path / "db.sqlite"
    db = Database(f"{driver}:///{path}")
    assert db.checkpointer is not None
    db.checkpointer.pages = 200
    db.checkpointer.poll = 0.02
    try:
        async with db.transaction() as conn:
            await conn.run_sync(metadata.create_all)
        written = await _write_blobs(db, b"x" * 3000, 30)  # ~600 pages
        deadline = time.monotonic() + 10
        while db.checkpointer.restarts == 0 and time.monotonic() < deadline:
            written = await _write_blobs(db, b"y" * 3000, 1)  # RESTART after one of them
            await asyncio.sleep(0.01)
        restarts = db.checkpointer.restarts
        db.checkpointer.stop()  # quiet: its PASSIVE, a reader of the WAL, can delay a restart
        # The last RESTART may lie some writes back (the thread can ask for one during the
        # first writes already): run one now, between two writes, as a transaction does.
        again = db.checkpointer.restart_here()
        before = _wal_bytes(path)
        written = await _write_blobs(db, b"z" * 3000, 30)  # ~600 pages, 2.4 MiB
        after = _wal_bytes(path)
    finally:
        await db.dispose()
    assert restarts >= 1
    if driver == "sqlite":  # the default, inline driver
        # The WAL started over instead of growing by what was written: it holds no more
        # than those writes need in a new database (6 frames more, measured: the bigger
        # table's interior pages), or what it held before. Had it not started over, the 30
        # writes would follow at least the 20 blobs of the write before. With aiosqlite it
        # did not within these 30 writes, with the thread stopped (not run down yet).
        fresh = await _wal_bytes_of_writes(tmp_path / "fresh.sqlite", b"z" * 3000, 30)
        frame = 4096 + 24
        assert again
        assert after <= max(before, fresh + 12 * frame), (before, after, fresh)
    with sqlite3.connect(path) as plain:
        assert plain.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert plain.execute("SELECT count(*) FROM blobs").fetchone()[0] == written


@pytest.mark.parametrize("driver", DRIVERS)
async def test_the_wal_stays_small_under_writes_back_to_back(tmp_path: Path, driver: str) -> None:
    """With a write always under way, a checkpoint seldom ends between two of them, and the
    WAL would start over only when a connection checkpointed it (inline: on the event loop,
    at 40,000 frames). The RESTART asked for starts it over between two writes instead."""
    path = tmp_path / "db.sqlite"
    db = Database(f"{driver}:///{path}")
    assert db.checkpointer is not None
    db.checkpointer.pages = 200
    db.checkpointer.poll = 0.01
    written = 0
    try:
        async with db.transaction() as conn:
            await conn.run_sync(metadata.create_all)
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # ~15 pages a transaction
            async with db.transaction() as conn:
                await conn.execute(blobs.insert(), [{"data": b"w" * 3000} for _ in range(20)])
            written += 1
        most = _wal_bytes(path)
    finally:
        await db.dispose()
    assert db.checkpointer.restarts >= 1
    # Without RESTART it reached the connections' own checkpoint, 40,000 pages (160 MiB),
    # with either driver.
    assert most < 0.7 * WAL_AUTOCHECKPOINT_PAGES * 4096, (most, written)
