"""Composition root of the notifications service."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI

from crm_shared.app.factory import create_service_app
from crm_shared.app.runtime import Runtime
from crm_shared.messaging.topics import CUSTOMER_EVENTS, INBOUND, LIFECYCLE, OUTREACH, SCORES
from notifications.api.routes import router
from notifications.channels.base import Channel
from notifications.channels.email import EmailChannel
from notifications.channels.log import LogChannel
from notifications.channels.webhook import WebhookChannel
from notifications.domain.playbooks import DEFAULT_PLAYBOOKS
from notifications.domain.templates import DEFAULT_TEMPLATES
from notifications.domain.unsubscribe import make_token
from notifications.handlers import birthdays
from notifications.handlers.dispatch import Dispatcher
from notifications.handlers.dry_run import forget_triggers
from notifications.handlers.triggers import Triggers
from notifications.settings import NotificationsSettings
from notifications.store import outreach
from notifications.store.tables import core

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
DESCRIPTION = (
    "Retention outreach: rules (playbooks) triggered by lifecycle, score and customer "
    "events, with consent, frequency caps, quiet hours, templates and a delivery log."
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def channels(settings: NotificationsSettings) -> dict[str, Channel]:
    found: dict[str, Channel] = {"log": LogChannel()}
    if settings.smtp_host:
        found["email"] = EmailChannel(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_sender,
            username=settings.smtp_username or None,
            password=settings.smtp_password or None,
            starttls=settings.smtp_starttls,
        )
    else:
        found["email"] = LogChannel()  # local runs: no SMTP server needed
    for name, url in (
        ("webhook", settings.webhook_url),
        ("sms", settings.sms_gateway_url),
        ("push", settings.push_gateway_url),
    ):
        if url:
            found[name] = WebhookChannel(url, settings.webhook_secret, name=name)
    return found


def build(settings: NotificationsSettings) -> tuple[Runtime, Triggers, Dispatcher]:
    runtime = Runtime(settings, tables=core, migrations=MIGRATIONS, topics=[OUTREACH, INBOUND])
    triggers = Triggers(runtime.outbox, utcnow)

    def now() -> datetime:
        if settings.clock == "event-time" and triggers.event_clock is not None:
            return triggers.event_clock
        return utcnow()

    def unsubscribe_url(customer_id: str) -> str:
        token = make_token(settings.unsubscribe_secret, customer_id)
        return f"{settings.public_url}/v1/unsubscribe?token={quote(token)}"

    dispatcher = Dispatcher(
        runtime.db,
        runtime.outbox,
        channels(settings),
        settings.safeguards,
        now,
        unsubscribe_url=unsubscribe_url,
    )
    runtime.subscribe("outreach-triggers", [LIFECYCLE, SCORES, CUSTOMER_EVENTS], triggers.on_events)
    runtime.every(
        "dispatcher", settings.dispatch_interval_s, _dispatch(runtime, dispatcher, settings)
    )
    runtime.every("birthdays", 3600, _birthdays(runtime, triggers, now, settings))
    runtime.every("trigger-log", 3600, _forget_triggers(runtime, now))
    return runtime, triggers, dispatcher


def _dispatch(
    runtime: Runtime, dispatcher: Dispatcher, settings: NotificationsSettings
) -> Callable[[], Coroutine[Any, Any, None]]:
    started = False

    async def dispatch() -> None:
        nonlocal started
        if not started:
            if settings.seed_playbooks:
                await seed(runtime)
            await dispatcher.recover()
            started = True
        while True:
            outcome = await dispatcher.run_once()
            runtime.wake_relay()
            if outcome.sent + outcome.failed + outcome.held + outcome.suppressed == 0:
                return

    return dispatch


def _birthdays(
    runtime: Runtime,
    triggers: Triggers,
    now: Callable[[], datetime],
    settings: NotificationsSettings,
) -> Callable[[], Coroutine[Any, Any, None]]:
    async def greet() -> None:
        async with runtime.db.transaction() as conn:
            await birthdays.run(triggers, conn, now(), settings.safeguards.default_time_zone)

    return greet


def _forget_triggers(
    runtime: Runtime, now: Callable[[], datetime]
) -> Callable[[], Coroutine[Any, Any, None]]:
    async def forget() -> None:
        async with runtime.db.transaction() as conn:
            gone = await forget_triggers(conn, now())
        if gone:
            log.info("old triggers deleted from the dry-run log", extra={"deleted": gone})

    return forget


async def seed(runtime: Runtime) -> None:
    """Install the default playbooks and templates that are not there yet."""
    async with runtime.db.transaction() as conn:
        now = utcnow()
        for rule_id, body in DEFAULT_PLAYBOOKS.items():
            if await outreach.get_rule(conn, rule_id) is None:
                await outreach.put_rule(conn, rule_id, body, now)
        for template in DEFAULT_TEMPLATES.values():
            if await outreach.get_template(conn, template.id) is None:
                await outreach.put_template(
                    conn, template.id, template.channel, template.subject, template.body, now
                )


def create_app(settings: NotificationsSettings | None = None) -> FastAPI:
    settings = settings or NotificationsSettings()
    runtime, triggers, dispatcher = build(settings)
    return create_service_app(
        runtime,
        title="CRM notifications",
        description=DESCRIPTION,
        routers=[router],
        state={"triggers": triggers, "dispatcher": dispatcher, "settings": settings},
    )
