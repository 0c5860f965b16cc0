"""The service runtime: readiness, and a shutdown that finishes the batch in hand."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx

from crm_shared.app.metrics import Metrics
from crm_shared.events import CATALOG, Event, EventData
from crm_shared.messaging.consumer import BatchConsumer, BatchProcessor, DeadLetters
from crm_shared.messaging.kafka import make_consumer, make_producer
from crm_shared.store.inbox import Inbox
from crm_shared.testing.broker import Broker
from lifecycle.bootstrap import create_app
from lifecycle.settings import LifecycleSettings
from tests.support.auth import auth_headers
from tests.support.db import CoreDb
from tests.support.events import purchase_json
from tests.support.kafka import committed, eventually, make_topic, produce


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_service_whose_broker_is_away_serves_http_but_is_not_ready(
    database_url: str,
) -> None:
    settings = LifecycleSettings(
        database_url=database_url, kafka_bootstrap=f"127.0.0.1:{closed_port()}"
    )
    app = create_app(settings)
    runtime = app.state.runtime
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=auth_headers()
        ) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"] == {"database": "ok", "broker": "connecting"}
            assert ready.json()["service"] == "lifecycle"
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/v1/customers/x/stage")).status_code == 404
    finally:
        await asyncio.wait_for(runtime.stop(), timeout=15)


async def test_a_ready_service_reports_its_database_and_broker(
    database_url: str, broker: Broker
) -> None:
    app = create_app(LifecycleSettings(database_url=database_url, kafka_bootstrap=broker.bootstrap))
    runtime = app.state.runtime
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, within=20)
    finally:
        await asyncio.wait_for(runtime.stop(), timeout=15)


class SlowHandler:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.applied: list[str] = []

    async def __call__(self, conn: object, events: list[Event[EventData]]) -> None:
        self.started.set()
        await asyncio.sleep(0.5)  # a stop asked for now must wait for this batch
        self.applied += [e.id for e in events]


async def test_a_stopped_consumer_finishes_and_commits_the_batch_in_hand(
    core: CoreDb, broker: Broker, unique: str
) -> None:
    topic = await make_topic(broker.bootstrap, "stop")
    await produce(
        broker.bootstrap,
        topic,
        [(b"c1", json.dumps(purchase_json("c1")).encode()) for _ in range(10)],
    )
    producer = make_producer(broker.bootstrap, client_id="t")
    await producer.start()

    def consumer(handler: SlowHandler, metrics: Metrics) -> BatchConsumer:
        processor = BatchProcessor(
            name="stop",
            db=core.db,
            inbox=Inbox(core.tables, "stop"),
            registry=CATALOG,
            handler=handler,
            dead_letters=DeadLetters(producer, metrics),
            metrics=metrics,
        )
        return BatchConsumer(
            processor,
            lambda: make_consumer(
                [topic],
                bootstrap=broker.bootstrap,
                group_id=f"g-{unique}",
                client_id="t",
                fetch_max_wait_ms=10,
                max_records=100,
            ),
            metrics,
        )

    try:
        handler = SlowHandler()
        running = consumer(handler, Metrics("a"))
        task = asyncio.create_task(running.run())
        await asyncio.wait_for(handler.started.wait(), timeout=20)
        running.stop()
        await asyncio.wait_for(task, timeout=15)
    finally:
        await producer.stop()
    assert len(handler.applied) == 10
    assert await committed(broker.bootstrap, f"g-{unique}", topic) == 10


async def test_on_postgresql_a_periodic_job_runs_on_one_replica_at_a_time(
    database_url: str,
) -> None:
    settings = LifecycleSettings(database_url=database_url)
    first, second = create_app(settings).state.runtime, create_app(settings).state.runtime
    try:
        async with first._lease("sweep") as held, second._lease("sweep") as also:
            elsewhere = second._lease("another-job")
            async with elsewhere as other:
                assert held and other
                assert also is (first.db.dialect != "postgresql")
        async with second._lease("sweep") as after:
            assert after  # released when the first run ended
    finally:
        await first.db.dispose()
        await second.db.dispose()
