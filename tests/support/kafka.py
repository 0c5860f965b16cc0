"""Kafka helpers for tests: unique topics, reading a topic until a condition holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from crm_shared.messaging.topics import ensure_topics, with_dlq

Headers = list[tuple[str, bytes | None]]  # a null value is allowed


async def make_topic(bootstrap: str, base: str = "t", *, partitions: int = 3) -> str:
    """A new topic (and its dead-letter twin) with a unique name."""
    name = f"{base}.{uuid.uuid4().hex[:10]}"
    await ensure_topics(bootstrap, with_dlq([name]), partitions=partitions)
    return name


async def read_topic(
    bootstrap: str, topic: str, *, count: int, within: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the start until `count` records arrived; fail after `within` seconds.

    Partitions are assigned by hand: no consumer group, so no wait for a group to form.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    deadline = time.monotonic() + within
    # The client's first metadata may not list a topic created moments ago: ask again.
    partitions = consumer.partitions_for_topic(topic)
    while not partitions and time.monotonic() < deadline:
        await consumer.topics()  # refreshes the cluster metadata
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await asyncio.sleep(0.05)
    if not partitions:
        await consumer.stop()
        raise AssertionError(f"{topic}: no partitions known within {within}s")
    consumer.assign([TopicPartition(topic, p) for p in partitions])
    await consumer.seek_to_beginning()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        while len(records) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    assert len(records) >= count, f"{topic}: {len(records)} of {count} records within {within}s"
    return records


async def produce(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes] | tuple[bytes | None, bytes, Headers]],
    **options: Any,
) -> None:
    """Send these (key, value[, headers]) records one by one."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, **options)
    await producer.start()
    try:
        for key, value, *headers in messages:
            await producer.send_and_wait(
                topic, value, key=key, headers=headers[0] if headers else None
            )
    finally:
        await producer.stop()


async def eventually(condition: Any, *, within: float = 20.0, interval: float = 0.05) -> Any:
    """Poll an async condition until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await condition()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s; last value: {last!r}")


async def committed(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offsets on the topic, summed over partitions."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()  # not subscribed: it reads offsets without joining the group
    try:
        partitions = probe.partitions_for_topic(topic) or set()
        offsets = [await probe.committed(TopicPartition(topic, p)) for p in partitions]
    finally:
        await probe.stop()
    return sum(o or 0 for o in offsets)
