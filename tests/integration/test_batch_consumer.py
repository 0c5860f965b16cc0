"""The batch consumer: inbox, one transaction per batch, dead letters, with the real broker."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.app.metrics import Metrics
from crm_shared.events import CATALOG, Event, EventData
from crm_shared.messaging.consumer import BatchConsumer, BatchProcessor, DeadLetters, FetchWait
from crm_shared.messaging.kafka import decode_headers, make_consumer, make_producer
from crm_shared.store.inbox import Inbox
from crm_shared.testing.broker import Broker
from tests.support.db import CoreDb
from tests.support.events import purchase_json
from tests.support.kafka import committed, eventually, make_topic, produce, read_topic


class Recorder:
    """A handler that writes what it applies to the outbox's table-free stand-in: a list."""

    def __init__(self, fail_on: set[str] | None = None) -> None:
        self.applied: list[str] = []
        self.fail_on = fail_on or set()
        self.transient_failures = 0

    async def __call__(self, conn: AsyncConnection, events: list[Event[EventData]]) -> None:
        if self.transient_failures:
            self.transient_failures -= 1
            raise OperationalError("SELECT 1", {}, Exception("database is away"))
        for event in events:
            if event.subject in self.fail_on:
                raise ValueError(f"cannot apply {event.subject}")
        self.applied += [e.id for e in events]


def record(value: bytes | None, offset: int = 0, topic: str = "t") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"k", value, None, 1, len(value or b""), [])


def encoded(**kwargs: Any) -> bytes:
    return json.dumps(purchase_json(**kwargs)).encode()


class NoDeadLetters(DeadLetters):
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, rejected: Any, *, consumer: str) -> None:
        self.sent += [r.reason for r in rejected]


def processor(core: CoreDb, handler: Recorder, dead: DeadLetters) -> BatchProcessor:
    return BatchProcessor(
        name="test",
        db=core.db,
        inbox=Inbox(core.tables, "test"),
        registry=CATALOG,
        handler=handler,
        dead_letters=dead,
        metrics=Metrics("t"),
    )


async def test_the_same_batch_delivered_twice_changes_state_once(core: CoreDb) -> None:
    handler, dead = Recorder(), NoDeadLetters()
    batch = [record(encoded(customer=f"c{i}"), offset=i) for i in range(5)]
    await processor(core, handler, dead).process(batch)
    await processor(core, handler, dead).process(batch + batch[:2])
    assert len(handler.applied) == 5 and len(set(handler.applied)) == 5


async def test_an_event_twice_in_one_batch_is_applied_once(core: CoreDb) -> None:
    handler = Recorder()
    value = encoded(customer="c1")
    await processor(core, handler, NoDeadLetters()).process([record(value, 0), record(value, 1)])
    assert len(handler.applied) == 1


async def test_an_event_the_handler_cannot_apply_is_set_aside_and_the_rest_applied(
    core: CoreDb,
) -> None:
    handler, dead = Recorder(fail_on={"bad"}), NoDeadLetters()
    batch = [record(encoded(customer=c), i) for i, c in enumerate(["a", "bad", "b"])]
    await processor(core, handler, dead).process(batch)
    assert len(handler.applied) == 2
    assert dead.sent == ["handler failed: ValueError: cannot apply bad"]


async def test_undecodable_and_invalid_messages_are_rejected_with_a_reason(core: CoreDb) -> None:
    handler, dead = Recorder(), NoDeadLetters()
    bad_schema = json.loads(encoded(customer="c1"))
    bad_schema["data"]["amount"] = "lots"
    unknown = {**json.loads(encoded(customer="c1")), "type": "crm.unheard.of.v1"}
    batch = [
        record(b"not json", 0),
        record(json.dumps(bad_schema).encode(), 1),
        record(json.dumps(unknown).encode(), 2),
        record(None, 3),
        record(encoded(customer="ok"), 4),
    ]
    await processor(core, handler, dead).process(batch)
    assert len(handler.applied) == 1
    assert dead.sent[0].startswith("not valid JSON")
    assert dead.sent[1] == "data.amount: Input should be a valid decimal"
    assert dead.sent[2] == "type: unknown event type 'crm.unheard.of.v1'"
    assert dead.sent[3] == "empty message (no value)"


