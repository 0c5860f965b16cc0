"""The fetch loop commits a batch's offsets without waiting for the broker's answer, in
order, and a stop waits for the last commit. The Kafka client is a scripted stand-in here:
what is asserted is the loop's order of calls, which a real broker answers too fast to
observe (the integration tests run the loop against the real broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from crm_shared.app.metrics import Metrics
from crm_shared.messaging.consumer import BatchConsumer

TP = TopicPartition("t", 0)


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t", 0, offset, 0, 0, b"k", b"{}", None, 1, 2, [])


class ScriptedConsumer:
    """Hands out one record per fetch, `batches` times, then nothing; each commit waits
    until the test releases it."""

    def __init__(self, batches: int) -> None:
        self.left = batches
        self.fetched = 0
        self.log: list[str] = []
        self.release = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.log.append("stop")

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if self.left == 0:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.left -= 1
        self.fetched += 1
        return {TP: [record(self.fetched - 1)]}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.log.append(f"commit {offsets[TP]} asked")
        await self.release.wait()
        self.log.append(f"commit {offsets[TP]} done")

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


class Processor:
    name = "p"

    def __init__(self) -> None:
        self.applied: list[int] = []

    async def process(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        self.applied += [r.offset for r in records]


async def until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_the_next_batch_is_fetched_and_applied_while_the_last_offsets_commit() -> None:
    kafka, processor = ScriptedConsumer(batches=3), Processor()
    loop = BatchConsumer(processor, lambda: kafka, Metrics("t"))  # type: ignore[arg-type]
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: processor.applied == [0, 1, 2])
        # Only the first commit is with the broker; the others wait their turn, in order.
        assert kafka.log == ["commit 1 asked"]
        kafka.release.set()
        await until(lambda: len(kafka.log) == 6)
        assert kafka.log == [f"commit {n} {what}" for n in (1, 2, 3) for what in ("asked", "done")]
    finally:
        kafka.release.set()
        loop.stop()
        await asyncio.wait_for(task, 5)


async def test_a_stop_waits_for_the_offsets_being_committed() -> None:
    kafka, processor = ScriptedConsumer(batches=1), Processor()
    loop = BatchConsumer(processor, lambda: kafka, Metrics("t"))  # type: ignore[arg-type]
    task = asyncio.create_task(loop.run())
    await until(lambda: kafka.log == ["commit 1 asked"])
    loop.stop()
    await asyncio.sleep(0.3)
    assert not task.done()  # still waiting for the commit
    kafka.release.set()
    await asyncio.wait_for(task, 5)
    assert kafka.log == ["commit 1 asked", "commit 1 done", "stop"]
