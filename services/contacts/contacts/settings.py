from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from crm_shared.app.settings import ServiceSettings

MAX_EVENT_BYTES = 524_288


class ContactsSettings(ServiceSettings):
    """Contacts settings: the common CRM_* variables plus ingestion limits."""

    service_name: ClassVar[str] = "contacts"
    default_port: ClassVar[int] = 8001

    ingest_max_events: int = Field(default=1000, ge=1, le=10_000)
    ingest_max_bytes: int = Field(default=1_048_576, ge=1024)
    # The canonical event contacts publishes must fit one Kafka message (the producer's
    # max_request_size and Apache Kafka's default message.max.bytes are 1 MiB): a larger
    # one would be refused by the broker on every attempt and hold up its relay.
    ingest_max_event_bytes: int = Field(default=262_144, ge=1024, le=MAX_EVENT_BYTES)
    import_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    unknown_customers: Literal["create", "reject"] = Field(
        default="create",
        description="an event naming an unknown customer creates a prospect, or is rejected",
    )
    erasure_secret: str = Field(
        default="change-me-erasure",
        description="the key erased contacts' emails, phones and external ids are kept "
        "with, as HMAC-SHA256 hashes, so that events naming them are refused",
    )
