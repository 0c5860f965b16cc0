"""Composition root: binds lifecycle's handlers to their infrastructure."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI

from crm_shared.app.factory import create_service_app
from crm_shared.app.runtime import Runtime
from crm_shared.messaging.topics import CUSTOMER_EVENTS, LIFECYCLE
from lifecycle.api.routes import router
from lifecycle.handlers.customer_events import CustomerEventsHandler
from lifecycle.settings import LifecycleSettings
from lifecycle.store.tables import core

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


def build_runtime(settings: LifecycleSettings) -> Runtime:
    runtime = Runtime(settings, tables=core, migrations=MIGRATIONS, topics=[LIFECYCLE])
    runtime.subscribe(
        "customer-events", [CUSTOMER_EVENTS], CustomerEventsHandler(runtime.outbox, utcnow)
    )
    return runtime


def create_app(settings: LifecycleSettings | None = None) -> FastAPI:
    runtime = build_runtime(settings or LifecycleSettings())
    return create_service_app(
        runtime,
        title="CRM lifecycle",
        description="Customer lifecycle stages and their transitions, folded from customer events.",
        routers=[router],
    )
