"""The outbox and its relay against the real broker, on every configured database."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy import select

from contacts.settings import MAX_EVENT_BYTES
from crm_shared.app.metrics import Metrics
from crm_shared.events.envelope import CloudEvent
from crm_shared.messaging.kafka import decode_headers, make_producer
from crm_shared.messaging.relay import OutboxRelay
from crm_shared.store.outbox import Outbox, OutgoingMessage
from crm_shared.testing.broker import Broker
from tests.support.db import CoreDb
from tests.support.events import envelope, purchase_json
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


async def publish_round(
    core: CoreDb, bootstrap: str, client_id: str, *, batch_size: int = 500, **producer: Any
) -> int:
    """One relay round with a producer of its own; how many messages it published."""
    kafka = make_producer(bootstrap, client_id=client_id, **producer)
    await kafka.start()
    try:
        outbox = Outbox(core.tables)
        relay = OutboxRelay(core.db, outbox, kafka, Metrics("t"), batch_size=batch_size)
        return await relay.publish_pending()
    finally:
        await kafka.stop()


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


async def test_an_event_of_the_largest_size_contacts_ingests_is_published_whole(
    core: CoreDb, broker: Broker
) -> None:
    """`CRM_INGEST_MAX_EVENT_BYTES` stops at 512 KiB, so that the event with its envelope
    and headers stays under Apache Kafka's default 1 MiB message limit. The embedded broker
    takes larger messages too; this checks the relay sends the largest event whole, as
    one record."""
    topic = await make_topic(broker.bootstrap, "relay-largest")
    raw = purchase_json("big")
    raw["data"]["note"] = ""
    raw["data"]["note"] = "x" * (MAX_EVENT_BYTES - len(json.dumps(raw)))
    assert len(json.dumps(raw)) == MAX_EVENT_BYTES
    message = OutgoingMessage(topic, "big", CloudEvent.model_validate(raw))
    async with core.db.transaction() as conn:
        await Outbox(core.tables).add(conn, [message], NOW)
    assert await publish_round(core, broker.bootstrap, "test-largest") == 1
    [record] = await read_topic(broker.bootstrap, topic, count=1)
    assert json.loads(record.value)["data"]["note"] == raw["data"]["note"]


async def test_a_message_over_the_relays_limit_is_parked_and_the_rest_go_on(
    core: CoreDb, broker: Broker
) -> None:
    """A message larger than the relay sends is set aside with the reason, not retried
    forever: the ones after it (its own key's too) are published, the round does not fail,
    and the backlog is empty. Republished from its position under a raised limit, it goes."""
    topic = await make_topic(broker.bootstrap, "relay-parked")
    raw = purchase_json("a")
    raw["data"]["note"] = "x" * 6000
    big = OutgoingMessage(topic, "a", CloudEvent.model_validate(raw))
    messages = [
        OutgoingMessage(topic, "a", envelope("a")),
        big,
        OutgoingMessage(topic, "a", envelope("a")),
        OutgoingMessage(topic, "b", envelope("b")),
    ]
    outbox = Outbox(core.tables)
    async with core.db.transaction() as conn:
        await outbox.add(conn, messages, NOW)
    metrics = Metrics("t")
    producer = make_producer(broker.bootstrap, client_id="test-parked")
    await producer.start()
    try:
        relay = OutboxRelay(
            core.db, outbox, producer, metrics, batch_size=10, max_message_bytes=4096
        )
        assert await relay.publish_pending() == 4  # three sent, one parked, no failure
        assert await relay.publish_pending() == 0
        await relay.refresh_gauges()
        assert metrics.registry.get_sample_value("crm_outbox_parked") == 1
        assert metrics.registry.get_sample_value("crm_outbox_backlog") == 0
        records = await read_topic(broker.bootstrap, topic, count=3)
        ids = [json.loads(r.value)["id"] for r in records if r.key == b"a"]
        assert ids == [messages[0].event.id, messages[2].event.id]
        table = core.tables.outbox
        async with core.db.read() as conn:
            row = (await conn.execute(select(table).where(table.c.id == 2))).one()
        assert row.published_at is None and row.parked_at is not None
        assert "more than the 4096 the relay sends" in row.parked_reason

        async with core.db.transaction() as conn:
            assert await outbox.republish_from(conn, 2) == 3  # it and the two after it
        raised = OutboxRelay(core.db, outbox, producer, metrics, batch_size=10)
        assert await raised.publish_pending() == 3
        await raised.refresh_gauges()
        assert metrics.registry.get_sample_value("crm_outbox_parked") == 0
        assert metrics.registry.get_sample_value("crm_outbox_backlog") == 0
    finally:
        await producer.stop()
    again = [json.loads(r.value) for r in await read_topic(broker.bootstrap, topic, count=6)]
    assert [e["data"]["note"] for e in again if e["id"] == big.event.id] == [raw["data"]["note"]]


async def test_a_round_larger_than_a_batch_keeps_order_and_the_default_partition_of_each_key(
    core: CoreDb, broker: Broker
) -> None:
    """The relay sends record batches: with 2 KiB batches a round of 600 fills many per
    partition; every key lands where Kafka's default partitioner puts it, in id order."""
    topic = await make_topic(broker.bootstrap, "relay-batches", partitions=4)
    keys = [f"customer-{i % 37}" for i in range(600)]
    await write(core, topic, keys)
    published = await publish_round(
        core, broker.bootstrap, "test-batches", batch_size=600, max_batch_size=2048
    )
    assert published == 600
    records = await read_topic(broker.bootstrap, topic, count=600)
    assert len(records) == 600
    partitioner = DefaultPartitioner()
    seqs: dict[str, list[int]] = defaultdict(list)
    for record in records:
        key = record.key
        assert record.partition == partitioner(key, [0, 1, 2, 3], [0, 1, 2, 3])
        headers = decode_headers(record.headers)
        assert headers["content-type"] == "application/cloudevents+json"
        seqs[key.decode()].append(int(headers["crm-seq"]))
    assert len({r.partition for r in records}) == 4
    expected: dict[str, list[int]] = defaultdict(list)
    for seq, key in enumerate(keys, start=1):
        expected[key].append(seq)
    assert seqs == expected  # every message once, each key's in the order written


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
        assert await publish_round(core, broker.bootstrap, "test-back") == 3
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


async def test_keep_up_waits_for_the_relay_to_send_all_but_the_allowance(
    core: CoreDb, broker: Broker
) -> None:
    topic = await make_topic(broker.bootstrap, "relay-keep-up")
    producer = make_producer(broker.bootstrap, client_id="test-keep-up")
    await producer.start()
    metrics = Metrics("t")
    relay = OutboxRelay(
        core.db, Outbox(core.tables), producer, metrics, batch_size=10, poll_interval=30
    )

    def sent() -> float:
        value = metrics.registry.get_sample_value("crm_events_published_total", {"topic": topic})
        return value or 0.0

    task = asyncio.create_task(relay.run())
    try:
        # Nothing written since start: the first round finds nothing, so no wait.
        assert await asyncio.wait_for(relay.keep_up(allowance=0, within=5), 5)
        await write(core, topic, [f"c{i % 3}" for i in range(45)])
        relay.wake()  # as a consumer's commit does
        assert await relay.keep_up(allowance=20, within=10)
        assert sent() >= 25  # all but at most the allowance of 45, when it returned
        assert await relay.keep_up(allowance=0, within=10)
        assert sent() == 45
        assert len(await read_topic(broker.bootstrap, topic, count=45)) == 45
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)
        await producer.stop()
    assert await pending(core) == 0


