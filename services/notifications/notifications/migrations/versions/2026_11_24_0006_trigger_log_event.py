"""An index on the trigger log's event ids: the triggers of a stage change lifecycle
corrected away are deleted by its id.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_trigger_log_event", "trigger_log", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_trigger_log_event", table_name="trigger_log")
