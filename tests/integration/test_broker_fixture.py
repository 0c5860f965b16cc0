"""The broker fixtures and the `Broker` process wrapper against the real embedded broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from crm_shared.messaging.topics import dlq_topic
from crm_shared.testing.broker import Broker, BrokerError, port_accepts
from crm_shared.testing.plugin import NewTopics

pytestmark = pytest.mark.broker


async def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _consume_one(bootstrap: str, topic: str, group: str) -> tuple[bytes | None, bytes | None]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        # A first group join takes about 5 s on the embedded broker.
        message = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await asyncio.wait_for(consumer.stop(), timeout=10)
    return message.key, message.value


async def _partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {topic["topic"]: len(topic["partitions"]) for topic in described}


async def test_broker_round_trips_a_message(
    broker: Broker, new_topics: NewTopics, unique: str
) -> None:
    [topic] = await new_topics("roundtrip")

    await _produce(broker.bootstrap, topic, b"customer-1", b"hello")

    assert await _consume_one(broker.bootstrap, topic, f"test-{unique}") == (
        b"customer-1",
        b"hello",
    )


async def test_new_topics_have_the_default_partition_count(
    broker: Broker, new_topics: NewTopics
) -> None:
    names = await new_topics("orders", "payments")

    counts = await _partition_counts(broker.bootstrap, [*names, *map(dlq_topic, names)])

    assert counts == {name: 3 for name in [*names, *map(dlq_topic, names)]}


async def test_new_topics_have_the_requested_partition_count(
    broker: Broker, new_topics: NewTopics
) -> None:
    [topic] = await new_topics("wide", partitions=7)

    counts = await _partition_counts(broker.bootstrap, [topic, dlq_topic(topic)])

    assert counts == {topic: 7, dlq_topic(topic): 7}


async def test_new_topics_never_reuses_a_name(new_topics: NewTopics, unique: str) -> None:
    first = await new_topics("same")
    second = await new_topics("same")

    assert first != second
    assert len(unique) == 10


def test_a_broker_stops_and_frees_its_port() -> None:
    with Broker() as broker:
        assert broker.running
        assert port_accepts(broker.host, broker.port)
    assert not broker.running
    assert not port_accepts(broker.host, broker.port)


def test_a_taken_port_is_reported(broker: Broker) -> None:
    if not broker.managed:
        pytest.skip("the broker of this run is external")
    with pytest.raises(BrokerError, match="already in use"):
        Broker(broker.port).start()


def _process_state(pid: int | None) -> str:
    # Third field of /proc/<pid>/stat: "T" when stopped, "S"/"R" when running.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _state_becomes(pid: int | None, *states: str, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while _process_state(pid) not in states:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
async def test_a_paused_broker_answers_again_once_resumed(unique: str) -> None:
    with Broker() as own:
        await _produce(own.bootstrap, f"pause.{unique}", b"k", b"before")

        own.pause()
        assert _state_becomes(own.pid, "T")  # signals are delivered asynchronously
        own.resume()

        assert _state_becomes(own.pid, "R", "S")
        await _produce(own.bootstrap, f"pause.{unique}", b"k", b"after")
