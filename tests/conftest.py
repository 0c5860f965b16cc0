"""Fixtures shared by the project's tests (the broker and databases come from the plugin)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy import MetaData

from crm_shared.store.db import Database
from crm_shared.store.tables import CoreTables
from tests.support.db import CoreDb


@pytest_asyncio.fixture(loop_scope="session")
async def core(database_url: str) -> AsyncIterator[CoreDb]:
    """A fresh database holding just the core tables (events, outbox, inbox)."""
    metadata = MetaData()
    tables = CoreTables.on(metadata)
    db = Database(database_url)
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield CoreDb(db, tables)
    finally:
        await db.dispose()
