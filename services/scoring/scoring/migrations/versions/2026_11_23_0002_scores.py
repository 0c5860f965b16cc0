"""Customer statistics, scores, published scores, score history, fitted models.

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
Money = sa.Numeric(18, 4)


def upgrade() -> None:
    op.create_table(
        "customer_stats",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("first_seen", UtcDateTime(), nullable=False),
        sa.Column("purchases", sa.Integer, nullable=False),
        sa.Column("purchase_days", sa.Integer, nullable=False),
        sa.Column("first_purchase_at", UtcDateTime(), nullable=True),
        sa.Column("last_purchase_at", UtcDateTime(), nullable=True),
        sa.Column("first_day_spend", Money, nullable=False),
        sa.Column("total_spend", Money, nullable=False),
        sa.Column("refunds", sa.Integer, nullable=False),
        sa.Column("refunded", Money, nullable=False),
        sa.Column("open_tickets", sa.Integer, nullable=False),
        sa.Column("latest_nps", sa.Integer, nullable=True),
        sa.Column("latest_csat", sa.Integer, nullable=True),
        sa.Column("feedback_at", UtcDateTime(), nullable=True),
        sa.Column("engagement_short", sa.Float, nullable=False),
        sa.Column("engagement_long", sa.Float, nullable=False),
        sa.Column("engagement_at", UtcDateTime(), nullable=True),
        sa.Column("stage", sa.String(20), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "scores",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("model_version", sa.String(50), nullable=False),
        sa.Column("computed_at", UtcDateTime(), nullable=False),
        sa.Column("p_alive", sa.Float, nullable=False),
        sa.Column("expected_purchases_90d", sa.Float, nullable=False),
        sa.Column("expected_purchases_365d", sa.Float, nullable=False),
        sa.Column("clv", sa.Float, nullable=False),
        sa.Column("churn_risk", sa.Float, nullable=False),
        sa.Column("risk_band", sa.String(10), nullable=False),
        sa.Column("tier", sa.String(5), nullable=True),
        sa.Column("rfm_r", sa.Integer, nullable=True),
        sa.Column("rfm_f", sa.Integer, nullable=True),
        sa.Column("rfm_m", sa.Integer, nullable=True),
        sa.Column("rfm_segment", sa.String(40), nullable=True),
        sa.Column("stage", sa.String(20), nullable=True),
        sa.Column("explanation", sa.JSON, nullable=False),
    )
    op.create_index("ix_scores_risk", "scores", ["churn_risk"])
    op.create_index("ix_scores_clv", "scores", ["clv"])
    op.create_index("ix_scores_tier", "scores", ["tier"])
    op.create_table(
        "published_scores",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("tier", sa.String(5), nullable=True),
        sa.Column("risk_band", sa.String(10), nullable=False),
        sa.Column("churn_risk", sa.Float, nullable=False),
        sa.Column("clv", sa.Float, nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "score_history",
        sa.Column("id", Position, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("score", sa.JSON, nullable=False),
    )
    op.create_index("ix_score_history_customer", "score_history", ["customer_id", "at"])
    op.create_table(
        "models",
        sa.Column("version", sa.String(50), primary_key=True),
        sa.Column("fitted_at", UtcDateTime(), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("model", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for table in ("models", "score_history", "published_scores", "scores", "customer_stats"):
        op.drop_table(table)
