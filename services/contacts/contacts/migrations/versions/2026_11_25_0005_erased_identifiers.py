"""Erased contacts' identifiers, as keyed hashes: events naming them are refused.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "erased_identifiers",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("contact_id", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erased_identifiers")
