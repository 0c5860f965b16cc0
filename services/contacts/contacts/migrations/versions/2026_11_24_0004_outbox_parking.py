"""The outbox's parked messages: set aside by the relay, with the reason.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from crm_shared.store.migrations import add_outbox_parking_v2, drop_outbox_parking_v2

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_parking_v2()


def downgrade() -> None:
    drop_outbox_parking_v2()
