"""A merged contact's statistics stay, marked with the survivor, so an unmerge can give them
back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customer_stats") as batch:
        batch.add_column(sa.Column("merged_into", sa.String(200), nullable=True))
    op.create_index("ix_customer_stats_merged_into", "customer_stats", ["merged_into"])


def downgrade() -> None:
    op.drop_index("ix_customer_stats_merged_into", table_name="customer_stats")
    with op.batch_alter_table("customer_stats") as batch:
        batch.drop_column("merged_into")
