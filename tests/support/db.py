from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import MetaData, event

from crm_shared.store.db import Database
from crm_shared.store.tables import CoreTables


@dataclass
class CoreDb:
    """A database with the core tables, and the tables' handles."""

    db: Database
    tables: CoreTables


async def database_with(url: str, metadata: MetaData) -> Database:
    """A database at `url` with `metadata`'s tables created."""
    db = Database(url)
    async with db.transaction() as conn:
        await conn.run_sync(metadata.create_all)
    return db


@contextmanager
def statements_of(db: Database) -> Iterator[list[str]]:
    """The SQL the database runs inside the block, each on one line and upper-cased; the
    list grows as statements run."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(" ".join(str(args[2]).split()).upper())

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
