"""Core tables, the stage projection and its transitions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from crm_shared.store.migrations import create_core_tables_v1
from crm_shared.store.tables import Position, UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_core_tables_v1()
    op.create_table(
        "customer_stages",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("stage_since", UtcDateTime(), nullable=False),
        sa.Column("purchases", sa.Integer, nullable=False),
        sa.Column("first_purchase_at", UtcDateTime(), nullable=True),
        sa.Column("last_purchase_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "stage_transitions",
        sa.Column("id", Position, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("from_stage", sa.String(20), nullable=True),
        sa.Column("to_stage", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(50), nullable=False),
        sa.Column("caused_by", sa.String(200), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("recorded_at", UtcDateTime(), nullable=False),
        sa.Column("policy_version", sa.String(50), nullable=False),
    )
    op.create_index("ix_stage_transitions_customer", "stage_transitions", ["customer_id", "id"])


def downgrade() -> None:
    op.drop_table("stage_transitions")
    op.drop_table("customer_stages")
    op.drop_table("inbox")
    op.drop_table("outbox")
    op.drop_table("events")
