"""Scoring's schema: core tables, per-customer statistics, scores, published scores, models."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
)

from crm_shared.store.tables import CoreTables, Position, UtcDateTime

metadata = MetaData()
core = CoreTables.on(metadata)
Money = Numeric(18, 4)

customer_stats = Table(
    "customer_stats",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("first_seen", UtcDateTime(), nullable=False),
    Column("purchases", Integer, nullable=False),
    Column("purchase_days", Integer, nullable=False),
    Column("first_purchase_at", UtcDateTime(), nullable=True),
    Column("last_purchase_at", UtcDateTime(), nullable=True),
    Column("first_day_spend", Money, nullable=False),
    Column("total_spend", Money, nullable=False),
    Column("refunds", Integer, nullable=False),
    Column("refunded", Money, nullable=False),
    Column("open_tickets", Integer, nullable=False),
    Column("latest_nps", Integer, nullable=True),
    Column("latest_csat", Integer, nullable=True),
    Column("feedback_at", UtcDateTime(), nullable=True),
    Column("engagement_short", Float, nullable=False),
    Column("engagement_long", Float, nullable=False),
    Column("engagement_at", UtcDateTime(), nullable=True),
    Column("stage", String(20), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
    # A contact merged into another keeps its own statistics, counted in the survivor's
    # scores while merged, its own again after an unmerge.
    Column("merged_into", String(200), nullable=True),
    Index("ix_customer_stats_merged_into", "merged_into"),
)

scores = Table(
    "scores",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("model_version", String(50), nullable=False),
    Column("computed_at", UtcDateTime(), nullable=False),
    Column("p_alive", Float, nullable=False),
    Column("expected_purchases_90d", Float, nullable=False),
    Column("expected_purchases_365d", Float, nullable=False),
    Column("clv", Float, nullable=False),
    Column("churn_risk", Float, nullable=False),
    Column("risk_band", String(10), nullable=False),
    Column("tier", String(5), nullable=True),
    Column("rfm_r", Integer, nullable=True),
    Column("rfm_f", Integer, nullable=True),
    Column("rfm_m", Integer, nullable=True),
    Column("rfm_segment", String(40), nullable=True),
    Column("stage", String(20), nullable=True),
    Column("explanation", JSON, nullable=False),
    Index("ix_scores_risk", "churn_risk"),
    Index("ix_scores_clv", "clv"),
    Index("ix_scores_tier", "tier"),
)

# What was last published per customer: material changes are measured against it.
published_scores = Table(
    "published_scores",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("tier", String(5), nullable=True),
    Column("risk_band", String(10), nullable=False),
    Column("churn_risk", Float, nullable=False),
    Column("clv", Float, nullable=False),
    Column("published_at", UtcDateTime(), nullable=False),
)

score_history = Table(
    "score_history",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("customer_id", String(200), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("score", JSON, nullable=False),
    Index("ix_score_history_customer", "customer_id", "at"),
)

# The event-time clock (the latest event time seen), shared by replicas and kept across
# restarts: a refit or rescore after a restart scores at the replay's time, not today's.
scoring_clock = Table(
    "scoring_clock",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("value", UtcDateTime(), nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("version", String(50), primary_key=True),
    Column("fitted_at", UtcDateTime(), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("model", JSON, nullable=False),
)
