"""Composition root of the notifications service.

It runs on the shared runtime (database and migrations, topics, outbox relay, health,
readiness, metrics); its consumers and API arrive with its models.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from crm_shared.app.factory import create_service_app
from crm_shared.app.runtime import Runtime
from crm_shared.messaging.topics import OUTREACH
from notifications.settings import NotificationsSettings
from notifications.store.tables import core

DESCRIPTION = (
    "Retention outreach: rules, templates, consent, caps, quiet hours and the delivery log."
)
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: NotificationsSettings | None = None) -> FastAPI:
    runtime = Runtime(
        settings or NotificationsSettings(), tables=core, migrations=MIGRATIONS, topics=[OUTREACH]
    )
    return create_service_app(
        runtime,
        title="CRM notifications",
        description=DESCRIPTION,
    )
