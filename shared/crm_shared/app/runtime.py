"""The infrastructure one service runs on: database, Kafka clients, outbox relay, consumers.

Start-up order matters: migrate the database, create the topics (before any client asks for
their metadata), then start the producer, the relay and the consumers. The Kafka part starts
in the background and retries while the broker is away, so the HTTP API serves meanwhile and
`/readyz` says what is missing. Shutdown asks each consumer to finish the batch in hand and
commit, gives the relay a last round, then closes the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from crm_shared import tracecontext
from crm_shared.app.metrics import Metrics
from crm_shared.app.settings import ServiceSettings
from crm_shared.events.catalog import CATALOG
from crm_shared.events.registry import EventRegistry
from crm_shared.messaging.consumer import (
    BatchConsumer,
    BatchProcessor,
    DeadLetters,
    FetchWait,
    Handler,
)
from crm_shared.messaging.kafka import make_consumer, make_producer
from crm_shared.messaging.relay import OutboxRelay, Prepare
from crm_shared.messaging.topics import HEARTBEAT, ensure_topics, with_dlq
from crm_shared.store.db import Database, ensure_sqlite_directory
from crm_shared.store.eventstore import EventStore
from crm_shared.store.inbox import Applied, Inbox
from crm_shared.store.migrations import upgrade_async
from crm_shared.store.outbox import Outbox
from crm_shared.store.tables import CoreTables

log = logging.getLogger(__name__)
# SQLite: a consumer fetches more once the relay is within this many rounds of the outbox's
# newest message, or after this long (the broker may be away).
RELAY_ROUNDS_AHEAD = 2
RELAY_WAIT_S = 5.0


@dataclass(frozen=True)
class Subscription:
    name: str
    topics: list[str]
    handler: Handler
    inbox: Applied | None = None


class Runtime:
    def __init__(
        self,
        settings: ServiceSettings,
        *,
        tables: CoreTables,
        migrations: Path,
        topics: list[str],
        registry: EventRegistry = CATALOG,
    ) -> None:
        self.settings = settings
        self.name = settings.service_name
        self.tables = tables
        self.registry = registry
        self.metrics = Metrics(self.name)
        self.db = Database(settings.database_url)
        self.events = EventStore(tables)
        self.outbox = Outbox(tables)
        self._migrations = migrations
        self.publishes: tuple[str, ...] = tuple(topics)
        self._topics = [*with_dlq(topics), HEARTBEAT]
        self._subscriptions: list[Subscription] = []
        self._periodic: list[tuple[str, float, Callable[[], Coroutine[Any, Any, None]]]] = []
        self.producer: AIOKafkaProducer | None = None
        self.relay: OutboxRelay | None = None
        # Set by a service that must rewrite outbox messages before they go out.
        self.prepare_outgoing: Prepare | None = None
        self.consumers: list[BatchConsumer] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._kafka_ready = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()

    def subscribe(
        self, name: str, topics: list[str], handler: Handler, *, inbox: Applied | None = None
    ) -> None:
        """Consume `topics` in batches with `handler`, under inbox name `name`; `inbox`
        where the handler's own tables record what it applied (`StoredEvents`)."""
        self._subscriptions.append(Subscription(name, topics, handler, inbox))
        self._topics += [t for t in with_dlq(topics) if t not in self._topics]

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """What the service consumes, by inbox name."""
        return tuple(self._subscriptions)

    def every(
        self, name: str, seconds: float, work: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        """Run `work` every `seconds` while the service runs (started with the Kafka side);
        each run is a trace of its own. On PostgreSQL a run holds a lease (an advisory
        lock named after the service and the job): with several replicas, one runs it and
        the others skip that round, so sweeps, refits and dispatching never overlap."""

        async def traced() -> None:
            async with self._lease(name) as held:
                if held:
                    with tracecontext.use(tracecontext.new_trace()):
                        await work()

        self._periodic.append((name, seconds, traced))

    @asynccontextmanager
    async def _lease(self, job: str) -> AsyncIterator[bool]:
        if self.db.dialect != "postgresql":
            yield True  # SQLite: one process owns the file
            return
        key = zlib.crc32(f"crm-{self.name}-{job}".encode()) & 0x7FFFFFFF
        async with self.db.engine.connect() as conn:
            held = bool(
                (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar()
            )
            try:
                yield held
            finally:
                if held:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                await conn.commit()

    def wake_relay(self) -> None:
        """Call after committing outbox rows, so they go out without waiting for a poll."""
        if self.relay is not None:
            self.relay.wake()

    async def start(self) -> None:
        if self.settings.migrate_on_start:
            await self.migrate()
        self._spawn("kafka-start", self._start_kafka)

    async def migrate(self) -> None:
        ensure_sqlite_directory(self.db.url)
        await upgrade_async(self._migrations, self.db.url)

    async def _start_kafka(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                await self._connect()
                break
            except Exception as exc:
                log.warning("broker not reachable; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
        if self._stopping or self.producer is None:
            return
        relay = OutboxRelay(
            self.db,
            self.outbox,
            self.producer,
            self.metrics,
            batch_size=self.settings.relay_batch_size,
            poll_interval=self.settings.relay_poll_interval_ms / 1000,
            topic_prefix=self.settings.topic_prefix,
            on_reset=self._recreate_topics,
            prepare=self.prepare_outgoing,
            max_message_bytes=self.settings.relay_max_message_bytes,
        )
        self.relay = relay
        self._spawn("relay", relay.run)
        self._spawn("gauges", self._refresh_gauges)
        self._spawn("heartbeat", self._repeat(self.settings.heartbeat_interval_s, self._heartbeat))
        for subscription in self._subscriptions:
            consumer = self._consumer(subscription, self.producer)
            self.consumers.append(consumer)
            self._spawn(f"consumer:{subscription.name}", consumer.run)
        for name, seconds, work in self._periodic:
            self._spawn(name, self._repeat(seconds, work))
        self._kafka_ready.set()

    def _repeat(
        self, seconds: float, work: Callable[[], Coroutine[Any, Any, None]]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def loop() -> None:
            while not self._stopping:
                await work()
                await self._pause(seconds)

        return loop

    async def _heartbeat(self) -> None:
        if self.relay is None:
            return
        try:
            await self.relay.heartbeat(HEARTBEAT, self.name)
        except Exception as exc:  # the broker is away: the relay's own retries cover it
            log.warning("heartbeat failed", extra={"error": repr(exc)})

    async def _recreate_topics(self) -> None:
        s = self.settings
        if s.create_topics:
            names = [s.topic_prefix + t for t in self._topics]
            await ensure_topics(s.kafka_bootstrap, names, partitions=s.topic_partitions)

    async def _connect(self) -> None:
        s = self.settings
        await self._recreate_topics()
        producer = make_producer(s.kafka_bootstrap, client_id=f"crm-{self.name}")
        try:
            await producer.start()
        except Exception:
            await producer.stop()
            raise
        self.producer = producer

    def batch_processor(
        self, subscription: Subscription, dead_letters: DeadLetters
    ) -> BatchProcessor:
        """What applies the subscription's batches (its inbox, handler and registry)."""
        return BatchProcessor(
            name=subscription.name,
            db=self.db,
            inbox=subscription.inbox or Inbox(self.tables, subscription.name),
            registry=self.registry,
            handler=subscription.handler,
            dead_letters=dead_letters,
            metrics=self.metrics,
            on_committed=self.wake_relay,
        )

    def _consumer(self, subscription: Subscription, producer: AIOKafkaProducer) -> BatchConsumer:
        s = self.settings
        processor = self.batch_processor(subscription, DeadLetters(producer, self.metrics))

        def factory() -> Any:
            return make_consumer(
                [s.topic_prefix + t for t in subscription.topics],
                bootstrap=s.kafka_bootstrap,
                group_id=f"{s.consumer_group}.{subscription.name}",
                client_id=f"crm-{self.name}-{subscription.name}",
                fetch_max_wait_ms=s.fetch_max_wait_ms,
                max_records=s.consumer_max_records,
            )

        return BatchConsumer(
            processor,
            factory,
            self.metrics,
            max_records=s.consumer_max_records,
            before_fetch=self._keep_relay_up if self.db.dialect == "sqlite" else None,
            fetch_wait=FetchWait(busy_ms=s.fetch_max_wait_ms, idle_ms=s.fetch_idle_wait_ms),
            commit_interval=s.commit_interval_ms / 1000,
        )

    async def _keep_relay_up(self) -> None:
        """SQLite: before a consumer fetches more, let the relay send what the last batches
        wrote, but a few rounds (see `OutboxRelay.keep_up`). Not on PostgreSQL: there
        statements do not hold the event loop, and another replica's relay may be the one
        publishing."""
        if self.relay is not None:
            allowance = RELAY_ROUNDS_AHEAD * self.settings.relay_batch_size
            await self.relay.keep_up(allowance=allowance, within=RELAY_WAIT_S)

    async def _refresh_gauges(self) -> None:
        while not self._stopping:
            if self.relay is not None:
                with contextlib.suppress(Exception):
                    await self.relay.refresh_gauges()
            await self._pause(5)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the service stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)

    def _spawn(self, name: str, target: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._tasks[name] = asyncio.create_task(self._supervise(name, target), name=name)

    async def _supervise(self, name: str, target: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a background loop; if it crashes, log it and start it again."""
        while not self._stopping:
            try:
                await target()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task crashed; restarting", extra={"task": name})
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        for consumer in self.consumers:
            consumer.stop()
        await self._join([n for n in self._tasks if n.startswith("consumer:")])
        if self.relay is not None:
            self.relay.stop()
        await self._join(list(self._tasks))
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), timeout=5)
        await self.db.dispose()

    async def _join(self, names: list[str]) -> None:
        tasks = [self._tasks[n] for n in names if not self._tasks[n].done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def readiness(self) -> dict[str, str]:
        """What the service depends on, and whether each one answers."""
        checks = {"database": "ok", "broker": "ok"}
        try:
            await asyncio.wait_for(self.db.ping(), timeout=2)
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["broker"] = await self._broker_check()
        for name, task in self._tasks.items():
            if name.startswith(("consumer:", "relay")) and task.done():
                checks[name] = "stopped"
        return checks

    async def _broker_check(self) -> str:
        if not self._kafka_ready.is_set() or self.producer is None:
            return "connecting"
        try:
            ok = await asyncio.wait_for(self.producer.client.fetch_all_metadata(), timeout=2)
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok" if ok is not None and ok.brokers() else "unreachable: no brokers"
