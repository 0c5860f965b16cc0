"""Lifecycle's schema: the core tables, the facts it keeps of consumed events (its log), the
stage projection, the transitions, and the event-time clock."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, Integer, MetaData, String, Table, false

from crm_shared.store.tables import CoreTables, Position, UtcDateTime

metadata = MetaData()
core = CoreTables.on(metadata)

facts = Table(
    "facts",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False),
    Column("origin_id", String(200), nullable=False),  # the customer it named, before merges
    Column("type", String(200), nullable=False),
    Column("time", UtcDateTime(), nullable=False),
    Index("ix_facts_customer", "customer_id", "time"),
    Index("ix_facts_origin", "origin_id"),
)

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
    Column("next_due", UtcDateTime(), nullable=True),
    Column("policy_version", String(50), nullable=False),
    # Where the fold stands, so that events arriving in order continue it instead of
    # replaying the history: the last fact folded (in fold order; facts after the clock
    # count too), the seq of the next transition, whether the story ended in an erasure.
    # NULL (rows written before these columns): the next change replays.
    Column("last_fact_at", UtcDateTime(), nullable=True),
    Column("last_fact_id", String(200), nullable=True),
    Column("next_seq", Integer, nullable=True),
    Column("erased", Boolean, nullable=False, server_default=false()),
    Index("ix_customer_stages_due", "next_due"),
    Index("ix_customer_stages_stage", "stage"),
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
    Column("seq", Integer, nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("correction", Boolean, nullable=False),
    Column("superseded", Boolean, nullable=False),
    Index("ix_stage_transitions_customer", "customer_id", "id"),
    Index("ix_stage_transitions_occurred", "occurred_at"),
)

# Customers with facts dated after the clock (a source's clock ahead of ours): a replay leaves
# those out until the clock reaches them, and the sweeper replays the customer then.
wakeups = Table(
    "lifecycle_wakeups",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("at", UtcDateTime(), nullable=False),
    Index("ix_lifecycle_wakeups_at", "at"),
)

clock = Table(
    "lifecycle_clock",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("value", UtcDateTime(), nullable=False),
)
