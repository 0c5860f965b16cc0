"""Contact read model: contacts, tags, attributes, identifiers, idempotency keys.

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
        "contacts",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("merged_into", sa.String(200), nullable=True),
        sa.Column("origin", sa.String(20), nullable=False),
        sa.Column("first_name", sa.String(200), nullable=True),
        sa.Column("last_name", sa.String(200), nullable=True),
        sa.Column("company", sa.String(200), nullable=True),
        sa.Column("country", sa.String(2), nullable=True),
        sa.Column("region", sa.String(100), nullable=True),
        sa.Column("city", sa.String(100), nullable=True),
        sa.Column("source", sa.String(100), nullable=True),
        sa.Column("channel", sa.String(100), nullable=True),
        sa.Column("search", sa.Text, nullable=False),
        sa.Column("profile", sa.JSON, nullable=False),
        sa.Column("consent", sa.JSON, nullable=False),
        sa.Column("external_ids", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_contacts_created", "contacts", ["created_at", "id"])
    op.create_index("ix_contacts_geo", "contacts", ["country", "region"])
    op.create_index("ix_contacts_source", "contacts", ["source"])
    op.create_index("ix_contacts_company", "contacts", ["company"])
    op.create_index("ix_contacts_merged_into", "contacts", ["merged_into"])
    op.create_table(
        "contact_tags",
        sa.Column("tag", sa.String(64), primary_key=True),
        sa.Column("contact_id", sa.String(200), primary_key=True),
    )
    op.create_index("ix_contact_tags_contact", "contact_tags", ["contact_id"])
    op.create_table(
        "contact_attributes",
        sa.Column("contact_id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(500), nullable=False),
    )
    op.create_index("ix_contact_attributes_value", "contact_attributes", ["name", "value"])
    op.create_table(
        "identifiers",
        sa.Column("identifier", sa.String(300), primary_key=True),
        sa.Column("contact_id", sa.String(200), primary_key=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_identifiers_contact", "identifiers", ["contact_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "idempotency_keys",
        "identifiers",
        "contact_attributes",
        "contact_tags",
        "contacts",
    ):
        op.drop_table(table)
