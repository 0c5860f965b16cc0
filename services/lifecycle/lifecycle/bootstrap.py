"""Composition root: binds lifecycle's handlers to their infrastructure."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from crm_shared.app.factory import create_service_app
from crm_shared.app.runtime import Runtime
from crm_shared.messaging.topics import CUSTOMER_EVENTS, LIFECYCLE
from lifecycle.api.reports import router as reports_router
from lifecycle.api.routes import router
from lifecycle.domain.policy import load_policy
from lifecycle.handlers.customer_events import Lifecycle
from lifecycle.settings import LifecycleSettings
from lifecycle.store.tables import core

MIGRATIONS = Path(__file__).parent / "migrations"
DESCRIPTION = (
    "Customer lifecycle stages (prospect, new, active, dormant, churned) and their "
    "transitions, folded in event time from customer events under a versioned policy."
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def build(settings: LifecycleSettings) -> tuple[Runtime, Lifecycle]:
    runtime = Runtime(settings, tables=core, migrations=MIGRATIONS, topics=[LIFECYCLE])
    lifecycle = Lifecycle(
        runtime.outbox, load_policy(settings.lifecycle_policy), clock=settings.clock, wall=utcnow
    )
    runtime.subscribe("customer-events", [CUSTOMER_EVENTS], lifecycle.on_customer_events)
    if settings.clock == "wall":
        runtime.every("sweeper", settings.sweep_interval_s, _sweeper(runtime, lifecycle))
    return runtime, lifecycle


def _sweeper(runtime: Runtime, lifecycle: Lifecycle) -> Callable[[], Coroutine[Any, Any, None]]:
    async def sweep() -> None:
        while True:
            async with runtime.db.transaction() as conn:
                looked_at = await lifecycle.sweep(conn)
            runtime.wake_relay()
            if looked_at < 5000:
                return

    return sweep


def create_app(settings: LifecycleSettings | None = None) -> FastAPI:
    runtime, lifecycle = build(settings or LifecycleSettings())
    return create_service_app(
        runtime,
        title="CRM lifecycle",
        description=DESCRIPTION,
        routers=[router, reports_router],
        state={"lifecycle": lifecycle},
    )
