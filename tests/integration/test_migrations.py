"""Every service's migrations produce exactly the schema its tables declare."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from crm_shared.store.db import Database
from crm_shared.store.migrations import upgrade_async

SERVICES = ["contacts", "lifecycle", "scoring", "notifications"]


def _service(name: str) -> tuple[Path, MetaData]:
    bootstrap = __import__(f"{name}.bootstrap", fromlist=["MIGRATIONS"])
    tables = __import__(f"{name}.store.tables", fromlist=["metadata"])
    return bootstrap.MIGRATIONS, tables.metadata


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_match_the_declared_tables(service: str, database_url: str) -> None:
    migrations, metadata = _service(service)
    await upgrade_async(migrations, database_url)
    await upgrade_async(migrations, database_url)  # applying again is a no-op
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(_diff, metadata)
    finally:
        await db.dispose()
    assert diff == []


def _diff(conn: Connection, metadata: MetaData) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": False})
    return [d for d in compare_metadata(context, metadata) if not _is_alembic_table(d)]


def _is_alembic_table(diff: object) -> bool:
    return (
        isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == "alembic_version"
    )
