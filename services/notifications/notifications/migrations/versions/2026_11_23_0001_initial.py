"""Core tables: event store, outbox and inbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from crm_shared.store.migrations import create_core_tables_v1

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_core_tables_v1()


def downgrade() -> None:
    from alembic import op

    for table in ("inbox", "outbox", "events"):
        op.drop_table(table)