async def test_a_transient_database_failure_is_raised_for_retry_and_nothing_is_recorded(
    core: CoreDb,
) -> None:
    handler = Recorder()
    handler.transient_failures = 1
    batch = [record(encoded(customer="c1"))]
    with pytest.raises(OperationalError):
        await processor(core, handler, NoDeadLetters()).process(batch)
    await processor(core, handler, NoDeadLetters()).process(batch)
    assert len(handler.applied) == 1


def consumer_for(
    core: CoreDb,
    broker: Broker,
    topic: str,
    group: str,
    handler: Recorder,
    producer: Any,
    before_fetch: Any = None,
    fetch_wait: FetchWait | None = None,
    commit_interval: float = 0.0,
) -> BatchConsumer:
    metrics = Metrics("t")
    proc = BatchProcessor(
        name="test",
        db=core.db,
        inbox=Inbox(core.tables, "test"),
        registry=CATALOG,
        handler=handler,
        dead_letters=DeadLetters(producer, metrics),
        metrics=metrics,
    )
    return BatchConsumer(
        proc,
        lambda: make_consumer(
            [topic],
            bootstrap=broker.bootstrap,
            group_id=group,
            client_id="t",
            fetch_max_wait_ms=10,
            max_records=100,
        ),
        metrics,
        before_fetch=before_fetch,
        fetch_wait=fetch_wait,
        commit_interval=commit_interval,
    )


async def test_the_consumer_fetches_only_once_its_before_fetch_hook_lets_it(
    core: CoreDb, broker: Broker, unique: str
) -> None:
    """The hook the runtime uses to let the outbox relay keep up (SQLite)."""
    topic = await make_topic(broker.bootstrap, "hooked")
    await produce(broker.bootstrap, topic, [(b"c1", encoded(customer="c1", event_id="e-1"))])
    handler = Recorder()
    go = asyncio.Event()
    calls: list[int] = []

    async def before_fetch() -> None:
        calls.append(1)
        await go.wait()

    producer = make_producer(broker.bootstrap, client_id="t")
    await producer.start()
    consumer = consumer_for(core, broker, topic, f"g-{unique}", handler, producer, before_fetch)
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: _async(len(calls) == 1))
        await asyncio.sleep(1.0)
        assert handler.applied == [] and calls == [1]
        go.set()
        await eventually(lambda: _async(len(handler.applied) == 1))
        assert len(calls) >= 2  # asked again before the next fetch
    finally:
        go.set()
        consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()


async def test_a_quiet_consumer_fetches_with_the_idle_wait_and_a_record_brings_it_back(
    core: CoreDb, broker: Broker, unique: str
) -> None:
    """The embedded broker holds every fetch for the whole wait: a quiet consumer asks less
    often, and the first record after the quiet spell is still applied."""
    topic = await make_topic(broker.bootstrap, "paced")
    handler = Recorder()
    producer = make_producer(broker.bootstrap, client_id="t")
    await producer.start()
    wait = FetchWait(busy_ms=10, idle_ms=400, idle_after_s=0.5)
    consumer = consumer_for(core, broker, topic, f"g-{unique}", handler, producer, None, wait)
    task = asyncio.create_task(consumer.run())
    try:
        await produce(broker.bootstrap, topic, [(b"c1", encoded(customer="c1", event_id="e-1"))])
        await eventually(lambda: _async(handler.applied == ["e-1"]))
        assert consumer.fetch_wait_ms == 10
        await eventually(lambda: _async(consumer.fetch_wait_ms == 400))
        # What the fetch requests carry: aiokafka's fetcher builds each from this value.
        assert consumer._consumer is not None
        assert consumer._consumer._fetcher._fetch_max_wait_ms == 400
        await produce(broker.bootstrap, topic, [(b"c2", encoded(customer="c2", event_id="e-2"))])
        await eventually(lambda: _async(handler.applied == ["e-1", "e-2"]))
        assert consumer.fetch_wait_ms == 10
        assert consumer._consumer._fetcher._fetch_max_wait_ms == 10
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()


