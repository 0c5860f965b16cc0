"""The batch consumer: fetch a batch, apply it in one transaction, then commit offsets.

For each batch: decode and validate every message (what fails goes to `<topic>.dlq` with the
reason in its headers), skip the events the inbox has seen, hand the rest to the handler,
record them in the inbox, commit the database transaction, and only then commit the Kafka
offsets. A crash anywhere replays the batch, and the inbox makes the replay harmless.
Offsets are committed at most every `commit_interval` seconds while batches keep coming
(each commit is a request to the broker), and at once when the consumer goes idle or stops,
or a rebalance takes partitions away (before they move, so their new owner starts where this
one stopped): a crash replays at most that much more, which the inbox skips as well.

A handler error that is not transient (the database is away) is narrowed down by applying
the batch one event at a time: the events that still fail are dead-lettered with the error,
the others are applied, and the consumer carries on.

Each event keeps the trace it was published with (its `traceparent` attribute, or the
Kafka header of that name): a batch of one is applied in that trace, and handlers pass
the cause's trace on to the events they publish in reaction (see `events.causes`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, KafkaError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared import tracecontext
from crm_shared.app.metrics import Metrics
from crm_shared.events.envelope import CloudEvent, InvalidEvent, decode_envelope
from crm_shared.events.registry import Event, EventData, EventRegistry
from crm_shared.messaging.kafka import decode_headers, encode_headers, set_fetch_wait
from crm_shared.messaging.topics import dlq_topic
from crm_shared.store.db import Database
from crm_shared.store.inbox import Applied

log = logging.getLogger(__name__)

# A handler applies a batch inside the batch's transaction. It may refuse events it cannot
# accept (event id -> reason): those are not recorded as processed and go to the DLQ.
Handler = Callable[[AsyncConnection, list[Event[EventData]]], Awaitable[Mapping[str, str] | None]]
MAX_DLQ_BYTES = 900_000
# How long a rebalance waits for the offsets of the partitions it takes away (the group
# waits for this member meanwhile).
REVOKE_COMMIT_S = 5.0
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Received:
    """A consumed message that decoded and validated, with where it came from."""

    record: ConsumerRecord[bytes, bytes]
    event: Event[EventData]


@dataclass(frozen=True, slots=True)
class Rejected:
    record: ConsumerRecord[bytes, bytes]
    reason: str


# PostgreSQL error classes a retry can outlive: connection exceptions, insufficient
# resources (too many connections), operator intervention (shutting down, starting up),
# serialization failures and deadlocks, lock not available.
TRANSIENT_SQLSTATES = ("08", "53", "57P", "40001", "40P01", "55P03")


def is_transient(exc: BaseException) -> bool:
    """Whether the database or broker is away for now (retry the batch), rather than the
    batch being at fault (narrow it down, dead-letter what still fails)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        if sqlstate.startswith(TRANSIENT_SQLSTATES):
            return True
    if isinstance(exc, sqlite3.OperationalError):  # the driver's own, not SQLAlchemy's
        return "locked" in str(exc) or "busy" in str(exc)
    return isinstance(exc, TRANSIENT)


