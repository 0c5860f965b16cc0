"""Composition root of the scoring service.

It runs on the shared runtime (database and migrations, topics, outbox relay, health,
readiness, metrics); its consumers and API arrive with its models.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from crm_shared.app.factory import create_service_app
from crm_shared.app.runtime import Runtime
from crm_shared.messaging.topics import SCORES
from scoring.settings import ScoringSettings
from scoring.store.tables import core

DESCRIPTION = "Customer value (RFM, lifetime value), churn risk and tiers, with explanations."
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: ScoringSettings | None = None) -> FastAPI:
    runtime = Runtime(
        settings or ScoringSettings(), tables=core, migrations=MIGRATIONS, topics=[SCORES]
    )
    return create_service_app(
        runtime,
        title="CRM scoring",
        description=DESCRIPTION,
    )
