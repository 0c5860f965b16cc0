"""The outbox and its relay against the real broker, on every configured database."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime

from crm_shared.app.metrics import Metrics
from crm_shared.messaging.kafka import decode_headers, make_producer
from crm_shared.messaging.relay import OutboxRelay
from crm_shared.store.outbox import Outbox, OutgoingMessage
from crm_shared.testing.broker import Broker
from tests.support.db import CoreDb
from tests.support.events import envelope
from tests.support.kafka import make_topic, read_topic

NOW = datetime(2026, 2, 1, tzinfo=UTC)


async def write(core: CoreDb, topic: str, keys: list[str]) -> list[OutgoingMessage]:
    messages = [OutgoingMessage(topic, key, envelope(key)) for key in keys]
    async with core.db.transaction() as conn:
        await Outbox(core.tables).add(conn, messages, NOW)
    return messages


async def pending(core: CoreDb) -> int:
    async with core.db.read() as conn:
        return await Outbox(core.tables).backlog(conn)


async def test_the_relay_publishes_in_order_per_key_and_marks_what_it_published(
    core: CoreDb, broker: Broker
) -> None:
    topic = await make_topic(broker.bootstrap, "relay")
    keys = [f"c{i % 4}" for i in range(40)]
    messages = await write(core, topic, keys)
    producer = make_producer(broker.bootstrap, client_id="test-relay")
    await producer.start()
    try:
        relay = OutboxRelay(core.db, Outbox(core.tables), producer, Metrics("t"), batch_size=15)
        published = [await relay.publish_pending() for _ in range(4)]
    finally:
        await producer.stop()
    assert published == [15, 15, 10, 0]
    assert await pending(core) == 0
    records = await read_topic(broker.bootstrap, topic, count=40)
    by_key: dict[str, list[str]] = defaultdict(list)
    for record in records:
        by_key[record.key.decode()].append(decode_headers(record.headers)["crm-seq"])
    expected: dict[str, list[str]] = defaultdict(list)
    for seq, message in enumerate(messages, start=1):
        expected[message.key].append(str(seq))
    assert {k: [int(s) for s in v] for k, v in by_key.items()} == {
        k: sorted(int(s) for s in v) for k, v in expected.items()
    }
    assert sorted(int(s) for v in by_key.values() for s in v) == list(range(1, 41))


async def test_stopping_the_relay_while_the_broker_is_away_loses_nothing(core: CoreDb) -> None:
    with Broker() as broker:
        topic = await make_topic(broker.bootstrap, "away")
        producer = make_producer(broker.bootstrap, client_id="test-away", request_timeout_ms=1500)
        await producer.start()
        await write(core, topic, ["a", "b", "c"])
        broker.pause()
        relay = OutboxRelay(core.db, Outbox(core.tables), producer, Metrics("t"), max_backoff=0.2)
        task = asyncio.create_task(relay.run())
        await asyncio.sleep(2.5)  # long enough for sends to time out at least once
        relay.stop()
        await asyncio.wait_for(task, timeout=10)
        assert await pending(core) == 3
        broker.resume()
        await producer.stop()
        producer = make_producer(broker.bootstrap, client_id="test-back")
        await producer.start()
        try:
            relay = OutboxRelay(core.db, Outbox(core.tables), producer, Metrics("t"))
            assert await relay.publish_pending() == 3
        finally:
            await producer.stop()
        records = await read_topic(broker.bootstrap, topic, count=3)
        assert await pending(core) == 0
        # A send that timed out may have been written anyway; each message is there at least once.
        assert {r.key for r in records} == {b"a", b"b", b"c"}


async def test_messages_can_be_published_again_from_any_position(core: CoreDb) -> None:
    await write(core, "t", ["a", "b", "c"])
    outbox = Outbox(core.tables)
    async with core.db.transaction() as conn:
        await outbox.mark_published(conn, [1, 2, 3], NOW)
        assert await outbox.backlog(conn) == 0
        assert await outbox.republish_from(conn, 2) == 2
        assert [m.id for m in await outbox.pending(conn, limit=10)] == [2, 3]
        assert await outbox.high_water(conn) == 3


async def test_a_busy_writer_does_not_hold_the_relay_back(core: CoreDb, broker: Broker) -> None:
    """While the service's consumer holds the writer lock (most of the time under load),
    the relay goes on publishing and marks what it sent once the lock is free."""
    topic = await make_topic(broker.bootstrap, "relay-busy")
    await write(core, topic, [f"c{i % 7}" for i in range(60)])
    producer = make_producer(broker.bootstrap, client_id="test-relay-busy")
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold_the_writer_lock() -> None:
        async with core.db.transaction():
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold_the_writer_lock())
    await holding.wait()
    await producer.start()
    try:
        relay = OutboxRelay(core.db, Outbox(core.tables), producer, Metrics("t"), batch_size=15)
        busy = [await asyncio.wait_for(relay.publish_pending(), 10) for _ in range(4)]
        release.set()
        await holder
        caught_up = await relay.publish_pending()
    finally:
        release.set()
        await producer.stop()
    assert busy == [15, 15, 15, 15] and caught_up == 0
    assert await pending(core) == 0
    records = await read_topic(broker.bootstrap, topic, count=60)
    seqs = [int(decode_headers(r.headers)["crm-seq"]) for r in records]
    assert sorted(seqs) == list(range(1, 61))  # each once