class BatchProcessor:
    """Applies batches of records to the database; knows nothing of the fetch loop."""

    def __init__(
        self,
        *,
        name: str,
        db: Database,
        inbox: Applied,
        registry: EventRegistry,
        handler: Handler,
        dead_letters: DeadLetters,
        metrics: Metrics,
        on_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self._db, self._inbox, self._registry = db, inbox, registry
        self._handler, self._dead, self._metrics = handler, dead_letters, metrics
        self._on_committed = on_committed

    async def process(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Apply a batch; return once it is durably applied or dead-lettered."""
        received, rejected = self._decode(records)
        await self._dead.send(rejected, consumer=self.name)
        if not received:
            return
        started = time.perf_counter()
        try:
            await self._apply(received)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning(
                "batch failed; applying its events one by one",
                extra={"consumer": self.name, "error": repr(exc)},
            )
            await self._apply_one_by_one(received)
        self._metrics.consumer_batch_seconds.labels(self.name).observe(
            time.perf_counter() - started
        )
        self._on_committed()

    def _decode(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> tuple[list[Received], list[Rejected]]:
        received, rejected = [], []
        for record in records:
            try:
                if record.value is None:
                    raise InvalidEvent("empty message (no value)")
                envelope = _traced(decode_envelope(record.value), record)
                received.append(Received(record, self._registry.validate(envelope)))
            except InvalidEvent as exc:
                rejected.append(Rejected(record, exc.reason))
            except Exception as exc:  # whatever a record holds, it cannot stop the consumer
                rejected.append(Rejected(record, f"could not be decoded: {exc!r}"[:1000]))
        return received, rejected

    async def _apply(self, received: list[Received]) -> None:
        # One event: its trace is the work's (a batch of many has no one trace).
        alone = received[0].event.envelope.trace() if len(received) == 1 else None
        with tracecontext.use(alone.child() if alone is not None else None):
            await self._apply_in_trace(received)

    async def _apply_in_trace(self, received: list[Received]) -> None:
        async with self._db.transaction() as conn:
            fresh_ids = set(await self._inbox.unseen(conn, [r.event.id for r in received]))
            fresh = _first_of_each(received, fresh_ids)
            refused: Mapping[str, str] = {}
            if fresh:
                refused = await self._handler(conn, [r.event for r in fresh]) or {}
                applied = [r.event.id for r in fresh if r.event.id not in refused]
                await self._inbox.record(conn, applied, _now())
        # Counted before the dead letters go out: what the commit made readable is counted
        # without waiting on the broker.
        self._count(
            [r for r in fresh if r.event.id not in refused], duplicates=len(received) - len(fresh)
        )
        rejected = [Rejected(r.record, refused[r.event.id]) for r in fresh if r.event.id in refused]
        await self._dead.send(rejected, consumer=self.name)

    async def _apply_one_by_one(self, received: list[Received]) -> None:
        for item in received:
            try:
                await self._apply([item])
            except Exception as exc:
                if is_transient(exc):
                    raise
                reason = f"handler failed: {type(exc).__name__}: {exc}"[:1000]
                await self._dead.send([Rejected(item.record, reason)], consumer=self.name)

    def _count(self, fresh: list[Received], *, duplicates: int) -> None:
        for topic, count in Counter(item.record.topic for item in fresh).items():
            self._metrics.events_consumed.labels(self.name, topic).inc(count)
        if log.isEnabledFor(logging.DEBUG):
            for item in fresh:
                _log_applied(self.name, item)
        if duplicates:
            self._metrics.events_duplicate.labels(self.name).inc(duplicates)


def _traced(envelope: CloudEvent, record: ConsumerRecord[bytes, bytes]) -> CloudEvent:
    """The event with its trace: its own attribute, else the record's `traceparent` header
    (a producer that traces in headers only)."""
    if envelope.traceparent is not None or not record.headers:
        return envelope
    for name, _ in record.headers:
        if name.lower() == tracecontext.TRACEPARENT:
            return envelope.with_trace(_header_trace(record))
    return envelope  # the usual case: headers, none of them a trace (content-type)


def _header_trace(record: ConsumerRecord[bytes, bytes]) -> tracecontext.TraceContext | None:
    return tracecontext.from_headers(
        (name, (value or b"").decode("latin-1"))
        for name, value in record.headers or ()
        if name in (tracecontext.TRACEPARENT, tracecontext.TRACESTATE)
    )


def _log_applied(consumer: str, item: Received) -> None:
    """A debug line per applied event, in the event's trace: follow one event by its trace
    id through every service's log."""
    with tracecontext.use(item.event.envelope.trace()):
        log.debug(
            "event applied",
            extra={
                "consumer": consumer,
                "topic": item.record.topic,
                "partition": item.record.partition,
                "offset": item.record.offset,
                "event_id": item.event.id,
                "event_type": item.event.type,
            },
        )


def _first_of_each(received: list[Received], fresh_ids: set[str]) -> list[Received]:
    """Keep unseen events, once each even if the batch carries one twice."""
    out = []
    for item in received:
        if item.event.id in fresh_ids:
            fresh_ids.discard(item.event.id)
            out.append(item)
    return out


class DeadLetters:
    """Sends rejected messages to `<topic>.dlq`, keeping key, value and headers, plus why."""

    def __init__(self, producer: AIOKafkaProducer, metrics: Metrics) -> None:
        self._producer, self._metrics = producer, metrics
        # Several services consume one topic and share its dead-letter twin: say whose.
        self.service = metrics.service

    async def send(self, rejected: Sequence[Rejected], *, consumer: str) -> None:
        futures = []
        for item in rejected:
            record = item.record
            with tracecontext.use(_header_trace(record)):
                log.warning(
                    "dead-lettering a message",
                    extra={
                        "consumer": consumer,
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "reason": item.reason,
                    },
                )
            why = {
                "crm-dlq-reason": item.reason[:2000],
                "crm-dlq-topic": record.topic,
                "crm-dlq-partition": str(record.partition),
                "crm-dlq-offset": str(record.offset),
                "crm-dlq-consumer": consumer,
                "crm-dlq-service": self.service,
            }
            key, value, headers = _dead_letter(record, why)
            futures.append(
                await self._producer.send(dlq_topic(record.topic), value, key=key, headers=headers)
            )
            self._metrics.events_dead_lettered.labels(consumer, record.topic).inc()
        # Offsets move past a rejected message only once its dead letter is written.
        await asyncio.gather(*futures)


def _dead_letter(
    record: ConsumerRecord[bytes, bytes], why: dict[str, str]
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Key, value and headers of a rejected record's dead letter: the record's own, with
    why, cut to `MAX_DLQ_BYTES` bytes in all (the producer refuses a message over 1 MiB, and
    a dead letter that cannot be written would hold its partition up for good). The value is
    cut first; if key and headers alone are too big, only why is kept."""
    ours = encode_headers(why)
    theirs = encode_headers(decode_headers(record.headers))
    key, value = record.key, record.value

    def size(*parts: list[tuple[str, bytes]]) -> int:
        return sum(len(n) + len(v) for headers in parts for n, v in headers)

    room = MAX_DLQ_BYTES - len(key or b"") - size(ours, theirs) - 64
    if room < 0:  # the key and headers alone: keep why, the key's start and nothing else
        return (key or b"")[:1000], None, [*ours, ("crm-dlq-truncated", b"true")]
    truncated = value is not None and len(value) > room
    value = value[:room] if value is not None and truncated else value
    return key, value, [*theirs, *ours, ("crm-dlq-truncated", b"true" if truncated else b"false")]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FetchWait:
    """How long the broker may hold a fetch: `busy_ms` while records come, `idle_ms` once
    none came for `idle_after_s`. A broker that answers as soon as records arrive (Apache
    Kafka) makes the wait free, and both are best set high there. One that holds every fetch
    for the whole wait (the embedded broker) makes the wait the delivery latency, and each
    idle consumer fetches 1000/`busy_ms` times a second; the idle wait bounds that cost, at
    the price of up to `idle_ms` more for the first record after a quiet spell."""

    busy_ms: int
    idle_ms: int
    idle_after_s: float = 1.0


class _Pace:
    """Switches one consumer between the busy and the idle fetch wait."""

    def __init__(self, consumer: AIOKafkaConsumer, wait: FetchWait | None) -> None:
        self._consumer, self._wait = consumer, wait
        self._quiet_since: float | None = None
        self._idle = False

    @property
    def wait_ms(self) -> int | None:
        """The wait in force (None: the consumer's own, never changed)."""
        if self._wait is None:
            return None
        return self._wait.idle_ms if self._idle else self._wait.busy_ms

    def saw(self, records: bool) -> None:
        if self._wait is None or self._wait.idle_ms <= self._wait.busy_ms:
            return
        if records:
            self._quiet_since = None
            if self._idle:
                self._idle = not set_fetch_wait(self._consumer, self._wait.busy_ms)
            return
        now = time.monotonic()
        if self._quiet_since is None:
            self._quiet_since = now
        elif not self._idle and now - self._quiet_since >= self._wait.idle_after_s:
            self._idle = set_fetch_wait(self._consumer, self._wait.idle_ms)


class BatchConsumer:
    """The fetch loop around a BatchProcessor: getmany, process, commit offsets, repeat."""

    def __init__(
        self,
        processor: BatchProcessor,
        consumer_factory: Callable[[], AIOKafkaConsumer],
        metrics: Metrics,
        *,
        max_records: int = 500,
        max_backoff: float = 5.0,
        before_fetch: Callable[[], Awaitable[object]] | None = None,
        fetch_wait: FetchWait | None = None,
        commit_interval: float = 0.0,
    ) -> None:
        self._processor = processor
        self._fetch_wait = fetch_wait
        self._pace: _Pace | None = None
        self._before_fetch = before_fetch
        self._factory = consumer_factory
        self.metrics = metrics
        self._max_records = max_records
        self._max_backoff = max_backoff
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        # The offsets of the last batch, committing while the next one is fetched.
        self._committing: asyncio.Task[None] | None = None
        # Offsets applied but not committed yet, and when the last commit went out.
        self._commit_interval = commit_interval
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = -math.inf
        self.batches = 0

    @property
    def name(self) -> str:
        return self._processor.name

    def stop(self) -> None:
        """Ask the loop to end after the batch in hand is applied and committed."""
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            consumer = self._factory()
            topics = consumer.subscription()
            if topics:  # subscribed again, to hear of rebalances
                consumer.subscribe(topics=sorted(topics), listener=_CommitOnRevoke(self, consumer))
            try:
                await consumer.start()
                self._consumer = consumer
                await self._loop(consumer)
            except KafkaError as exc:
                # A broker that lost its topics or our group: start over with a new client;
                # the inbox absorbs what is delivered again.
                log.warning(
                    "consumer error; recreating the consumer",
                    extra={"consumer": self.name, "error": repr(exc)},
                )
                await self._wait(1.0)
            finally:
                self._consumer = None
                if self._stopping.is_set():  # not after a client error: it would fail too
                    self._flush(consumer)
                self._uncommitted = {}
                await self._committed()
                await _stop_quietly(consumer)

    @property
    def fetch_wait_ms(self) -> int | None:
        """How long the broker may hold this consumer's fetches now (see `FetchWait`)."""
        return self._pace.wait_ms if self._pace is not None else None

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        self._pace = pace = _Pace(consumer, self._fetch_wait)
        while not self._stopping.is_set():
            if self._before_fetch is not None:
                await self._before_fetch()  # the outbox relay keeping up (SQLite)
            batches = await consumer.getmany(timeout_ms=200, max_records=self._max_records)
            records = [record for batch in batches.values() for record in batch]
            pace.saw(bool(records))
            if not records:
                self._flush(consumer)  # idle: what was applied is committed now
                continue
            if not await self._process_with_retry(records):
                return
            await self._commit(consumer, batches)
            self.batches += 1
            self._record_lag(consumer, batches)

    async def _process_with_retry(self, records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        """Apply the batch, retrying transient failures; False if stopped before it applied."""
        backoff = 0.1
        while True:
            try:
                await self._processor.process(records)
                return True
            except Exception as exc:
                if not is_transient(exc) and not isinstance(exc, KafkaError):
                    raise
                log.warning(
                    "batch not applied; retrying",
                    extra={"consumer": self.name, "error": repr(exc), "retry_in_s": backoff},
                )
                if await self._wait(backoff):
                    return False
                backoff = min(self._max_backoff, backoff * 2)

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        """Commit the batch's offsets without waiting for the broker's answer: the next
        fetch goes out meanwhile, and commits still go in order (each waits for the one
        before). Within `commit_interval` of the last commit they wait for the next batch,
        an idle fetch or the stop, whichever comes first. A crash before a commit lands
        replays the batches since the last one, which the inbox skips, as it does when
        the process stops between applying a batch and committing it."""
        previous = self._committing
        if previous is not None and previous.done() and not previous.cancelled():
            failure = previous.exception()  # not a Kafka error: raise it here, as before
            if failure is not None:
                self._committing = None
                raise failure
        for tp, batch in batches.items():
            if batch:
                self._uncommitted[tp] = batch[-1].offset + 1
        if time.monotonic() - self._committed_at >= self._commit_interval:
            self._flush(consumer)

    def _flush(self, consumer: AIOKafkaConsumer) -> None:
        """Start committing the offsets applied so far, those of partitions this member
        still has (a partition that moved away is replayed by its new owner)."""
        if not self._uncommitted:
            return
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
        self._uncommitted = {}
        if not offsets:
            return
        self._committed_at = time.monotonic()
        self._committing = asyncio.create_task(
            self._commit_after(self._committing, consumer, offsets)
        )

    async def commit_revoked(
        self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]
    ) -> None:
        """A rebalance takes these partitions away: commit what was applied from them now,
        after the commits before it, and wait for it (bounded), so that their next owner
        does not replay it. A batch still being applied from them is replayed there."""
        offsets = {tp: o for tp, o in self._uncommitted.items() if tp in revoked}
        for tp in offsets:
            del self._uncommitted[tp]
        if offsets:
            self._committing = asyncio.create_task(
                self._commit_after(self._committing, consumer, offsets)
            )
        if self._committing is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._committing), timeout=REVOKE_COMMIT_S)
        except Exception as exc:
            log.warning(
                "offsets not committed before a rebalance",
                extra={"consumer": self.name, "error": repr(exc)},
            )

    async def _commit_after(
        self,
        previous: asyncio.Task[None] | None,
        consumer: AIOKafkaConsumer,
        offsets: dict[TopicPartition, int],
    ) -> None:
        if previous is not None:
            await previous
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The partitions moved to another member; it will replay, and its inbox skips.
            log.warning("offset commit failed", extra={"consumer": self.name, "error": repr(exc)})

    async def _committed(self) -> None:
        """Wait for the offsets being committed (a stop commits what was applied)."""
        committing, self._committing = self._committing, None
        if committing is not None:
            try:
                await asyncio.wait_for(committing, timeout=5)
            except Exception as exc:  # a broker that went away must not hang shutdown
                log.warning(
                    "offsets not committed at stop",
                    extra={"consumer": self.name, "error": repr(exc)},
                )

    def _record_lag(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        for tp, batch in batches.items():
            high = consumer.highwater(tp)
            if high is not None and batch:
                lag = max(0, high - batch[-1].offset - 1)
                self.metrics.consumer_lag.labels(self.name, tp.topic, str(tp.partition)).set(lag)

    async def _wait(self, seconds: float) -> bool:
        """Sleep unless stopped; True if a stop was asked for."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: BatchConsumer, consumer: AIOKafkaConsumer) -> None:
        self._loop, self._consumer = loop, consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.commit_revoked(self._consumer, set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass


async def _stop_quietly(consumer: AIOKafkaConsumer) -> None:
    try:
        await asyncio.wait_for(consumer.stop(), timeout=5)
    except Exception as exc:  # a broker that went away must not hang shutdown
        log.warning("consumer did not stop cleanly", extra={"error": repr(exc)})
