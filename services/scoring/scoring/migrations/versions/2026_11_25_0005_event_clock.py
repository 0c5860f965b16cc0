"""The event-time clock, kept: a restart does not move scoring's now to the wall clock.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from crm_shared.store.tables import UtcDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scoring_clock",
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("value", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scoring_clock")
