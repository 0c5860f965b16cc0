"""Where each customer's fold stands, so that in-order events continue it; wake-ups for
customers with facts dated after the clock.

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
    # Existing rows keep NULLs: their next change replays the history and fills them in.
    op.add_column("customer_stages", sa.Column("last_fact_at", UtcDateTime(), nullable=True))
    op.add_column("customer_stages", sa.Column("last_fact_id", sa.String(200), nullable=True))
    op.add_column("customer_stages", sa.Column("next_seq", sa.Integer, nullable=True))
    op.add_column(
        "customer_stages",
        sa.Column("erased", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "lifecycle_wakeups",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_lifecycle_wakeups_at", "lifecycle_wakeups", ["at"])


def downgrade() -> None:
    op.drop_table("lifecycle_wakeups")
    with op.batch_alter_table("customer_stages") as batch:
        for column in ("erased", "next_seq", "last_fact_id", "last_fact_at"):
            batch.drop_column(column)
