"""Lifecycle's schema: the core tables plus the stage projection and its transitions."""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, String, Table

from crm_shared.store.tables import CoreTables, Position, UtcDateTime

metadata = MetaData()
core = CoreTables.on(metadata)

customer_stages = Table(
    "customer_stages",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("stage", String(20), nullable=False),
    Column("stage_since", UtcDateTime(), nullable=False),
    Column("purchases", Integer, nullable=False),
    Column("first_purchase_at", UtcDateTime(), nullable=True),
    Column("last_purchase_at", UtcDateTime(), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
)

stage_transitions = Table(
    "stage_transitions",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("customer_id", String(200), nullable=False),
    Column("from_stage", String(20), nullable=True),
    Column("to_stage", String(20), nullable=False),
    Column("reason", String(50), nullable=False),
    Column("caused_by", String(200), nullable=False),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("policy_version", String(50), nullable=False),
    Index("ix_stage_transitions_customer", "customer_id", "id"),
)
