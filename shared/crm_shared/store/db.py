"""Database access: one async engine per service, write and read transactions.

SQLite is the embedded default, run on the event loop's thread (`sqlite+inline`, see
`sqlite_inline`; `sqlite+aiosqlite` also works), and PostgreSQL (asyncpg) production. On SQLite
a write transaction starts with `BEGIN IMMEDIATE`: it takes the single writer lock up front,
so two writers in one process queue on the busy timeout instead of failing when a reader
tries to upgrade. Reads use deferred transactions and, in WAL mode, never block writers.
On a SQLite file, transactions keep their connections out of the pool (one writer, a few
idle readers) and run their statements straight from the loop (`_kept_transaction`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiosqlite
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, CursorResult, RowMapping, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable
from sqlalchemy.util import await_, greenlet_spawn

from crm_shared.store import jsontext, sqlite_inline
from crm_shared.store.sqlite_checkpoint import Checkpointer

_WRITE = "crm_write"
_ALONE = "crm_alone"  # one statement, no BEGIN: SQLite's autocommit mode
_BEGUN = "crm_begun"  # the caller runs BEGIN itself (`Database._kept_transaction`)
# Idle read connections of a file database kept out of the pool (`_kept_transaction`).
KEPT_READERS = 4
WAL_CHECKPOINT_PAGES = 20_000  # see `_configure_sqlite`
# What a connection checkpoints itself, should the checkpointer thread fall behind.
WAL_AUTOCHECKPOINT_PAGES = 2 * WAL_CHECKPOINT_PAGES


def async_url(url: str) -> str:
    """Name the async driver when the URL names only the database kind."""
    parsed = make_url(url)
    driver = {
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
        "sqlite": "sqlite+inline",
    }.get(parsed.drivername, parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def ensure_sqlite_directory(url: str) -> None:
    """Create the folder of a SQLite file, so a fresh data directory just works."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def is_sqlite(engine: AsyncEngine | AsyncConnection) -> bool:
    return engine.dialect.name == "sqlite"


