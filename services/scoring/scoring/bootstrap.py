"""Composition root of the scoring service."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from crm_shared.app.factory import create_service_app
from crm_shared.app.runtime import Runtime
from crm_shared.messaging.topics import CUSTOMER_EVENTS, LIFECYCLE, SCORES
from scoring.api.routes import router
from scoring.handlers.scoring import Scoring
from scoring.settings import ScoringSettings
from scoring.store import scores
from scoring.store.tables import core

log = logging.getLogger(__name__)
DESCRIPTION = (
    "Customer value (RFM, BG/NBD, Gamma-Gamma lifetime value), churn risk and tiers, "
    "each with the contribution of every factor."
)
MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


def build(settings: ScoringSettings) -> tuple[Runtime, Scoring]:
    runtime = Runtime(settings, tables=core, migrations=MIGRATIONS, topics=[SCORES])
    scoring = Scoring(runtime.outbox, settings, utcnow)
    runtime.subscribe("customer-events", [CUSTOMER_EVENTS], scoring.on_events)
    runtime.subscribe("lifecycle", [LIFECYCLE], scoring.on_events)
    runtime.every("refit", settings.refit_interval_h * 3600, _refit(runtime, scoring))
    runtime.every("rescore", settings.rescore_interval_h * 3600, _rescore(runtime, scoring))
    return runtime, scoring


def _refit(runtime: Runtime, scoring: Scoring) -> Callable[[], Coroutine[Any, Any, None]]:
    async def refit() -> None:
        try:
            model = await scoring.refit(runtime.db)
        except ValueError as exc:  # too few buyers yet: the prior model keeps scoring
            log.info("no refit", extra={"reason": str(exc)})
            return
        log.info("refitted", extra={"version": model.version, "seconds": model.fit_seconds})
        runtime.wake_relay()

    return refit


def _rescore(runtime: Runtime, scoring: Scoring) -> Callable[[], Coroutine[Any, Any, None]]:
    async def rescore() -> None:
        # P(alive) falls while a customer stays silent: time alone changes scores.
        async with runtime.db.read() as conn:
            if await scores.active_model(conn) is None:
                return
        await scoring.rescore_all(runtime.db)
        runtime.wake_relay()

    return rescore


def create_app(settings: ScoringSettings | None = None) -> FastAPI:
    runtime, scoring = build(settings or ScoringSettings())
    return create_service_app(
        runtime,
        title="CRM scoring",
        description=DESCRIPTION,
        routers=[router],
        state={"scoring": scoring},
    )
