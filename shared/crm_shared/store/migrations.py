"""Alembic, one migration history per service, applied at start-up or by a command.

A service keeps its history in `<package>/migrations/`; its `env.py` calls `run_env` with the
service's MetaData. On PostgreSQL an advisory lock serialises replicas that start together.
"""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from crm_shared.store.db import async_url
from crm_shared.store.tables import Position, UtcDateTime

_LOCK = zlib.crc32(b"crm-migrations") & 0x7FFFFFFF


def alembic_config(script_location: Path, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


def upgrade(script_location: Path, url: str, revision: str = "head") -> None:
    """Bring the database to `revision` (blocking; call it from a thread inside a loop)."""
    command.upgrade(alembic_config(script_location, url), revision)


async def upgrade_async(script_location: Path, url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, script_location, url, revision)


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's `env.py`."""
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    if context.is_offline_mode():
        context.configure(
            url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(url, target_metadata))


async def _run_online(url: str, target_metadata: MetaData) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_migrate, target_metadata)
            await conn.commit()
    finally:
        await engine.dispose()


def _migrate(conn: Connection, target_metadata: MetaData) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_LOCK})"))
    context.configure(
        connection=conn,
        target_metadata=target_metadata,
        render_as_batch=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def create_core_tables_v1() -> None:
    """`events`, `outbox` and `inbox` as every service's first migration creates them.

    Frozen: a later change to these tables is a new function used by a new migration.
    """
    from alembic import op

    op.create_table(
        "events",
        sa.Column("position", Position, primary_key=True, autoincrement=True),
        sa.Column("stream_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
        sa.Column("recorded_at", UtcDateTime(), nullable=False),
        sa.Column("envelope", sa.JSON, nullable=False),
        sa.UniqueConstraint("stream_id", "version", name="uq_events_stream_version"),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", Position, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=True),
    )
    pending = sa.text("published_at IS NULL")
    op.create_index(
        "ix_outbox_pending", "outbox", ["id"], postgresql_where=pending, sqlite_where=pending
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(100), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("processed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox"),
    )


def add_outbox_parking_v2() -> None:
    """The outbox's `parked_at` and `parked_reason`: messages the relay set aside (too
    large for the broker) instead of retrying them forever.

    Frozen, as `create_core_tables_v1`.
    """
    from alembic import op

    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("parked_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("parked_reason", sa.Text, nullable=True))
    parked = sa.text("parked_at IS NOT NULL")
    op.create_index(
        "ix_outbox_parked", "outbox", ["id"], postgresql_where=parked, sqlite_where=parked
    )


def drop_outbox_parking_v2() -> None:
    """Undo `add_outbox_parking_v2`."""
    from alembic import op

    op.drop_index("ix_outbox_parked", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("parked_reason")
        batch.drop_column("parked_at")
