"""Composition root: binds contacts' handlers to their infrastructure."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI

from contacts.api import errors
from contacts.api.contacts import router as contacts_router
from contacts.api.events import router as events_router
from contacts.api.imports import router as imports_router
from contacts.api.schemas_catalog import router as schemas_router
from contacts.api.timeline import router as timeline_router
from contacts.handlers.ingest import Ingestor
from contacts.handlers.records import ContactService
from contacts.settings import ContactsSettings
from contacts.store.tables import core
from contacts.store.vault import Vault
from crm_shared.app.factory import create_service_app
from crm_shared.app.runtime import Runtime
from crm_shared.messaging.topics import CUSTOMER_EVENTS, INBOUND, OUTREACH
from crm_shared.store.inbox import StoredEvents

MIGRATIONS = Path(__file__).parent / "migrations"
DESCRIPTION = (
    "Customer records, consent, identity resolution and the customer timeline; ingests "
    "events from other systems over HTTP and Kafka and publishes canonical customer events."
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def with_vault(runtime: Runtime, erasure_secret: str) -> Vault:
    """Personal data is sealed in every event contacts stores, and opened when published."""
    vault = Vault(runtime.db, utcnow, erasure_secret=erasure_secret)
    runtime.events.codec = vault
    runtime.outbox.codec = vault
    runtime.prepare_outgoing = vault.open_messages
    return vault


def create_app(settings: ContactsSettings | None = None) -> FastAPI:
    settings = settings or ContactsSettings()
    runtime = Runtime(settings, tables=core, migrations=MIGRATIONS, topics=[CUSTOMER_EVENTS])
    vault = with_vault(runtime, settings.erasure_secret)
    contacts = ContactService(
        runtime.db,
        runtime.events,
        runtime.outbox,
        runtime.registry,
        utcnow,
        wake=runtime.wake_relay,
        vault=vault,
    )
    ingestor = Ingestor(
        runtime.db,
        runtime.events,
        runtime.outbox,
        runtime.registry,
        contacts,
        utcnow,
        max_event_bytes=settings.ingest_max_event_bytes,
        unknown_customers=settings.unknown_customers,
    )
    # Every event the ingestor applies goes into the event store in the batch's transaction
    # (the rest are refused to the dead-letter topic): its ids are the consumers' inbox.
    applied = StoredEvents(runtime.events)
    runtime.subscribe("inbound", [INBOUND], ingestor.on_inbound, inbox=applied)
    runtime.subscribe("outreach", [OUTREACH], ingestor.on_outreach, inbox=applied)
    app = create_service_app(
        runtime,
        title="CRM contacts",
        description=DESCRIPTION,
        routers=[
            contacts_router,
            events_router,
            timeline_router,
            schemas_router,
            imports_router,
        ],
        state={"ingestor": ingestor, "contacts": contacts, "vault": vault},
        # The routes taking batches and files enforce their own (bigger) caps.
        body_limits={
            "/v1/events": settings.ingest_max_bytes,
            "/v1/imports": settings.import_max_bytes,
        },
    )
    errors.install(app)
    return app