async def test_a_poison_message_goes_to_the_dlq_and_the_next_good_one_is_processed(
    core: CoreDb, broker: Broker, unique: str
) -> None:
    topic = await make_topic(broker.bootstrap, "poison")
    good = [encoded(customer="c1", event_id=f"good-{i}") for i in range(2)]
    await produce(
        broker.bootstrap, topic, [(b"c1", good[0]), (b"c1", b"{not json"), (b"c1", good[1])]
    )
    handler = Recorder()
    producer = make_producer(broker.bootstrap, client_id="t")
    await producer.start()
    consumer = consumer_for(core, broker, topic, f"g-{unique}", handler, producer)
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: _async(len(handler.applied) == 2))
        dead = await read_topic(broker.bootstrap, f"{topic}.dlq", count=1)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()
    assert handler.applied == ["good-0", "good-1"]
    headers = decode_headers(dead[0].headers)
    assert dead[0].value == b"{not json"
    assert headers["crm-dlq-reason"].startswith("not valid JSON")
    assert headers["crm-dlq-topic"] == topic and headers["crm-dlq-offset"] == "1"


async def test_a_second_consumer_group_replaying_the_topic_changes_nothing(
    core: CoreDb, broker: Broker, unique: str
) -> None:
    topic = await make_topic(broker.bootstrap, "replay")
    await produce(
        broker.bootstrap, topic, [(f"c{i}".encode(), encoded(customer=f"c{i}")) for i in range(20)]
    )
    handler = Recorder()
    producer = make_producer(broker.bootstrap, client_id="t")
    await producer.start()
    try:
        for group in ("first", "second"):  # the second group starts from offset 0 again
            consumer = consumer_for(core, broker, topic, f"{group}-{unique}", handler, producer)
            task = asyncio.create_task(consumer.run())
            await eventually(lambda c=consumer: _async(_delivered(c) >= 20))
            consumer.stop()
            await asyncio.wait_for(task, 15)
    finally:
        await producer.stop()
    assert len(handler.applied) == 20
    assert Counter(handler.applied).most_common(1)[0][1] == 1


async def test_a_member_joining_mid_stream_leaves_nothing_unapplied_or_uncommitted(
    core: CoreDb, broker: Broker, unique: str
) -> None:
    """Two replicas of a service (one database, one group), the second starting while
    events stream in, each committing at most every 250 ms: the partitions move at the
    rebalance, offsets a member applied but had not committed are replayed by the new
    owner (the inbox skips them), and at the end every event is applied and committed."""
    topic = await make_topic(broker.bootstrap, "members", partitions=4)
    group = f"members-{unique}"
    handler = Recorder()
    producer = make_producer(broker.bootstrap, client_id="t")
    await producer.start()
    members = [
        consumer_for(core, broker, topic, group, handler, producer, commit_interval=0.25)
        for _ in range(2)
    ]
    sent: list[str] = []

    async def stream() -> None:
        """5 events every 20 ms until the second member has applied batches, then 100 more."""
        more = 100
        while more > 0 and len(sent) < 5000:
            numbers = range(len(sent), len(sent) + 5)
            batch = [f"m-{n}" for n in numbers]
            records = [
                (f"c{n % 40}".encode(), encoded(customer=f"c{n % 40}", event_id=f"m-{n}"))
                for n in numbers
            ]
            await produce(broker.bootstrap, topic, records)
            sent.extend(batch)
            if members[1].batches > 0:
                more -= 5
            await asyncio.sleep(0.02)

    first = asyncio.create_task(members[0].run())
    second: asyncio.Task[None] | None = None
    try:
        await produce(broker.bootstrap, topic, [(b"c0", encoded(customer="c0", event_id="m-x"))])
        await eventually(lambda: _async("m-x" in handler.applied))  # the first one has joined
        streaming = asyncio.create_task(stream())
        second = asyncio.create_task(members[1].run())
        await asyncio.wait_for(streaming, 60)
        await eventually(lambda: _async(set(sent) <= set(handler.applied)), within=30)
    finally:
        for member in members:
            member.stop()
        await asyncio.wait_for(first, 15)
        if second is not None:
            await asyncio.wait_for(second, 15)
        await producer.stop()
    assert members[0].batches > 0 and members[1].batches > 0
    assert set(handler.applied) == {*sent, "m-x"}
    assert await committed(broker.bootstrap, group, topic) == len(sent) + 1


def _delivered(consumer: BatchConsumer) -> int:
    """Events this consumer saw: applied plus skipped as already applied."""
    value = consumer.metrics.registry.get_sample_value
    applied = sum(
        s.value
        for m in consumer.metrics.registry.collect()
        if m.name == "crm_events_consumed"
        for s in m.samples
        if s.name.endswith("_total")
    )
    duplicates = value("crm_events_duplicate_total", {"consumer": "test"}) or 0
    return int(applied + duplicates)


async def _async(value: Any) -> Any:
    return value
