"""What the relay does with a record batch the broker refuses, on every configured database.

The embedded broker takes records of any size and its partitions do not fail one at a
time, so the producer is a scripted stand-in here: its broker refuses a batch holding a
record over a size (as Apache Kafka does above `message.max.bytes`) and can fail every
batch for one partition (a partition whose leader is away). The relay with a real broker,
and its own size limit, are tested in `tests/integration/test_outbox_relay.py`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from sqlalchemy import select

from crm_shared.app.metrics import Metrics
from crm_shared.messaging.relay import OutboxRelay, key_hash
from crm_shared.store.outbox import Outbox, OutgoingMessage
from tests.support.db import CoreDb
from tests.support.events import envelope

NOW = datetime(2026, 2, 1, tzinfo=UTC)
PARTITIONS = 2


@dataclass
class Written:
    topic: str
    partition: int
    offset: int


@dataclass
class Batch:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)

    def append(self, *, key: bytes, value: bytes, timestamp: Any, headers: Any) -> object:
        if len(self.records) >= 100:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        pass


class ScriptedProducer:
    """Takes batches in the order handed over; refuses a batch with a record over `limit`
    bytes, and every batch for a partition in `down`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.down: set[int] = set()
        self.log: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
        self.batches: list[int] = []  # records per batch sent

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.batches.append(len(batch.records))
        if partition in self.down:
            future.set_exception(KafkaTimeoutError())
        elif any(len(value) > self.limit for _, value in batch.records):
            future.set_exception(MessageSizeTooLargeError())
        else:
            self.log[partition] += [value for _, value in batch.records]
            future.set_result(Written(topic, partition, len(self.log[partition])))
        return future


def keys_on(partition: int, count: int) -> list[str]:
    keys = (f"c{i}" for i in range(1000))
    return [k for k in keys if key_hash(k.encode()) % PARTITIONS == partition][:count]


def relay_for(core: CoreDb, producer: ScriptedProducer) -> OutboxRelay:
    return OutboxRelay(core.db, Outbox(core.tables), producer, Metrics("t"))


async def write(core: CoreDb, messages: list[OutgoingMessage]) -> None:
    async with core.db.transaction() as conn:
        await Outbox(core.tables).add(conn, messages, NOW)


async def states(core: CoreDb) -> dict[int, str]:
    """Each outbox row's state: sent, parked (with the start of its reason) or pending."""
    table = core.tables.outbox
    async with core.db.read() as conn:
        rows = (await conn.execute(select(table).order_by(table.c.id))).all()
    return {
        r.id: "sent"
        if r.published_at is not None
        else f"parked: {r.parked_reason[:40]}"
        if r.parked_at is not None
        else "pending"
        for r in rows
    }


async def test_a_batch_refused_as_too_large_is_split_and_only_its_culprit_parked(
    core: CoreDb,
) -> None:
    [a, b] = keys_on(0, 2)
    [c] = keys_on(1, 1)
    big = envelope(a).model_copy(update={"data": {"note": "x" * 2000}})
    messages = [
        OutgoingMessage("t", a, envelope(a)),
        OutgoingMessage("t", b, envelope(b)),
        OutgoingMessage("t", a, big),
        OutgoingMessage("t", b, envelope(b)),
        OutgoingMessage("t", c, envelope(c)),
    ]
    await write(core, messages)
    producer = ScriptedProducer(limit=1500)
    relay = relay_for(core, producer)

    # First round: partition 0's batch of four is refused; partition 1's goes.
    with pytest.raises(MessageSizeTooLargeError):
        await relay.publish_pending()
    assert await states(core) == {1: "pending", 2: "pending", 3: "pending", 4: "pending", 5: "sent"}

    # Next round: each of the four alone; the big one is refused alone, so parked.
    assert await relay.publish_pending() == 4
    assert producer.batches == [4, 1, 1, 1, 1, 1]
    parked = "parked: the broker refused it: MessageSizeTooLar"
    assert await states(core) == {1: "sent", 2: "sent", 3: parked, 4: "sent", 5: "sent"}
    ids = [m.event.id.encode() for m in messages]
    assert [next(i for i in ids if i in v) for v in producer.log[0]] == [ids[0], ids[1], ids[3]]

    # Sent alone once, they go back into shared batches.
    await write(core, [OutgoingMessage("t", a, envelope(a)), OutgoingMessage("t", b, envelope(b))])
    assert await relay.publish_pending() == 2
    assert producer.batches[-1] == 2


async def test_a_partition_that_fails_does_not_undo_what_the_round_sent_elsewhere(
    core: CoreDb,
) -> None:
    """The round raises the failure, after marking what went to the other partitions (on
    PostgreSQL a failed round rolled those marks back, so every round sent them again)."""
    keys = keys_on(0, 3) + keys_on(1, 3)
    await write(core, [OutgoingMessage("t", k, envelope(k)) for k in keys])
    producer = ScriptedProducer(limit=10_000)
    producer.down = {1}
    relay = relay_for(core, producer)
    with pytest.raises(KafkaTimeoutError):
        await relay.publish_pending()
    expected = {i: "sent" if i <= 3 else "pending" for i in range(1, 7)}
    assert await states(core) == expected
    with pytest.raises(KafkaTimeoutError):
        await relay.publish_pending()
    assert await states(core) == expected
    assert len(producer.log[0]) == 3  # partition 0's were not sent again

    producer.down = set()
    assert await relay.publish_pending() == 3
    assert set((await states(core)).values()) == {"sent"}
