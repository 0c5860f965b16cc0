"""Trigger log, for dry runs of rules over past weeks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from crm_shared.store.tables import UtcDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trigger_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
        sa.Column("value", sa.String(200), nullable=True),
        sa.Column("left_stage", sa.String(20), nullable=True),
        sa.Column("nps", sa.Integer, nullable=True),
    )
    op.create_index("ix_trigger_log_time", "trigger_log", ["time"])


def downgrade() -> None:
    op.drop_table("trigger_log")
