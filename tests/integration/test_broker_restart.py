"""The embedded broker forgets everything when it restarts. What was published but not yet
consumed must not be lost: the relay notices the lost log (its heartbeat's offset goes back),
recreates the topics and publishes the outbox again; consumers' inboxes absorb repeats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from contacts.bootstrap import create_app as contacts_app
from contacts.settings import ContactsSettings
from crm_shared.testing.broker import Broker
from lifecycle.bootstrap import create_app as lifecycle_app
from lifecycle.settings import LifecycleSettings
from tests.support.apps import asgi_client
from tests.support.events import purchase_json
from tests.support.kafka import eventually

START = datetime.now(UTC) - timedelta(days=5)


def lifecycle(broker: Broker, directory: Path) -> FastAPI:
    return lifecycle_app(
        LifecycleSettings(
            database_url=f"sqlite+aiosqlite:///{directory}/lifecycle.db",
            kafka_bootstrap=broker.bootstrap,
            fetch_max_wait_ms=10,
            topic_partitions=2,
            heartbeat_interval_s=0.3,
        )
    )


async def test_events_published_before_a_broker_restart_still_arrive(tmp_path: Path) -> None:
    with Broker() as broker:
        contacts = contacts_app(
            ContactsSettings(
                database_url=f"sqlite+aiosqlite:///{tmp_path}/contacts.db",
                kafka_bootstrap=broker.bootstrap,
                fetch_max_wait_ms=10,
                topic_partitions=2,
                heartbeat_interval_s=0.3,
            )
        )
        first = lifecycle(broker, tmp_path)
        await contacts.state.runtime.start()
        await first.state.runtime.start()
        try:
            async with asgi_client(contacts) as c, asgi_client(first) as lc:
                await c.post("/v1/events", json=purchase_json("r1", start=START))
                await eventually(lambda: _stage(lc, "new"), within=30)
            await first.state.runtime.stop()  # lifecycle is down for a while ...
            async with asgi_client(contacts) as c:
                await c.post("/v1/events", json=purchase_json("r1", day=2, start=START))
                await eventually(lambda: _published(contacts), within=10)
            broker.restart()  # ... and the broker forgets the event it was to read
            second = lifecycle(broker, tmp_path)
            await second.state.runtime.start()
            try:
                async with asgi_client(second) as lc:
                    await eventually(lambda: _stage(lc, "active"), within=60)
                    history = (await lc.get("/v1/customers/r1/transitions")).json()
                assert [t["to_stage"] for t in history] == ["prospect", "new", "active"]
            finally:
                await second.state.runtime.stop()
        finally:
            await contacts.state.runtime.stop()


async def _stage(lc: httpx.AsyncClient, expected: str) -> bool:
    answer = await lc.get("/v1/customers/r1/stage")
    return answer.status_code == 200 and answer.json()["stage"] == expected


async def _published(app: FastAPI) -> Any:
    runtime = app.state.runtime
    async with runtime.db.read() as conn:
        return await runtime.outbox.backlog(conn) == 0
