"""Contacts' schema: the core tables plus the contact read model.

The event store holds two streams per contact: `contact-<id>` (the record: created,
updated, consent, merges) and `timeline-<id>` (every accepted event about the customer).
The tables below are projections of the record streams, kept in the same transaction.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Index, Integer, LargeBinary, MetaData, String, Table, Text

from crm_shared.store.tables import CoreTables, UtcDateTime

metadata = MetaData()
core = CoreTables.on(metadata)

contacts = Table(
    "contacts",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("status", String(10), nullable=False),
    Column("merged_into", String(200), nullable=True),
    Column("origin", String(20), nullable=False),
    Column("first_name", String(200), nullable=True),
    Column("last_name", String(200), nullable=True),
    Column("company", String(200), nullable=True),
    Column("country", String(2), nullable=True),
    Column("region", String(100), nullable=True),
    Column("city", String(100), nullable=True),
    Column("source", String(100), nullable=True),
    Column("channel", String(100), nullable=True),
    Column("search", Text, nullable=False),
    Column("profile", JSON, nullable=False),
    Column("consent", JSON, nullable=False),
    Column("external_ids", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_contacts_created", "created_at", "id"),
    Index("ix_contacts_geo", "country", "region"),
    Index("ix_contacts_source", "source"),
    Index("ix_contacts_company", "company"),
    Index("ix_contacts_merged_into", "merged_into"),
)

contact_tags = Table(
    "contact_tags",
    metadata,
    Column("tag", String(64), primary_key=True),
    Column("contact_id", String(200), primary_key=True),
    Index("ix_contact_tags_contact", "contact_id"),
)

contact_attributes = Table(
    "contact_attributes",
    metadata,
    Column("contact_id", String(200), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", String(500), nullable=False),
    Index("ix_contact_attributes_value", "name", "value"),
)

identifiers = Table(
    "identifiers",
    metadata,
    Column("identifier", String(300), primary_key=True),
    Column("contact_id", String(200), primary_key=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_identifiers_contact", "contact_id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("body", JSON, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# Crypto-shredding: one data key per contact; erasing a contact deletes its key row.
contact_keys = Table(
    "contact_keys",
    metadata,
    Column("contact_id", String(200), primary_key=True),
    Column("key", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

erasures = Table(
    "erasures",
    metadata,
    Column("contact_id", String(200), primary_key=True),
    Column("erased_with", String(200), nullable=False),
    Column("erased_at", UtcDateTime(), nullable=False),
)

# The identifiers erased contacts had (emails, phones, external ids), kept only as keyed
# hashes (HMAC-SHA256): an event that names one later is refused, not made a new prospect.
erased_identifiers = Table(
    "erased_identifiers",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("contact_id", String(200), nullable=False),
)
