"""SQLite for the async engine without a thread: `sqlite+inline://`.

aiosqlite runs every call (cursor, execute, fetch, close) on a worker thread and wakes the
event loop when it is done; a SQLAlchemy statement takes three or more such trips, each
~50 us of CPU, while the statements themselves (a local file, WAL, a warm page cache) take a
few microseconds. Profiles of every service put 67-70% of the CPU in those hand-offs. This
dialect gives SQLAlchemy's async engine the standard library's `sqlite3` connection and lets
it run statements on the event loop's thread.

What that costs: a statement blocks the loop while it runs, and a transaction of many
statements would hold the loop for all of them (awaiting a finished coroutine does not let
the loop run), starving the service's other tasks: its relay, its HTTP requests, Kafka
heartbeats. So a statement yields to the loop (`asyncio.sleep(0)`) once `yield_every`
seconds have passed since the last time one did. Every statement our services run
is by key or bounded by a page size, so that is microseconds to a few milliseconds. Waiting
for a lock must never block the loop, so:

- a write transaction's `BEGIN IMMEDIATE` is tried without waiting, and while another
  connection (another process, or an ops command) holds the write lock it is retried after an
  `asyncio.sleep`, up to `lock_timeout`; writers of one process already queue on an asyncio
  lock (`Database.transaction`) before they get here;
- everything else runs with a short busy timeout (`busy_timeout_ms`): in WAL mode readers do
  not wait for writers, so only rare cases (WAL recovery after a crash) wait at all.

`sqlite+aiosqlite://` still works for anyone who wants the thread back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Generator, Iterator
from typing import Any

from sqlalchemy import pool
from sqlalchemy.dialects.sqlite.base import SQLiteExecutionContext
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, CursorResult
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.asyncio.result import _ensure_sync_result
from sqlalchemy.sql.base import Executable
from sqlalchemy.util import await_
from sqlalchemy.util.concurrency import in_greenlet

busy_timeout_ms = 200
yield_every = 0.005
_last_yield = 0.0
lock_timeout = 30.0
# While another connection holds the write lock (an ops command, another process), try again
# after 0.2, 0.4, 0.8 ... ms, at most 5 ms apart: with 1 to 50 ms a hold of 5 ms cost a
# write up to 15. (This process's own writers queue in `Database.transaction` instead.)
_first_backoff = 0.0002
_max_backoff = 0.005


class Cursor:
    """A `sqlite3` cursor as SQLAlchemy's async engine expects one: rows of a statement are
    read when it runs (so a result outlives its transaction, as with any async driver),
    except on a server-side cursor, which steps as rows are fetched."""

    __slots__ = ("_cursor", "_rows", "arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, cursor: sqlite3.Cursor, server_side: bool) -> None:
        self._cursor = cursor
        self._rows: deque[Any] | None = None if server_side else deque()
        self.arraysize = 1
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    def _done(self) -> None:
        cursor = self._cursor
        self.description = cursor.description
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid
        if self._rows is not None:
            self._rows = deque(cursor.fetchall()) if cursor.description else deque()

    def execute(self, operation: str, parameters: Any = None) -> None:
        _pause()
        if parameters is None:
            self._cursor.execute(operation)
        else:
            self._cursor.execute(operation, parameters)
        self._done()

    def executemany(self, operation: str, seq_of_parameters: Any) -> None:
        _pause()
        self._cursor.executemany(operation, seq_of_parameters)
        self._done()

    def fetchone(self) -> Any:
        if self._rows is None:
            return self._cursor.fetchone()
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        size = self.arraysize if size is None else size
        if self._rows is None:
            return self._cursor.fetchmany(size)
        rows = self._rows
        return [rows.popleft() for _ in range(min(size, len(rows)))]

    def fetchall(self) -> list[Any]:
        if self._rows is None:
            return self._cursor.fetchall()
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row

    def close(self) -> None:
        if self._rows is not None:
            self._rows.clear()
        self._cursor.close()

    async def _async_soft_close(self) -> None:
        # Called once a result is buffered: ours are (or stream on purpose).
        return None

    def setinputsizes(self, *sizes: Any) -> None:
        return None

    def setoutputsize(self, *args: Any) -> None:
        return None


class Connection:
    """A `sqlite3` connection handing out `Cursor`s; everything else passes through."""

    __slots__ = ("_connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def cursor(self, server_side: bool = False) -> Cursor:
        return Cursor(self._connection.cursor(), server_side)

    @property
    def isolation_level(self) -> str | None:
        return self._connection.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._connection.isolation_level = value  # type: ignore[assignment]

    def commit(self) -> None:
        self._connection.commit()

    def rollback(self) -> None:
        self._connection.rollback()

    def close(self) -> None:
        self._connection.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class _DBAPI:
    """The `sqlite3` module, connecting through `Connection`."""

    paramstyle = "qmark"

    def __init__(self) -> None:
        for name in (
            "DatabaseError",
            "DataError",
            "Error",
            "IntegrityError",
            "InterfaceError",
            "InternalError",
            "NotSupportedError",
            "OperationalError",
            "ProgrammingError",
            "Warning",
            "Binary",
            "PARSE_COLNAMES",
            "PARSE_DECLTYPES",
            "sqlite_version",
            "sqlite_version_info",
        ):
            setattr(self, name, getattr(sqlite3, name))

    def connect(self, *args: Any, **kwargs: Any) -> Connection:
        return Connection(sqlite3.connect(*args, **kwargs))


class _ExecutionContext(SQLiteExecutionContext):
    def create_server_side_cursor(self) -> DBAPICursor:
        return self._dbapi_connection.cursor(server_side=True)


class SQLiteDialect_inline(SQLiteDialect_pysqlite):
    driver = "inline"
    is_async = True
    supports_statement_cache = True
    supports_server_side_cursors = True
    execution_ctx_cls = _ExecutionContext

    @classmethod
    def import_dbapi(cls) -> Any:
        return _DBAPI()

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool

    def create_connect_args(self, url: URL) -> Any:
        args, options = super().create_connect_args(url)
        # The pool hands connections between tasks of one loop; garbage collection may
        # close one from another thread.
        options["check_same_thread"] = False
        return args, options

    def get_driver_connection(self, connection: Any) -> Any:
        return connection._connection


async def _ready() -> None:
    return None


def _pause() -> None:
    """Before a statement: SQLAlchemy's async engine insists that a statement awaited
    something (`AwaitRequired` otherwise), so await a finished coroutine (a switch to the
    loop's greenlet and back, ~1 us); every `yield_every` seconds let the loop run instead.
    A statement run through the sync engine (`Database.fetch_one`) has nothing to await."""
    global _last_yield
    if not in_greenlet():
        return
    now = time.perf_counter()
    if now - _last_yield < yield_every:
        await_(_ready())
        return
    await_(asyncio.sleep(0))
    _last_yield = time.perf_counter()


async def _maybe_yield() -> None:
    """`_pause` for a statement run straight from a coroutine (`InlineConnection`)."""
    global _last_yield
    if time.perf_counter() - _last_yield >= yield_every:
        await asyncio.sleep(0)
        _last_yield = time.perf_counter()


class InlineConnection(AsyncConnection):
    """An `AsyncConnection` whose statements run straight from the coroutine that awaits
    them, on a connection of this driver that is already in a transaction its owner began
    (`Database.transaction` and `Database.read` on a file). Through `AsyncConnection`
    every statement is handed to a new greenlet and switched into and out of it three
    times, for a statement that then runs on this same thread anyway: that was about half
    of a statement's CPU (a select by key: 87 us against 45 us). It lets the loop run
    every `yield_every` seconds, as `_pause` does. Streams, `run_sync` and nested
    transactions keep the greenlet path."""

    __slots__ = ()

    async def execute(
        self,
        statement: Executable,
        parameters: Any = None,
        *,
        execution_options: Any = None,
    ) -> CursorResult[Any]:
        await _maybe_yield()
        result = self._proxied.execute(statement, parameters, execution_options=execution_options)
        # SQLAlchemy's own check (private, pinned by uv.lock): a server-side cursor must be
        # read through `stream()`.
        return await _ensure_sync_result(result, self.execute)

    async def exec_driver_sql(
        self, statement: str, parameters: Any = None, execution_options: Any = None
    ) -> CursorResult[Any]:
        await _maybe_yield()
        result = self._proxied.exec_driver_sql(statement, parameters, execution_options)
        return await _ensure_sync_result(result, self.exec_driver_sql)


def is_locked(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error).lower()


def begin_immediate(dbapi_connection: Connection) -> None:
    """Take the write lock; while another connection holds it, wait on the event loop
    (from SQLAlchemy's greenlet: the "begin" event of a pooled connection)."""
    cursor = dbapi_connection.cursor()
    attempts = _begin_attempts(cursor)
    try:
        for pause in attempts:
            await_(asyncio.sleep(pause))
    finally:
        attempts.close()
        cursor.close()


async def begin_immediate_async(dbapi_connection: Connection) -> None:
    """`begin_immediate` for a caller on the loop itself (`Database.transaction`)."""
    cursor = dbapi_connection.cursor()
    attempts = _begin_attempts(cursor)
    try:
        for pause in attempts:
            await asyncio.sleep(pause)
    finally:
        attempts.close()
        cursor.close()


def _begin_attempts(cursor: Cursor) -> Generator[float, None, None]:
    """Run `BEGIN IMMEDIATE` without waiting in SQLite; while the lock is held elsewhere,
    yield how long to wait before the next try, until `lock_timeout` has passed."""
    cursor.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + lock_timeout
        backoff = _first_backoff
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if not is_locked(error) or time.monotonic() >= deadline:
                    raise
            yield backoff
            backoff = min(backoff * 2, _max_backoff)
    finally:
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
