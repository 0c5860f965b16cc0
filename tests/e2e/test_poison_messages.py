"""Poison messages of every kind on every consumed topic are dead-lettered with a reason,
and the good message behind them is still processed."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from contacts.bootstrap import create_app as contacts_app
from contacts.settings import ContactsSettings
from crm_shared.messaging.kafka import decode_headers
from crm_shared.testing.broker import Broker
from lifecycle.bootstrap import create_app as lifecycle_app
from lifecycle.settings import LifecycleSettings
from notifications.bootstrap import create_app as notifications_app
from notifications.settings import NotificationsSettings
from scoring.bootstrap import create_app as scoring_app
from scoring.settings import ScoringSettings
from tests.support.events import purchase_json
from tests.support.kafka import eventually, produce, read_topic

pytestmark = pytest.mark.e2e
NOW = datetime.now(UTC)
# key, value, headers; the reason expected, and whether the dead letter's value is cut
POISON: list[tuple[bytes, bytes, list[tuple[str, bytes | None]], str, str]] = [
    (b"k", b"\x00\xffnot json at all", [], "not valid JSON", "false"),
    (
        b"k",
        json.dumps({**purchase_json("p"), "data": {"amount": "lots"}}).encode(),
        [],
        "data.",
        "false",
    ),
    (
        b"k",
        json.dumps({**purchase_json("p"), "type": "crm.never.heard.v1"}).encode(),
        [],
        "type: unknown event type",
        "false",
    ),
    (b"k", b'{"pad": "' + b"x" * 900_000 + b'"}', [], "Field required", "true"),
    (  # 0001-01-01 at +01:00 is the year 0 in UTC
        b"k",
        json.dumps({**purchase_json("p"), "time": "0001-01-01T00:00:00+01:00"}).encode(),
        [],
        "time is out of range",
        "false",
    ),
    (b"k", b"{not json", [("x", None), ("traceparent", None)], "not valid JSON", "false"),
    # Near the 1 MiB a producer takes: with the reasons added, too big for a dead letter.
    (b"k" * 149_450, b'{"pad": "' + b"x" * 898_980 + b'"}', [], "Field required", "true"),
]


@pytest_asyncio.fixture(loop_scope="session")
async def services(broker: Broker, tmp_path: Path) -> AsyncIterator[dict[str, FastAPI]]:
    prefix = f"p{uuid.uuid4().hex[:8]}."
    common: dict[str, Any] = {
        "kafka_bootstrap": broker.bootstrap,
        "topic_prefix": prefix,
        "fetch_max_wait_ms": 10,
        "topic_partitions": 1,
    }
    apps = {
        "contacts": contacts_app(
            ContactsSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db", **common)
        ),
        "lifecycle": lifecycle_app(
            LifecycleSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/l.db", **common)
        ),
        "scoring": scoring_app(
            ScoringSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/s.db", **common)
        ),
        "notifications": notifications_app(
            NotificationsSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/n.db", **common)
        ),
    }
    for app in apps.values():
        await app.state.runtime.start()
    try:
        yield apps
    finally:
        for app in apps.values():
            await app.state.runtime.stop()


async def consumed(app: FastAPI, consumer: str) -> float:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        text = (await client.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("crm_events_consumed_total") and f'consumer="{consumer}"' in line
    )


@pytest.mark.parametrize(
    ("topic", "service", "consumer", "readers"),
    [
        ("crm.inbound", "contacts", "inbound", 1),
        ("crm.customer-events", "lifecycle", "customer-events", 3),
        ("crm.lifecycle", "scoring", "lifecycle", 2),
        ("crm.outreach", "contacts", "outreach", 1),
        ("crm.scores", "notifications", "outreach-triggers", 1),
    ],
)
async def test_poison_is_dead_lettered_and_the_next_good_message_processed(
    services: dict[str, FastAPI],
    broker: Broker,
    topic: str,
    service: str,
    consumer: str,
    readers: int,
) -> None:
    app = services[service]
    full = app.state.runtime.settings.topic_prefix + topic
    good = _good(topic)
    await produce(
        broker.bootstrap,
        full,
        [(key, value, headers) for key, value, headers, _, _ in POISON]
        + [(b"k", json.dumps(good).encode())],
        max_request_size=2_000_000,
    )

    async def processed() -> bool:
        return await consumed(app, consumer) >= 1

    await eventually(processed, within=60)
    # Every service reading the topic dead-letters the poison into its one DLQ.
    everything = await read_topic(
        broker.bootstrap, f"{full}.dlq", count=readers * len(POISON), within=30
    )
    dead = [r for r in everything if decode_headers(r.headers)["crm-dlq-service"] == service]
    reasons = [decode_headers(r.headers)["crm-dlq-reason"] for r in dead]
    for (*_, expected, _), reason in zip(POISON, reasons, strict=True):
        assert expected in reason, (topic, reason)
    truncated = [decode_headers(r.headers)["crm-dlq-truncated"] for r in dead]
    assert truncated == [cut for *_, cut in POISON]  # the huge ones are cut to fit
    assert all(len(r.value or b"") + len(r.key or b"") < 1_000_000 for r in dead)


def _good(topic: str) -> dict[str, Any]:
    if topic == "crm.lifecycle":
        return {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "t",
            "type": "crm.lifecycle.stage_changed.v1",
            "subject": "g1",
            "time": NOW.isoformat(),
            "data": {
                "customer_id": "g1",
                "from_stage": None,
                "to_stage": "prospect",
                "reason": "identified",
                "occurred_at": NOW.isoformat(),
                "policy_version": "default-1",
            },
        }
    if topic == "crm.scores":
        return {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "t",
            "type": "crm.score.changed.v1",
            "subject": "g1",
            "time": NOW.isoformat(),
            "data": {
                "customer_id": "g1",
                "model_version": "m",
                "tier": None,
                "risk_band": "low",
                "churn_risk": 0.1,
                "clv": 1.0,
                "p_alive": 0.9,
                "reasons": ["first score"],
            },
        }
    if topic == "crm.outreach":
        return {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "t",
            "type": "crm.outreach.sent.v1",
            "subject": "g1",
            "time": NOW.isoformat(),
            "data": {"delivery_id": "d", "rule_id": "r", "channel": "email"},
        }
    return purchase_json("g1", start=NOW)
