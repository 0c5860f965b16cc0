"""Facts log, due times, transition history with corrections, event-time clock.

The first schema kept only counters; replays need each customer's facts. Existing rows
of the old projection are dropped: a rebuild from the facts recreates them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from crm_shared.store.tables import Position, UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "facts",
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("origin_id", sa.String(200), nullable=False),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_facts_customer", "facts", ["customer_id", "time"])
    op.create_index("ix_facts_origin", "facts", ["origin_id"])
    op.drop_table("stage_transitions")
    op.drop_table("customer_stages")
    op.create_table(
        "customer_stages",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("stage_since", UtcDateTime(), nullable=False),
        sa.Column("purchases", sa.Integer, nullable=False),
        sa.Column("first_purchase_at", UtcDateTime(), nullable=True),
        sa.Column("last_purchase_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("next_due", UtcDateTime(), nullable=True),
        sa.Column("policy_version", sa.String(50), nullable=False),
    )
    op.create_index("ix_customer_stages_due", "customer_stages", ["next_due"])
    op.create_index("ix_customer_stages_stage", "customer_stages", ["stage"])
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
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("correction", sa.Boolean, nullable=False),
        sa.Column("superseded", sa.Boolean, nullable=False),
    )
    op.create_index("ix_stage_transitions_customer", "stage_transitions", ["customer_id", "id"])
    op.create_index("ix_stage_transitions_occurred", "stage_transitions", ["occurred_at"])
    op.create_table(
        "lifecycle_clock",
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("value", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in ("lifecycle_clock", "stage_transitions", "customer_stages", "facts"):
        op.drop_table(table)