async def test_keep_up_does_not_wait_for_rows_published_before_a_restart(
    core: CoreDb, broker: Broker
) -> None:
    topic = await make_topic(broker.bootstrap, "relay-restart")
    await write(core, topic, [f"c{i}" for i in range(30)])
    producer = make_producer(broker.bootstrap, client_id="test-keep-up-restart")
    await producer.start()
    try:
        first = OutboxRelay(core.db, Outbox(core.tables), producer, Metrics("t"))
        assert await first.publish_pending() == 30
        # A new process: its relay has sent nothing, and nothing is left to send.
        again = OutboxRelay(core.db, Outbox(core.tables), producer, Metrics("t"), poll_interval=30)
        task = asyncio.create_task(again.run())
        started = asyncio.get_running_loop().time()
        assert await again.keep_up(allowance=0, within=5)
        assert asyncio.get_running_loop().time() - started < 2
        again.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await producer.stop()


async def test_keep_up_gives_up_after_its_time_when_the_relay_cannot_send(core: CoreDb) -> None:
    with Broker() as broker:
        topic = await make_topic(broker.bootstrap, "relay-stuck")
        producer = make_producer(broker.bootstrap, client_id="test-stuck", request_timeout_ms=1500)
        await producer.start()
        broker.pause()
        relay = OutboxRelay(core.db, Outbox(core.tables), producer, Metrics("t"), max_backoff=0.2)
        task = asyncio.create_task(relay.run())
        try:
            await write(core, topic, ["a", "b", "c"])
            relay.wake()
            started = asyncio.get_running_loop().time()
            assert not await relay.keep_up(allowance=0, within=1.0)
            assert 0.9 <= asyncio.get_running_loop().time() - started < 3
        finally:
            relay.stop()
            broker.resume()
            await asyncio.wait_for(task, 15)
            await producer.stop()


class ForgetfulBroker:
    """A producer whose broker restarts between two heartbeats: each partition's offsets
    start over at 0."""

    def __init__(self) -> None:
        self.offsets = [0, 0]

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes) -> Any:
        offset = self.offsets.pop(0)
        return type("Sent", (), {"topic": topic, "partition": 0, "offset": offset})()


async def test_a_broker_that_restarted_after_one_record_is_noticed(core: CoreDb) -> None:
    resets: list[str] = []

    async def on_reset() -> None:
        resets.append("reset")

    await write(core, "t", ["c1"])
    relay = OutboxRelay(
        core.db, Outbox(core.tables), ForgetfulBroker(), Metrics("t"), on_reset=on_reset
    )
    await relay.heartbeat("crm.heartbeat", "k")  # offset 0 on a fresh broker
    await relay.heartbeat("crm.heartbeat", "k")  # offset 0 again: it lost its log
    assert resets == ["reset"]
