"""The CDNOW master through the four services in one process, without a broker: the CPU
each service's consumers, relay and dispatcher take, for comparing two versions of the code.

Every service runs as `serve` runs it (its app, its SQLite database in a temporary
directory, the collector settled), but its consumers' batch processors are fed directly:
the purchases go to contacts' `crm.inbound` processor in batches of `--batch`, and what each
relay publishes (a producer that keeps the records instead of sending them) goes, in
batches of at most `--batch`, to every processor subscribed to its topic, until nothing is
left; then notifications' dispatcher runs until nothing is due, and the next batch goes
in. Clocks are event-time as in `make bench`'s replay.

Without a broker, processes and polling, the result is the services' own work and varies
by a few percent from run to run (where `make bench` varies by 20%): run two versions
alternately and compare per consumer. Small batches (`--batch 5`) show the fixed cost of a
batch, large ones (2,000, the default) the cost of an event.

    .venv/bin/python -m bench.inprocess [--limit N] [--batch B] [--statements] [--profile S]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias

os.environ.setdefault("CRM_AUTH_DISABLED", "true")
os.environ.setdefault("CRM_LOG_LEVEL", "WARNING")

from aiokafka import ConsumerRecord
from fastapi import FastAPI
from sqlalchemy import event as sa_event

from bench.cdnow import load_master, purchase_events
from bench.workload import kafka_records
from crm_shared.app import heap
from crm_shared.app.runtime import Subscription
from crm_shared.messaging.consumer import BatchProcessor, Handler, Rejected
from crm_shared.messaging.relay import OutboxRelay
from crm_shared.messaging.topics import INBOUND
from notifications.bootstrap import seed
from tests.support.apps import SERVICES, service_app

Record: TypeAlias = ConsumerRecord[bytes, bytes]
SETTINGS: dict[str, dict[str, Any]] = {
    "contacts": {},
    "lifecycle": {"clock": "event-time"},
    "scoring": {"clock": "event-time"},
    "notifications": {"clock": "event-time"},
}
RELAY_BATCH = 5000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="the first N purchases only")
    p.add_argument("--batch", type=int, default=2000, help="records per consumed batch")
    p.add_argument(
        "--statements", action="store_true", help="count the SQL statements of each service"
    )
    p.add_argument("--profile", choices=[*SERVICES, "all"], help="cProfile a service's work")
    p.add_argument("--dir", type=Path, help="keep the databases (and profile) here")
    return p.parse_args(argv)


class Keeper:
    """A producer that keeps what a relay sends, as consumed records (one partition)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> KeptBatch:
        return KeptBatch()

    async def send_batch(
        self, batch: KeptBatch, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        first = len(self.records)
        for key, value, headers in batch:
            self.records.append(
                ConsumerRecord(
                    topic,
                    0,
                    len(self.records),
                    0,
                    0,
                    key,
                    value,
                    None,
                    len(key or b""),
                    len(value),
                    headers,
                )
            )
        sent: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sent.set_result(self.records[first])  # topic, partition and offset: what the relay watches
        return sent

    def take(self) -> list[Record]:
        taken, self.records = self.records, []
        return taken


class KeptBatch(list[tuple[bytes | None, bytes, Any]]):
    """A record batch without a size limit."""

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any, headers: Any) -> bool:  # type: ignore[override]
        super().append((key, value, headers))
        return True

    def close(self) -> None:
        pass


