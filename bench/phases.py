"""The measured phases: raw Kafka baseline, end to end via HTTP and via Kafka, latency.

End to end means until every folding service (lifecycle, and scoring when it runs) applied
every event contacts published: their customer-events consumers' `crm_events_consumed_total`.
Every phase is bounded by a deadline and reports what it got by then; a phase that did not
finish says so (`complete: false`) instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.observe import CpuMeter, Progress, ServerStats, Watcher, wait_idle
from bench.workload import Workload, http_batches, kafka_records, purchase
from crm_shared.events import BATCH_CONTENT_TYPE
from crm_shared.messaging.topics import INBOUND
from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import Stack

PRODUCE_CHUNK = 1000
SINGLE_CONTENT_TYPE = "application/cloudevents+json"
# Scoring's consumer of crm.customer-events (it also consumes crm.lifecycle).
OF_CUSTOMER_EVENTS = 'consumer="customer-events"'


class BenchError(RuntimeError):
    """The system under test answered something a run cannot go on from."""


def stack_pids(broker: Broker, stack: Stack | None) -> dict[str, int]:
    """The processes a run measures: itself, the broker, every service that runs."""
    pids = {"bench": os.getpid()}
    if broker.pid:
        pids["broker"] = broker.pid
    if stack is not None:
        pids |= {n: p.pid for n, p in stack.processes.items() if p.pid is not None}
    return pids


def check_alive(stack: Stack | None) -> None:
    """Raise, with the end of their logs, if a service of the stack has exited."""
    dead = stack.dead() if stack is not None else []
    if dead:
        raise BenchError(
            "; ".join(f"{p.name} exited ({p.returncode}):\n{p.log_tail(20)}" for p in dead)
        )


@dataclass
class Context:
    """What every phase needs: clients of the services, the watcher, CPU meters."""

    bootstrap: str
    contacts: httpx.AsyncClient
    lifecycle: httpx.AsyncClient
    watcher: Watcher
    contacts_addr: tuple[str, int]
    lifecycle_addr: tuple[str, int]
    pids: dict[str, int]
    run_id: str
    linger_ms: int
    check_alive: Callable[[], None] = lambda: None
    scoring: httpx.AsyncClient | None = None
    # Canonical events contacts publishes for the first event of an unknown customer (the
    # event, and the contact it creates for them); measured by the warm-up.
    published_per_new_customer: int = 1

    def expected_published(self, workload: Workload) -> int:
        """How many events contacts publishes, and lifecycle applies, for a workload."""
        extra = self.published_per_new_customer - 1
        return workload.events + extra * workload.distinct_customers

    def meter(self) -> CpuMeter:
        return CpuMeter(self.pids)

    @property
    def folds(self) -> list[str]:
        """The watcher's counters of the services that fold customer events."""
        return ["lifecycle.consumed"] + (["scoring.consumed"] if self.scoring else [])

    def server_stats(self) -> ServerStats:
        more = {"scoring": (self.scoring, OF_CUSTOMER_EVENTS)} if self.scoring else None
        return ServerStats(self.lifecycle, self.contacts, more=more)


def folding_watcher(
    lifecycle: httpx.AsyncClient,
    contacts: httpx.AsyncClient,
    scoring: httpx.AsyncClient | None,
) -> Watcher:
    """A watcher of contacts and of the services folding what it publishes."""
    if scoring is None:
        return Watcher(lifecycle, contacts)
    return Watcher(
        lifecycle,
        contacts,
        more={"scoring.consumed": (scoring, OF_CUSTOMER_EVENTS)},
        sample=("lifecycle.consumed", "scoring.consumed"),
    )


def rate(count: float, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds else None


# --- raw Kafka baseline ---


def raw_producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=linger_ms,
        request_timeout_ms=30_000,
    )


