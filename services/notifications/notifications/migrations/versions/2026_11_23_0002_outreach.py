"""Customers as notifications sees them, rules with versions, templates, deliveries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from crm_shared.store.tables import UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("phone", sa.String(40), nullable=True),
        sa.Column("first_name", sa.String(200), nullable=True),
        sa.Column("time_zone", sa.String(64), nullable=True),
        sa.Column("locale", sa.String(20), nullable=True),
        sa.Column("birthday", sa.String(10), nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("consent", sa.JSON, nullable=False),
        sa.Column("stage", sa.String(20), nullable=True),
        sa.Column("tier", sa.String(5), nullable=True),
        sa.Column("risk_band", sa.String(10), nullable=True),
        sa.Column("churn_risk", sa.Float, nullable=True),
        sa.Column("clv", sa.Float, nullable=True),
        sa.Column("merged_into", sa.String(200), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "rules",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "rule_versions",
        sa.Column("rule_id", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "templates",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("subject", sa.Text, nullable=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("idempotency_key", sa.String(500), nullable=False, unique=True),
        sa.Column("rule_id", sa.String(100), nullable=False),
        sa.Column("rule_version", sa.Integer, nullable=False),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("transactional", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.Column("trigger_event_id", sa.String(200), nullable=False),
        sa.Column("trigger_kind", sa.String(30), nullable=False),
        sa.Column("trigger_time", UtcDateTime(), nullable=False),
        sa.Column("cancel_on", sa.JSON, nullable=False),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("local_date", sa.String(10), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("sent_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["status", "due_at"])
    op.create_index("ix_deliveries_customer", "deliveries", ["customer_id", "created_at"])
    op.create_index("ix_deliveries_caps", "deliveries", ["customer_id", "channel", "local_date"])


def downgrade() -> None:
    for table in ("deliveries", "templates", "rule_versions", "rules", "customers"):
        op.drop_table(table)
