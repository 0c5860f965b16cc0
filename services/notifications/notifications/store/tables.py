"""Notifications' schema: the core tables, what it knows of each customer (projected from
contacts, lifecycle and scoring events), rules and their versions, templates, deliveries."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from crm_shared.store.tables import CoreTables, UtcDateTime

metadata = MetaData()
core = CoreTables.on(metadata)

customers = Table(
    "customers",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("email", String(320), nullable=True),
    Column("phone", String(40), nullable=True),
    Column("first_name", String(200), nullable=True),
    Column("time_zone", String(64), nullable=True),
    Column("locale", String(20), nullable=True),
    Column("birthday", String(10), nullable=True),
    Column("tags", JSON, nullable=False),
    Column("attributes", JSON, nullable=False),
    Column("consent", JSON, nullable=False),
    Column("stage", String(20), nullable=True),
    Column("tier", String(5), nullable=True),
    Column("risk_band", String(10), nullable=True),
    Column("churn_risk", Float, nullable=True),
    Column("clv", Float, nullable=True),
    Column("merged_into", String(200), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("erased_at", UtcDateTime(), nullable=True),
)

rules = Table(
    "rules",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("body", JSON, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

rule_versions = Table(
    "rule_versions",
    metadata,
    Column("rule_id", String(100), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("body", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

templates = Table(
    "templates",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("channel", String(20), nullable=False),
    Column("subject", Text, nullable=True),
    Column("body", Text, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("idempotency_key", String(500), nullable=False, unique=True),
    Column("rule_id", String(100), nullable=False),
    Column("rule_version", Integer, nullable=False),
    Column("customer_id", String(200), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("template", String(100), nullable=False),
    Column("transactional", Boolean, nullable=False),
    Column("status", String(20), nullable=False),
    Column("reason", String(500), nullable=True),
    Column("error", Text, nullable=True),
    Column("due_at", UtcDateTime(), nullable=False),
    Column("trigger_event_id", String(200), nullable=False),
    Column("trigger_kind", String(30), nullable=False),
    Column("trigger_time", UtcDateTime(), nullable=False),
    Column("cancel_on", JSON, nullable=False),
    Column("context", JSON, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("local_date", String(10), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("sent_at", UtcDateTime(), nullable=True),
    Index("ix_deliveries_due", "status", "due_at"),
    Index("ix_deliveries_customer", "customer_id", "created_at"),
    Index("ix_deliveries_caps", "customer_id", "channel", "local_date"),
)

# Every trigger seen, so a rule can be tried out over past weeks without sending (dry run).
trigger_log = Table(
    "trigger_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", String(200), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("kind", String(30), nullable=False),
    Column("time", UtcDateTime(), nullable=False),
    Column("value", String(200), nullable=True),
    Column("left_stage", String(20), nullable=True),
    Column("nps", Integer, nullable=True),
    Index("ix_trigger_log_time", "time"),
    Index("ix_trigger_log_event", "event_id"),  # corrected-away stage changes leave by id
)
