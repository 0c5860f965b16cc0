"""Services in-process for API tests: migrated database, no broker, ASGI client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from contacts.bootstrap import create_app as contacts_app
from contacts.settings import ContactsSettings
from crm_shared.app.runtime import Runtime
from crm_shared.app.settings import ServiceSettings
from lifecycle.bootstrap import create_app as lifecycle_app
from lifecycle.settings import LifecycleSettings
from notifications.bootstrap import create_app as notifications_app
from notifications.settings import NotificationsSettings
from scoring.bootstrap import create_app as scoring_app
from scoring.settings import ScoringSettings
from tests.support.auth import auth_headers

# Each service's app factory and settings class, by name.
SERVICES: dict[str, tuple[Callable[..., FastAPI], type[ServiceSettings]]] = {
    "contacts": (contacts_app, ContactsSettings),
    "lifecycle": (lifecycle_app, LifecycleSettings),
    "scoring": (scoring_app, ScoringSettings),
    "notifications": (notifications_app, NotificationsSettings),
}

# How long a started runtime may take to reach the broker and create its topics.
READY_WITHIN_S = 60.0


def service_app(service: str, database_url: str, **settings: Any) -> FastAPI:
    """A service's app on this database, with these settings."""
    factory, settings_type = SERVICES[service]
    return factory(settings_type(database_url=database_url, **settings))


@asynccontextmanager
async def api_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app's HTTP API over ASGI, its database migrated, Kafka not started;
    it sends a token with every scope."""
    runtime: Runtime = app.state.runtime
    await runtime.migrate()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=auth_headers()
        ) as client:
            yield client
    finally:
        await runtime.db.dispose()


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """The app's runtime started (database, Kafka side, consumers) for the block, from the
    moment it is ready: its topics exist, its relay and consumers run (the start connects
    to the broker in the background; a test that produced at once raced the topics'
    creation, and the first reads' deadlines raced the start)."""
    runtime = app.state.runtime
    await runtime.start()
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while (await runtime.readiness())["broker"] != "ok":
            assert time.monotonic() < deadline, f"{runtime.name}: not ready in {READY_WITHIN_S}s"
            await asyncio.sleep(0.05)
        yield app
    finally:
        await app.state.runtime.stop()


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    """A client of the app over ASGI, without starting anything; every scope."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=auth_headers()
    )