async def produce_all(
    producer: AIOKafkaProducer,
    topic: str,
    records: list[Any],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Send every (key, value), with `headers` on each, awaiting the acks a chunk at a time."""
    for start in range(0, len(records), PRODUCE_CHUNK):
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value in records[start : start + PRODUCE_CHUNK]
        ]
        await asyncio.gather(*futures)


async def baseline_produce(
    bootstrap: str,
    linger_ms: int,
    topic: str,
    records: list[Any],
    meter: CpuMeter,
    headers: list[tuple[str, bytes]] | None = None,
) -> dict[str, Any]:
    producer = raw_producer(bootstrap, linger_ms)
    await producer.start()
    try:
        await producer.partitions_for(topic)  # metadata and connection before the clock starts
        meter.start()
        started = time.perf_counter()
        await produce_all(producer, topic, records, headers)
        seconds = time.perf_counter() - started
        cpu = meter.stop()
    finally:
        await producer.stop()
    return {
        "messages": len(records),
        "seconds": round(seconds, 3),
        "rate": rate(len(records), seconds),
        "cpu": cpu,
    }


async def assigned_consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A started consumer without a group, assigned every partition of `topic` from the
    beginning (manual assignment: no group to join, so it reads at once)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
    except BaseException:
        await asyncio.wait_for(consumer.stop(), timeout=10)
        raise
    return consumer


async def read_topic(bootstrap: str, topic: str, within: float) -> tuple[list[bytes], bool]:
    """The values of every message on `topic`, and whether all were read in `within` s.

    "All" is up to the high watermark that fetches report: the embedded broker's answer to
    ListOffsets (`end_offsets`) stays behind it (tens of records a partition, seconds later).
    """
    consumer = await assigned_consumer(bootstrap, topic)
    try:
        deadline, values, remaining = time.perf_counter() + within, [], consumer.assignment()
        while remaining and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            values += [r.value for records in batches.values() for r in records if r.value]
            remaining = {
                tp
                for tp in remaining
                if (high := consumer.highwater(tp)) is None or await consumer.position(tp) < high
            }
    finally:
        await asyncio.wait_for(consumer.stop(), timeout=10)
    return values, not remaining


async def baseline_consume(
    bootstrap: str, topic: str, expected: int, meter: CpuMeter, deadline: float
) -> dict[str, Any]:
    consumer = await assigned_consumer(bootstrap, topic)
    try:
        meter.start()
        started, received = time.perf_counter(), 0
        while received < expected and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            received += sum(len(batch) for batch in batches.values())
        seconds = time.perf_counter() - started
        cpu = meter.stop()
    finally:
        await asyncio.wait_for(consumer.stop(), timeout=10)
    return {
        "messages": received,
        "seconds": round(seconds, 3),
        "rate": rate(received, seconds),
        "complete": received >= expected,
        "cpu": cpu,
    }


# --- warm-up ---


async def idle(ctx: Context, seconds: float, *, settle: float = 60.0) -> dict[str, Any]:
    """Nothing sent: what the stack costs while it waits for work (consumers' fetches,
    relays' polls, heartbeats), once it finished what came before and its consumers have
    had a quiet second (after which they fetch with `CRM_FETCH_IDLE_WAIT_MS`)."""
    settled = await wait_idle(ctx.pids, settle)
    await asyncio.sleep(2.0)
    meter = ctx.meter()
    meter.start()
    await asyncio.sleep(seconds)
    return {"seconds": seconds, "settled_s": settled, "cpu": meter.stop()}


async def post_single(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/events", content=body, headers={"content-type": SINGLE_CONTENT_TYPE}
    )
    if response.status_code != 202:
        raise BenchError(f"single POST: {response.status_code} {response.text[:300]}")


async def warm_up(ctx: Context, within: float) -> dict[str, Any]:
    """One event over HTTP and one over crm.inbound, each until lifecycle (and scoring)
    applied it.

    Consumer groups on the embedded broker take ~5 s to form: done here, not in a phase.
    Also counts what contacts publishes for the first event of a new customer, so that
    the phases know how many events lifecycle applies when all of theirs went through.
    """
    out: dict[str, Any] = {}
    for path in ("http", "kafka"):
        await ctx.watcher.snapshot()
        started = time.perf_counter()
        event = purchase(f"bench-warm-{path}-{ctx.run_id}")
        if path == "http":
            await post_single(ctx.contacts, json.dumps(event).encode())
        else:
            await _produce_one(ctx, event)
        targets = dict.fromkeys(ctx.folds, 1)
        progress = await ctx.watcher.until(targets, started, started + within)
        ctx.check_alive()
        if not progress.complete:
            raise BenchError(f"warm-up via {path}: not applied in {within}s: {progress.reached}")
        out[f"{path}_s"] = round(max(t or 0.0 for t in progress.reached.values()), 2)
        await asyncio.sleep(1.0)  # let whatever else the event caused arrive too
        settled = await ctx.watcher.current()
        out[f"{path}_published_per_new_customer"] = settled.get("contacts.published")
        out[f"{path}_applied_per_new_customer"] = settled.get("lifecycle.consumed")
    ctx.published_per_new_customer = max(1, int(out["http_applied_per_new_customer"] or 1))
    return out


async def _produce_one(ctx: Context, event: dict[str, Any]) -> None:
    producer = raw_producer(ctx.bootstrap, ctx.linger_ms)
    await producer.start()
    try:
        await produce_all(producer, INBOUND, kafka_records([event]))
    finally:
        await producer.stop()


# --- end to end ---


def _end_to_end(
    ctx: Context, n: int, expected: int, progress: Progress, extra: dict[str, Any]
) -> dict[str, Any]:
    """Timed until the last folding service applied the last event."""
    times = [progress.reached.get(k) for k in ctx.folds]
    done = None if None in times else max(t or 0.0 for t in times)
    return {
        "events": n,
        "complete": done is not None,
        "seconds": round(done, 3) if done is not None else None,
        "rate": rate(n, done),
        "lifecycle_expected": expected,
        "applied": int(min(progress.last.get(k, 0.0) for k in ctx.folds)),
        "folds": {
            k.removesuffix(".consumed"): {
                "seconds": _round(progress.reached.get(k)),
                "rate": rate(n, progress.reached.get(k)),
                "applied": int(progress.last.get(k, 0.0)),
            }
            for k in ctx.folds
        },
        "contacts_published_at_s": _round(progress.reached.get("contacts.published")),
        **extra,
        "timeline_columns": ["seconds", *ctx.watcher.sampled],
        "timeline": progress.samples,
    }


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


async def post_batches(
    client: httpx.AsyncClient, bodies: list[tuple[int, bytes]], concurrency: int
) -> int:
    """POST every batch, `concurrency` requests at a time; the number of events accepted."""
    queue = list(reversed(bodies))
    accepted = 0

    async def worker() -> None:
        nonlocal accepted
        while queue:
            count, body = queue.pop()
            response = await client.post(
                "/v1/events", content=body, headers={"content-type": BATCH_CONTENT_TYPE}
            )
            if response.status_code != 200:
                raise BenchError(f"batch POST: {response.status_code} {response.text[:300]}")
            outcome = response.json()
            if outcome["accepted"] != count:
                raise BenchError(f"batch POST: {count} sent, outcome {_counts(outcome)}")
            accepted += count

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return accepted


def _counts(outcome: dict[str, Any]) -> dict[str, Any]:
    first_bad = next((r for r in outcome["results"] if r["status"] != "accepted"), None)
    return {k: outcome[k] for k in ("accepted", "duplicates", "rejected")} | {"first": first_bad}


async def http_end_to_end(
    ctx: Context, workload: Workload, batch_size: int, concurrency: int, within: float
) -> dict[str, Any]:
    """POST the workload in batches; time until lifecycle and scoring applied it all."""
    bodies = http_batches(workload.generate(), batch_size)
    await ctx.watcher.snapshot()
    server = ctx.server_stats()
    await server.start()
    meter = ctx.meter()
    meter.start()
    started = time.perf_counter()
    expected = ctx.expected_published(workload)
    targets = dict.fromkeys([*ctx.folds, "contacts.published"], expected)
    watch = asyncio.create_task(ctx.watcher.until(targets, started, started + within))
    try:
        await post_batches(ctx.contacts, bodies, concurrency)
    except BaseException:
        watch.cancel()
        raise
    ingest = time.perf_counter() - started
    progress = await watch
    cpu = meter.stop()
    ctx.check_alive()
    servers = await server.stop()
    return _end_to_end(
        ctx,
        workload.events,
        expected,
        progress,
        {
            "requests": len(bodies),
            "batch_size": batch_size,
            "concurrency": concurrency,
            "ingest_seconds": round(ingest, 3),
            "ingest_rate": rate(workload.events, ingest),
            "server": servers,
            "cpu": cpu,
        },
    )


async def kafka_end_to_end(ctx: Context, workload: Workload, within: float) -> dict[str, Any]:
    """Publish the workload to crm.inbound; time until lifecycle and scoring applied it all."""
    records = kafka_records(workload.generate())
    producer = raw_producer(ctx.bootstrap, ctx.linger_ms)
    await producer.start()
    try:
        await producer.partitions_for(INBOUND)  # metadata before the clock starts
        await ctx.watcher.snapshot()
        server = ctx.server_stats()
        await server.start()
        meter = ctx.meter()
        meter.start()
        started = time.perf_counter()
        expected = ctx.expected_published(workload)
        targets = dict.fromkeys([*ctx.folds, "contacts.published"], expected)
        targets["contacts.consumed"] = workload.events
        watch = asyncio.create_task(ctx.watcher.until(targets, started, started + within))
        try:
            await produce_all(producer, INBOUND, records)
        except BaseException:
            watch.cancel()
            raise
        produced = time.perf_counter() - started
        progress = await watch
        cpu = meter.stop()
    finally:
        await producer.stop()
    ctx.check_alive()
    servers = await server.stop()
    return _end_to_end(
        ctx,
        workload.events,
        expected,
        progress,
        {
            "produce_seconds": round(produced, 3),
            "produce_rate": rate(workload.events, produced),
            "contacts_consumed_at_s": _round(progress.reached.get("contacts.consumed")),
            "server": servers,
            "cpu": cpu,
        },
    )