class NoDeadLetters:
    """Counts what would have gone to a dead-letter topic (nothing should)."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    async def send(self, rejected: Sequence[Rejected], *, consumer: str) -> None:
        for item in rejected:
            self.reasons[f"{consumer}: {item.reason[:100]}"] += 1


@dataclass
class Consumer:
    name: str  # service.subscription
    topics: list[str]
    processor: BatchProcessor
    queue: list[Record]


class Chain:
    def __init__(
        self,
        apps: dict[str, FastAPI],
        profiled: str | None,
        handler_for: Callable[[str, Subscription], Handler] | None = None,
    ) -> None:
        self.apps = apps
        self.dead = NoDeadLetters()
        self.cpu: dict[str, float] = {}
        self.taken: Counter[str] = Counter()
        self.published: Counter[str] = Counter()  # records by topic
        self.profiler = cProfile.Profile() if profiled else None
        self.profiled = profiled
        self.consumers: list[Consumer] = []
        self.relays: dict[str, tuple[OutboxRelay, Keeper]] = {}
        for name, app in apps.items():
            rt = app.state.runtime
            keeper = Keeper()
            relay = OutboxRelay(
                rt.db,
                rt.outbox,
                keeper,
                rt.metrics,
                batch_size=RELAY_BATCH,
                poll_interval=1.0,
                prepare=rt.prepare_outgoing,
            )
            self.relays[name] = (relay, keeper)
            for s in rt.subscriptions:
                if handler_for is not None:  # another handler, with the plain inbox
                    s = replace(s, handler=handler_for(f"{name}.{s.name}", s), inbox=None)
                processor = rt.batch_processor(s, self.dead)
                self.consumers.append(Consumer(f"{name}.{s.name}", s.topics, processor, []))

    async def timed(self, name: str, work: Any) -> Any:
        profiling = self.profiler is not None and self.profiled in (name.split(".")[0], "all")
        if profiling:
            assert self.profiler is not None
            self.profiler.enable()
        started = time.process_time()
        try:
            return await work
        finally:
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - started
            if profiling:
                assert self.profiler is not None
                self.profiler.disable()

    def route(self, records: list[Record]) -> None:
        for record in records:
            self.published[record.topic] += 1
            for consumer in self.consumers:
                if record.topic in consumer.topics:
                    consumer.queue.append(record)

    async def relay_all(self) -> None:
        for name, (relay, keeper) in self.relays.items():
            while await self.timed(f"{name}.relay", relay.publish_pending()) >= RELAY_BATCH:
                pass
            self.route(keeper.take())

    async def settle(self, batch: int) -> None:
        """Consume and relay until nothing is left anywhere."""
        busy = True
        while busy:
            busy = False
            for consumer in self.consumers:
                while consumer.queue:
                    records, consumer.queue = consumer.queue[:batch], consumer.queue[batch:]
                    self.taken[consumer.name] += len(records)
                    await self.timed(consumer.name, consumer.processor.process(records))
                    busy = True
            await self.relay_all()

    async def dispatch(self) -> None:
        if "notifications" not in self.apps:
            return
        dispatcher = self.apps["notifications"].state.dispatcher
        while True:
            outcome = await self.timed("notifications.dispatcher", dispatcher.run_once())
            done = outcome.sent + outcome.failed + outcome.held + outcome.suppressed
            self.taken["notifications.dispatcher"] += done
            if done == 0:
                return


# Given the services (migrated), the handler each subscription is to run instead of its own.
Substitute: TypeAlias = Callable[
    [dict[str, FastAPI]], Awaitable[Callable[[str, Subscription], Handler]]
]


async def run(
    args: argparse.Namespace, directory: Path, substitute: Substitute | None = None
) -> dict[str, Any]:
    apps = {
        name: service_app(name, f"sqlite:///{directory}/{name}.db", **SETTINGS[name])
        for name in SERVICES
    }
    statements: Counter[tuple[str, str]] = Counter()
    for name, app in apps.items():
        await app.state.runtime.migrate()
        if args.statements:

            def count(*event: Any, service: str = name) -> None:
                statements[(service, " ".join(str(event[2]).split())[:100])] += 1

            sa_event.listen(app.state.runtime.db.engine.sync_engine, "before_cursor_execute", count)
    await seed(apps["notifications"].state.runtime)
    purchases = purchase_events(load_master())[: args.limit]
    inbound = [
        ConsumerRecord(INBOUND, 0, n, 0, 0, key, value, None, len(key), len(value), [])
        for n, (key, value) in enumerate(kafka_records(purchases))
    ]
    chain = Chain(apps, args.profile, await substitute(apps) if substitute else None)
    heap.settle()  # as `serve` does once a service has started
    started = time.perf_counter()
    for start in range(0, len(inbound), args.batch):
        chain.route(inbound[start : start + args.batch])
        await chain.settle(args.batch)
        await chain.dispatch()
        await chain.relay_all()
        await chain.settle(args.batch)
    seconds = time.perf_counter() - started
    if chain.profiler is not None:
        chain.profiler.dump_stats(directory / f"{args.profile}.prof")
    for app in apps.values():
        await app.state.runtime.db.dispose()
    return {
        "purchases": len(inbound),
        "batch": args.batch,
        "seconds": seconds,
        "cpu_s": dict(chain.cpu),
        "taken": dict(chain.taken),
        "published": dict(chain.published),
        "dead_letters": dict(chain.dead.reasons),
        "statements": statements,
    }


def report(result: dict[str, Any]) -> None:
    cpu, taken = result["cpu_s"], result["taken"]
    print(
        f"{result['purchases']:,} CDNOW purchases in batches of {result['batch']:,}: "
        f"{result['seconds']:.1f} s, {sum(cpu.values()):.2f} s of CPU"
    )
    for service in SERVICES:
        mine = {k: v for k, v in cpu.items() if k.startswith(service + ".")}
        print(f"  {service:14s} {sum(mine.values()):7.2f} s")
        for name, seconds in sorted(mine.items()):
            count = taken.get(name, 0)
            each = f"{1e6 * seconds / count:8.1f} us each" if count else ""
            print(f"    {name:34s} {seconds:7.2f} s {count:9,} {each}")
    if result["dead_letters"]:
        print("dead letters (none expected):", result["dead_letters"])
    if result["statements"]:
        per = result["purchases"] / result["batch"]
        print(f"SQL statements per inbound batch ({per:.0f} batches)")
        for (service, sql), n in sorted(result["statements"].items(), key=lambda x: -x[1]):
            print(f"  {service:13s} {n / per:7.2f}  {sql}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run(args, args.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="crm-inprocess-") as directory:
            result = asyncio.run(run(args, Path(directory)))
    report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
