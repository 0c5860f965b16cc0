"""Fresh databases for tests: a SQLite file, or a PostgreSQL database created and dropped.

`CRM_TEST_DATABASES` chooses the backends storage tests run on (comma-separated:
`sqlite`, `postgres`; default `sqlite`). `CRM_TEST_POSTGRES_URL` is the server to create
databases on (default `postgresql://postgres@127.0.0.1:5432/postgres`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgres")


def configured_backends() -> list[str]:
    raw = os.environ.get("CRM_TEST_DATABASES", "sqlite")
    chosen = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        raise ValueError(f"CRM_TEST_DATABASES: unknown backend(s) {sorted(unknown)}")
    return chosen


def postgres_server_url() -> str:
    return os.environ.get("CRM_TEST_POSTGRES_URL", DEFAULT_POSTGRES)


@asynccontextmanager
async def fresh_database(backend: str, directory: Path) -> AsyncIterator[str]:
    """Yield the SQLAlchemy URL of a new, empty database; remove it afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / f'{uuid.uuid4().hex[:8]}.db'}"
        return
    async with _postgres_database() as url:
        yield url


@asynccontextmanager
async def _postgres_database() -> AsyncIterator[str]:
    server = make_url(postgres_server_url())
    name = f"crm_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(server))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = server.set(drivername="postgresql+asyncpg", database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _asyncpg_dsn(url: object) -> str:
    rendered: str = url.set(drivername="postgresql").render_as_string(hide_password=False)  # type: ignore[attr-defined]
    return rendered