class Database:
    """A service's database: the engine and its transactions."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = async_url(url)
        parsed = make_url(self.url)
        options: dict[str, Any] = {
            "echo": echo,
            "pool_pre_ping": False,
            "json_serializer": jsontext.dumps,
            "json_deserializer": jsontext.loads,
        }
        if parsed.get_backend_name() == "postgresql":
            options.update(pool_size=pool_size, max_overflow=pool_size)
        elif parsed.get_driver_name() == "aiosqlite":
            options["connect_args"] = {"timeout": 30}
        elif parsed.database not in (None, "", ":memory:"):
            # Keep every connection: the pool closes the ones above pool_size when they come
            # back, and opening one (file, PRAGMAs, functions) cost 7-10% of a GET's CPU at
            # 64 concurrent requests. At most 3 x pool_size, as before (pool_size plus an
            # overflow of twice that), plus those `_kept_transaction` keeps out of the pool
            # (the writer and idle readers); a request beyond them waits for one.
            options.update(pool_size=pool_size * 3 + 1 + KEPT_READERS, max_overflow=0)
        self.engine = create_async_engine(self.url, **options)
        # A file's WAL is checkpointed by a thread of its own (`sqlite_checkpoint`).
        self.checkpointer: Checkpointer | None = None
        if is_sqlite(self.engine) and parsed.database not in (None, "", ":memory:"):
            path = os.path.abspath(parsed.database)
            self.checkpointer = Checkpointer(path, pages=WAL_CHECKPOINT_PAGES)
        if is_sqlite(self.engine):
            _configure_sqlite(self.engine, self.checkpointer)
        self._writer = self.engine.execution_options(**{_WRITE: True})
        # SQLite has one writer at a time. Queuing writers here, in the event loop, wakes the
        # next one as soon as the lock is free; left to SQLite, waiting connections sleep in
        # its busy handler (up to 100 ms each time) and throughput collapses under load.
        self._write_turn = asyncio.Lock() if is_sqlite(self.engine) else None
        # Reads by key on a connection of their own (`fetch_one`): for a file; an in-memory
        # database has one connection, shared, so its reads keep to the async path.
        self._inline = self.engine.dialect.driver == "inline" and parsed.database not in (
            None,
            "",
            ":memory:",
        )
        self._reader: Connection | None = None
        # Transactions on a file keep their connections out of the pool (`_kept_transaction`).
        self._writer_kept: Connection | None = None
        self._idle_readers: list[Connection] = []
        # Kept connections taken before the last `dispose()` are closed when given back.
        self._kept_from: dict[int, int] = {}
        self._disposals = 0

    @property
    def writer_busy(self) -> bool:
        """Whether a write transaction of this process holds (or waits for) SQLite's
        single writer lock."""
        return self._write_turn is not None and self._write_turn.locked()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: commits on success, rolls back on any error."""
        if self._write_turn is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        async with self._write_turn:
            if self._inline:
                async with self._kept_transaction(write=True) as conn:
                    yield conn
            else:
                async with self._writer.begin() as conn:
                    yield conn
            checkpointer = self.checkpointer
            if checkpointer is not None and checkpointer.restart_wanted:
                checkpointer.restart_here()  # between two writes (see `sqlite_checkpoint`)

    @asynccontextmanager
    async def _kept_transaction(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A transaction of the inline driver on a connection kept out of the pool, its
        statements run straight from the loop (`sqlite_inline.InlineConnection`). Through
        the pool, a transaction checked a connection out and in, dispatched SQLAlchemy's
        events and crossed into a greenlet four times: 245 us of CPU for an empty write
        transaction, against 15 us here, on every consumed batch, relay round, group
        commit and read. Writes take one connection, the writer: only one write
        transaction of this process runs at a time (`_write_turn`). Reads take an idle one
        of up to KEPT_READERS, or a new one from the pool (given back to it when that many
        are idle already)."""
        sync = await self._take_kept(write)
        dbapi = cast(sqlite_inline.Connection, sync.connection.dbapi_connection)
        try:
            if write:
                await sqlite_inline.begin_immediate_async(dbapi)
            else:
                dbapi.execute("BEGIN")  # deferred: no lock until the first read
            begun = sync.begin()  # SQLAlchemy's transaction; `_on_begin` leaves BEGIN to us
        except BaseException:
            await self._give_back(sync, write, healthy=_rolled_back(dbapi))
            raise
        try:
            yield sqlite_inline.InlineConnection(self.engine, sync)
        except BaseException:
            await self._give_back(sync, write, healthy=_rolled_back(begun))
            raise
        try:
            begun.commit() if write else begun.rollback()
        except BaseException:
            # A failed COMMIT leaves the transaction to SQLite's judgement: start afresh.
            await self._give_back(sync, write, healthy=False)
            raise
        await self._give_back(sync, write, healthy=True)

    async def _take_kept(self, write: bool) -> Connection:
        if write:
            kept = self._writer_kept
            if kept is None or kept.invalidated or kept.closed:
                kept = self._writer_kept = await self._connect(_BEGUN)
        elif self._idle_readers:
            kept = self._idle_readers.pop()
        else:
            kept = await self._connect(_BEGUN)
        self._kept_from[id(kept)] = self._disposals
        return kept

    async def _give_back(self, sync: Connection, write: bool, *, healthy: bool) -> None:
        if self._kept_from.pop(id(sync), self._disposals) != self._disposals:
            healthy = False  # taken before `dispose()`: closed, never kept again
        if write and self._writer_kept is sync:
            if healthy:
                return  # stays the writer
            self._writer_kept = None
        if healthy and len(self._idle_readers) < KEPT_READERS:
            self._idle_readers.append(sync)
            return
        if not healthy:
            with contextlib.suppress(Exception):
                sync.invalidate()
        await greenlet_spawn(sync.close)  # back to the pool (a new connection, if invalid)

    async def _connect(self, option: str) -> Connection:
        """A connection checked out of the pool (waiting for one where the pool may)."""
        return await greenlet_spawn(
            lambda: self.engine.sync_engine.connect().execution_options(**{option: True})
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only unit of work."""
        if self._inline:
            async with self._kept_transaction(write=False) as conn:
                yield conn
            return
        async with self.engine.connect() as conn:
            yield conn

    async def fetch_one(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> RowMapping | None:
        """The first row one read statement returns, or None; see `fetch_all`."""
        return (await self._alone(statement, parameters)).mappings().first()

    async def fetch_all(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> list[RowMapping]:
        """The rows of one read statement, run on its own: what it sees is one consistent
        state, but two calls may see different commits (use `read()` for reads that must
        agree). On SQLite it runs right away on the event loop's thread, in autocommit mode,
        on a connection kept for these reads: no pool, no BEGIN, no greenlet hand-offs, about
        a third of a `read()` block's CPU for a read by key. The loop waits for it, so it is
        for statements by key or bounded by a small limit."""
        return list((await self._alone(statement, parameters)).mappings().all())

    async def _alone(
        self, statement: Executable, parameters: Mapping[str, Any] | None
    ) -> CursorResult[Any]:
        """The statement's result, buffered (it outlives the connection)."""
        if not self._inline:
            async with self.engine.connect() as conn:
                return await conn.execute(statement, parameters)
        reader = self._reader
        if reader is None or reader.invalidated:
            reader = await self._open_reader()
        try:
            return reader.execute(statement, parameters)
        except BaseException:
            with contextlib.suppress(Exception):
                reader.rollback()
            raise

    async def _open_reader(self) -> Connection:
        """The connection `fetch_*` use, checked out of the pool where the pool may wait."""
        opened = await self._connect(_ALONE)
        current = self._reader
        if current is not None and not current.invalidated:  # another task was quicker
            await greenlet_spawn(opened.close)
            return current
        if current is not None:
            with contextlib.suppress(Exception):
                await greenlet_spawn(current.close)
        self._reader = opened
        return opened

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()  # started again by the next connection made
        # Those a transaction is still using are closed by it, at its end.
        kept = [self._reader, self._writer_kept, *self._idle_readers]
        idle = [c for c in kept if c is not None and id(c) not in self._kept_from]
        self._reader = self._writer_kept = None
        self._idle_readers = []
        self._disposals += 1
        for connection in idle:
            await greenlet_spawn(connection.close)
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine, checkpointer: Checkpointer | None) -> None:
    sync_engine = engine.sync_engine
    inline = engine.dialect.driver == "inline"
    # Inline, a statement waiting for a lock would stall the event loop: writers wait for the
    # write lock in `begin_immediate` (on the loop), everything else only briefly.
    busy_timeout = sqlite_inline.busy_timeout_ms if inline else 30000

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (the driver's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            f"busy_timeout={busy_timeout}",
            "foreign_keys=ON",
            # Deleted rows are overwritten, not left in free pages: an erased contact's
            # destroyed key must not be recoverable from the file.
            "secure_delete=ON",
            # Checkpoint the WAL into the database file every 20,000 pages (80 MiB with 4 KiB
            # pages) instead of SQLite's 1,000: a checkpoint copies every page written since
            # the last one (and syncs), and a consuming service rewrites the same hot pages
            # (its inbox, offsets, per-customer rows) in every batch, so fewer checkpoints
            # copy them fewer times. Alternating runs of the bench's Kafka phase: 0.37-0.38
            # ms of CPU per event for the whole system against 0.39-0.40 (+5-8% events/s);
            # 5,000 pages gave half of that and no automatic checkpoint at all no more.
            # The cost: a WAL file of up to 80 MiB per database (reused, not regrown) and a
            # longer replay of it when a database is opened after a crash. The checkpointer
            # thread does it at WAL_CHECKPOINT_PAGES; a connection only at twice that.
            f"wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()
        if checkpointer is not None:
            checkpointer.start()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get(_ALONE, False):
            return  # `isolation_level = None`: the statement is its own transaction
        if options.get(_BEGUN, False):
            return  # `Database._kept_transaction` ran BEGIN itself
        if options.get(_WRITE, False):
            if inline:
                sqlite_inline.begin_immediate(conn.connection.dbapi_connection)
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        driver = conn.connection.driver_connection
        if isinstance(driver, aiosqlite.Connection):
            await_(_begin_deferred(driver))
        else:
            conn.exec_driver_sql("BEGIN")


async def _begin_deferred(driver: aiosqlite.Connection) -> None:
    """`BEGIN` in one trip to aiosqlite's thread: through SQLAlchemy a statement takes
    three (cursor, execute, close), and every trip costs ~50 us of CPU in thread hand-offs,
    a good part of a by-id GET. A deferred BEGIN takes no lock and cannot be busy, so the
    SQLAlchemy error wrapping it skips does not matter; writers keep the wrapped path."""
    await driver.execute_fetchall("BEGIN")  # its cursor stays in that thread


def _rolled_back(transaction: Any) -> bool:
    """Roll back a transaction (SQLAlchemy's or the driver connection's); whether that
    worked, so the connection can be used again."""
    try:
        transaction.rollback()
    except Exception:
        return False
    return True
