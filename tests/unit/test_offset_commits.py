"""The fetch loop commits a batch's offsets without waiting for the broker's answer, in
order, and a stop waits for the last commit. Within the commit interval, offsets wait for
the next batch, an idle fetch, the stop or a rebalance. The Kafka client is a scripted
stand-in here: what is asserted is the loop's order of calls, which a real broker answers
too fast to observe (the integration tests run the loop against the real broker)."""

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
        self.assigned = {TP}
        self.listener: Any = None

    def subscription(self) -> set[str]:
        return {"t"}

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

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

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


class Processor:
    name = "p"

    def __init__(self) -> None:
        self.applied: list[int] = []

    async def process(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        self.applied += [r.offset for r in records]


def busy_stream() -> ScriptedConsumer:
    """A consumer handed a batch every millisecond (never an idle fetch), commits answered
    at once."""
    kafka = ScriptedConsumer(batches=1_000_000)
    kafka.release.set()
    scripted = kafka.getmany

    async def busy(timeout_ms: int, max_records: int) -> Any:
        await asyncio.sleep(0.001)
        return await scripted(timeout_ms, max_records)

    kafka.getmany = busy  # type: ignore[method-assign]
    return kafka


def interval_loop(kafka: ScriptedConsumer, processor: Processor) -> BatchConsumer:
    """A loop that commits at most once a minute while batches keep coming."""
    return BatchConsumer(processor, lambda: kafka, Metrics("t"), commit_interval=60)  # type: ignore[arg-type]


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


async def test_within_the_interval_offsets_wait_and_an_idle_fetch_commits_the_latest() -> None:
    kafka, processor = ScriptedConsumer(batches=3), Processor()
    kafka.release.set()
    loop = interval_loop(kafka, processor)
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: processor.applied == [0, 1, 2])
        # The first batch commits at once; the next two only once a fetch comes back empty.
        await until(lambda: len(kafka.log) == 4)
        assert kafka.log == ["commit 1 asked", "commit 1 done", "commit 3 asked", "commit 3 done"]
    finally:
        loop.stop()
        await asyncio.wait_for(task, 5)


async def test_a_stop_commits_the_offsets_the_interval_held_back() -> None:
    kafka, processor = busy_stream(), Processor()
    loop = interval_loop(kafka, processor)
    task = asyncio.create_task(loop.run())
    await until(lambda: len(processor.applied) >= 20)
    assert kafka.log == ["commit 1 asked", "commit 1 done"]
    loop.stop()
    await asyncio.wait_for(task, 5)
    last = processor.applied[-1] + 1
    held_back = [f"commit {last} asked", f"commit {last} done"]
    assert kafka.log == ["commit 1 asked", "commit 1 done", *held_back, "stop"]


async def test_offsets_of_partitions_no_longer_assigned_are_not_committed() -> None:
    kafka, processor = ScriptedConsumer(batches=2), Processor()
    kafka.release.set()
    loop = interval_loop(kafka, processor)
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: kafka.log == ["commit 1 asked", "commit 1 done"])
        kafka.assigned = set()  # the partition moved to another member before the idle fetch
        await until(lambda: processor.applied == [0, 1])
        await asyncio.sleep(0.4)  # past an idle fetch
        assert kafka.log == ["commit 1 asked", "commit 1 done"]
    finally:
        loop.stop()
        await asyncio.wait_for(task, 5)


async def test_a_rebalance_commits_what_was_applied_from_the_partitions_it_takes_away() -> None:
    kafka, processor = busy_stream(), Processor()
    loop = interval_loop(kafka, processor)
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: len(processor.applied) >= 20)
        assert kafka.log == ["commit 1 asked", "commit 1 done"]
        kafka.release.clear()  # the broker takes its time with the next commit
        applied_before = len(processor.applied)
        revoking = asyncio.create_task(kafka.listener.on_partitions_revoked({TP}))
        await until(lambda: len(kafka.log) == 3)
        applied = int(kafka.log[2].split()[1])
        assert kafka.log[2] == f"commit {applied} asked" and applied >= applied_before
        await asyncio.sleep(0.1)
        assert not revoking.done()  # the rebalance waits for the commit
        kafka.release.set()
        await asyncio.wait_for(revoking, 5)
        assert kafka.log[3] == f"commit {applied} done"
    finally:
        kafka.release.set()
        loop.stop()
        await asyncio.wait_for(task, 5)
