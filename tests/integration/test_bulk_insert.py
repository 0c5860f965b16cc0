"""`crm_shared.store.bulk.insert_rows` against SQLAlchemy Core on every configured database:
the same rows stored, the same conflicts, the same errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import pytest_asyncio
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from crm_shared.store import bulk
from crm_shared.store.bulk import insert_rows
from crm_shared.store.db import Database
from crm_shared.store.sql import upsert
from crm_shared.store.tables import Position, UtcDateTime

metadata = MetaData()


def _table(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Position, primary_key=True, autoincrement=True),
        Column("code", String(50), nullable=False),
        Column("n", Integer),
        Column("ratio", Float),
        Column("flag", Boolean),
        Column("at", UtcDateTime),
        Column("doc", JSON),
        Column("note", Text),
        UniqueConstraint("code"),
    )


fast, core = _table("fast_rows"), _table("core_rows")
defaults = Table(
    "defaulted",
    metadata,
    Column("code", String(50), primary_key=True),
    Column("n", Integer, default=7),
)
EAST = timezone(timedelta(hours=5, minutes=30))


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield database
    finally:
        await database.dispose()


def _rows() -> list[dict[str, object]]:
    return [
        {
            "code": "a",
            "n": 1,
            "ratio": 0.25,
            "flag": True,
            "at": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
            "doc": {"k": [1, "x", None], "deep": {"v": 1.5}},
            "note": "plain",
        },
        {
            "code": "b",
            "n": None,
            "ratio": None,
            "flag": False,
            "at": datetime(2026, 3, 1, 17, 30, 0, 123456, tzinfo=EAST),
            "doc": ["a", 2],
            "note": 'it\'s "quoted" ü',
        },
        {
            "code": "c",
            "n": -5,
            "ratio": 1e300,
            "flag": None,
            "at": None,
            "doc": None,
            "note": None,
        },
    ]


async def _read(db: Database, table: Table) -> list[dict[str, object]]:
    async with db.read() as conn:
        result = await conn.execute(select(table).order_by(table.c.code))
        return [{k: v for k, v in r._mapping.items() if k != "id"} for r in result]


async def test_rows_read_back_exactly_as_sqlalchemy_core_stores_them(db: Database) -> None:
    async with db.transaction() as conn:
        await insert_rows(conn, fast, _rows())
        await conn.execute(insert(core), _rows())
    stored, expected = await _read(db, fast), await _read(db, core)
    assert stored == expected
    assert [r["code"] for r in stored] == ["a", "b", "c"]
    at_b = stored[1]["at"]
    assert isinstance(at_b, datetime) and at_b.tzinfo is not None
    assert at_b == datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert stored[0]["doc"] == {"k": [1, "x", None], "deep": {"v": 1.5}}
    assert stored[2]["doc"] is None
    # It went the direct way (a fallback to Core would pass the checks above too).
    assert _direct(db, fast, tuple(_rows()[0]))


def _direct(db: Database, table: Table, columns: tuple[str, ...]) -> bool:
    dialect = db.engine.dialect
    plan = bulk._plans[(dialect.name, dialect.paramstyle, table, columns, "error", ())]
    return plan.sql is not None


async def test_a_conflict_raises_and_the_transaction_stores_nothing(db: Database) -> None:
    with pytest.raises(IntegrityError):
        async with db.transaction() as conn:
            await insert_rows(conn, fast, _rows()[:1])
            await insert_rows(conn, fast, _rows())
    assert await _read(db, fast) == []


async def test_on_conflict_nothing_keeps_the_stored_row_and_adds_the_others(
    db: Database,
) -> None:
    first = _rows()
    async with db.transaction() as conn:
        await insert_rows(conn, fast, first[:1])
    again = _rows()
    again[0]["note"] = "changed"
    async with db.transaction() as conn:
        await insert_rows(conn, fast, again, on_conflict="nothing")
    stored = await _read(db, fast)
    assert [r["note"] for r in stored] == ["plain", again[1]["note"], None]


async def test_on_conflict_update_overwrites_the_columns_it_is_given(db: Database) -> None:
    async with db.transaction() as conn:
        await insert_rows(conn, fast, _rows())
    later = datetime(2027, 1, 1, tzinfo=UTC)
    async with db.transaction() as conn:
        await upsert(conn, fast, [{"code": "a", "n": 99, "at": later}], key=["code"])
        await insert_rows(
            conn, fast, [{"code": "d", "n": 4, "note": "new"}], on_conflict="update", key=["code"]
        )
    stored = {str(r["code"]): r for r in await _read(db, fast)}
    assert stored["a"]["n"] == 99 and stored["a"]["at"] == later
    assert stored["a"]["note"] == "plain" and stored["a"]["doc"] == _rows()[0]["doc"]
    assert stored["d"]["n"] == 4 and stored["d"]["note"] == "new"
    assert sorted(stored) == ["a", "b", "c", "d"]


async def test_a_naive_timestamp_is_refused(db: Database) -> None:
    row = {**_rows()[0], "at": datetime(2026, 3, 1, 12, 0)}
    with pytest.raises(ValueError, match="timezone-aware"):
        async with db.transaction() as conn:
            await insert_rows(conn, fast, [row])
    assert await _read(db, fast) == []


async def test_columns_with_python_side_defaults_get_them(db: Database) -> None:
    async with db.transaction() as conn:
        await insert_rows(conn, defaults, [{"code": "x"}, {"code": "y"}])
        await insert_rows(conn, defaults, [{"code": "z", "n": 1}])
    async with db.read() as conn:
        stored = (await conn.execute(select(defaults).order_by(defaults.c.code))).all()
    assert [tuple(r) for r in stored] == [("x", 7), ("y", 7), ("z", 1)]
    assert not _direct(db, defaults, ("code",))  # defaults are Core's to compute
    assert _direct(db, defaults, ("code", "n"))


async def test_an_empty_batch_does_nothing(db: Database) -> None:
    async with db.transaction() as conn:
        await insert_rows(conn, fast, [])
    assert await _read(db, fast) == []
