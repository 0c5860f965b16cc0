"""The outbox relay: publishes pending outbox rows to Kafka in id order, then marks them.

Order per key holds because rows are read in id order, a key always goes to the partition
Kafka's default partitioner gives it, and a round's records for one partition go into
record batches in that order, which the producer sends in the order they were handed
over. While the broker is away the relay backs off and retries; the rows stay pending, so
nothing is lost by stopping it. A publish that timed out may still
have been written: consumers' inboxes absorb such duplicates.

A message no broker would take is parked (`Outbox.park`, with the reason) rather than
retried forever, which would hold up its partition: one larger than `max_message_bytes` (key,
value and headers; Apache Kafka refuses a record batch over `message.max.bytes`, 1 MiB by
default) before it is sent, and one the broker refused as too large when it was alone in its
record batch. When the broker refuses a batch of several as too large, each of its messages
goes in a batch of its own in the next round, and only the one refused alone is parked (the
batches after it for the same partition may have been written meanwhile: there, order per
key can break, as after any batch that fails for good). The messages after a parked one go
on, its own customer's too: the order per key skips it.

On PostgreSQL several replicas may run a relay against one database: each round holds a
transaction-scoped advisory lock, so only one publishes at a time and per-key order holds.

On SQLite (one relay per database) marking a round published needs the single writer lock,
which the service's consumer holds for most of every batch it applies; waiting for it would
publish one round per consumed batch. So the relay marks a round at once only when the lock
is free, and otherwise keeps the ids and goes on past them (a cursor in memory), marking
them with a later round. When it has caught up it marks everything, waiting for the lock if
need be, and starts again from the oldest unpublished row (so rows marked pending again by
a republish are seen). A crash before marking publishes those rows again: inboxes absorb it.

Statements on SQLite run on the event loop, so a consumer applying large batches leaves the
relay little of it: contacts ingested a whole replay before publishing most of it, and the
services downstream waited. `keep_up` lets a consumer wait, before its next fetch, until
the relay has sent all but a few rounds of what is in the outbox (bounded in time): the
stream goes on downstream while it comes in, and the backlog stays in Kafka, not in the
outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.partitioner import murmur2
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.app.metrics import Metrics
from crm_shared.messaging.kafka import HEADER_CONTENT_TYPE, HEADER_SEQ, encode_headers
from crm_shared.store.db import Database
from crm_shared.store.outbox import Outbox, PendingMessage

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
# Rewrites messages just before they are sent (contacts opens sealed personal data).
Prepare = Callable[[list[PendingMessage]], Awaitable[list[PendingMessage]]]


async def _nothing() -> None:
    return None


def utcnow() -> datetime:
    return datetime.now(UTC)


# Apache Kafka's `message.max.bytes` is 1,048,588 bytes for a record batch; a batch of one
# record adds under 100 bytes to the record's key, value and headers.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
# Refusals of a record batch for its size: sending the same batch again cannot succeed.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


@dataclass(frozen=True, slots=True)
class Parked:
    """Why a message was set aside instead of sent."""

    reason: str


Outcome = BaseException | Parked | None  # failed (stays pending), parked, sent


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.1,
        max_backoff: float = 5.0,
        clock: Clock = utcnow,
        topic_prefix: str = "",
        on_reset: Callable[[], Awaitable[None]] = _nothing,
        prepare: Prepare | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._db, self._outbox, self._producer, self._metrics = db, outbox, producer, metrics
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._clock = clock
        self._prefix = topic_prefix
        self._on_reset = on_reset
        self._prepare = prepare
        self._max_message_bytes = max_message_bytes
        # Ids of messages the broker refused in a batch of several: each goes alone next.
        self._alone: set[int] = set()
        self._offsets: dict[tuple[str, int], int] = {}
        self._reset = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._lock_key = zlib.crc32(b"crm-outbox-relay") & 0x7FFFFFFF
        # SQLite: the highest id sent in this pass, the sent ids not yet marked, and the
        # parked ones not yet written.
        self._cursor = 0
        self._unmarked: list[int] = []
        self._unparked: list[tuple[int, str]] = []
        # For `keep_up`: the highest id sent since start; wake-ups so far, and how many had
        # come when the last round that found less than a batch to send began; a signal
        # after every round.
        self._sent_through = 0
        self._wakes = 0
        self._clear_at = -1
        self._progress = asyncio.Event()

    def wake(self) -> None:
        """Something was written to the outbox: publish now rather than at the next poll."""
        self._wakes += 1
        self._wake.set()

    def forget_sent(self) -> None:
        """Rows were marked pending again (a republish): what this pass sent but has not
        marked yet stays pending, and the next round starts from the oldest pending row."""
        self._unmarked, self._unparked, self._cursor = [], [], 0
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._progress.set()

    async def keep_up(self, *, allowance: int, within: float) -> bool:
        """Wait until the relay has sent all but `allowance` of the messages in the outbox
        now, or found nothing more to send in a round begun after the last wake-up, or
        `within` seconds have passed (the broker may be away); whether it kept up."""
        async with self._db.read() as conn:
            target = await self._outbox.high_water(conn) - allowance
        woken = self._wakes
        deadline = asyncio.get_running_loop().time() + within
        while not (self._clear_at >= woken or self._sent_through >= target or self._stopping):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self._progress.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), timeout=left)
        return True

    async def run(self) -> None:
        """Publish until stopped; back off while publishing fails."""
        backoff = 0.0
        while not self._stopping:
            try:
                published = await self.publish_pending()
                await self.recover_if_reset()  # outside the round's transaction
                backoff = 0.0
            except Exception as exc:  # the broker or the database is away: retry later
                self._progress.set()
                self._metrics.relay_failures.inc()
                backoff = min(self._max_backoff, max(0.1, backoff * 2))
                log.warning(
                    "outbox publish failed; retrying",
                    extra={"error": repr(exc), "retry_in_s": backoff},
                )
                await self._sleep(backoff)
                continue
            self._progress.set()
            if published < self._batch_size:
                await self._sleep(self._poll_interval)
        try:
            await self._mark(wait=True)  # what was sent, so a restart does not send it again
        except Exception as exc:
            log.warning("could not mark sent messages at stop", extra={"error": repr(exc)})

    async def publish_pending(self) -> int:
        """One round: publish up to a batch of pending rows; return how many it took off
        the pending list (published or parked). A message that failed stays pending, and the
        round raises the first such failure once the others are marked."""
        began = self._wakes
        if self._db.dialect == "postgresql":
            async with self._db.transaction() as conn:
                if not await _try_lock(conn, self._lock_key):
                    return 0
                pending = await self._outbox.pending(conn, limit=self._batch_size)
                done, failure = await self._publish(pending, conn)
            if failure is not None:  # after the commit: what was sent stays marked
                raise failure
            if len(pending) < self._batch_size:
                self._clear_at = began
            return done
        async with self._db.read() as conn:
            pending = await self._outbox.pending(conn, limit=self._batch_size, after=self._cursor)
        try:
            done, failure = await self._publish(pending, None)
            if failure is not None:
                raise failure
        except BaseException:
            await self._mark(wait=True)  # what was sent; the rest from the oldest again
            self._cursor = 0
            raise
        if len(pending) < self._batch_size:  # caught up: mark everything, start over
            await self._mark(wait=True)
            self._cursor = 0
            self._clear_at = began
        return done

    async def _mark(self, *, wait: bool) -> None:
        """Mark the ids sent so far published, and park the parked ones: now if the writer
        lock is free (or `wait`)."""
        if not (self._unmarked or self._unparked) or (self._db.writer_busy and not wait):
            return
        ids, self._unmarked = self._unmarked, []
        parked, self._unparked = self._unparked, []
        try:
            async with self._db.transaction() as write:
                now = self._clock()
                await self._outbox.mark_published(write, ids, now)
                await self._outbox.park(write, parked, now)
        except BaseException:
            self._unmarked = ids + self._unmarked
            self._unparked = parked + self._unparked
            raise

    async def refresh_gauges(self) -> None:
        async with self._db.read() as conn:
            self._metrics.outbox_backlog.set(await self._outbox.backlog(conn))
            self._metrics.outbox_parked.set(await self._outbox.parked(conn))

    async def _publish(
        self, pending: list[PendingMessage], conn: AsyncConnection | None
    ) -> tuple[int, BaseException | None]:
        """Send the round and mark (or, on SQLite, note) what was sent and what was parked;
        how many were, and the first failure."""
        if not pending:
            return 0, None
        outgoing = pending if self._prepare is None else await self._prepare(pending)
        outcomes = await self._send_all(outgoing)
        ok: list[int] = []
        parked: list[tuple[int, str]] = []
        failure: BaseException | None = None
        for message, outcome in zip(pending, outcomes, strict=True):
            if outcome is None:
                ok.append(message.id)
            elif isinstance(outcome, Parked):
                parked.append((message.id, outcome.reason))
                _log_parked(message, outcome.reason)
            elif failure is None:
                failure = outcome
        if ok or parked:  # each in id order
            last = max(ok[-1] if ok else 0, parked[-1][0] if parked else 0)
            self._sent_through = max(self._sent_through, last)
        if conn is not None:
            now = self._clock()
            await self._outbox.mark_published(conn, ok, now)
            await self._outbox.park(conn, parked, now)
        else:
            self._unmarked += ok
            self._unparked += parked
            self._cursor = max(self._cursor, pending[-1].id)
            await self._mark(wait=len(self._unmarked) >= 20 * self._batch_size)
        self._count(pending, outcomes)
        if parked:
            self._metrics.relay_parked.inc(len(parked))
        return len(ok) + len(parked), failure

    async def _send_all(self, pending: list[PendingMessage]) -> list[Outcome]:
        """Send a round as record batches, one open batch per partition (a batch that fills
        up is sent and another opened); what each message came to: sent, parked, or its
        batch's failure.

        A batch costs the producer a third of what as many single sends cost (measured:
        7.5 against 17.8 us per ~370-byte record); the partition of a key is the one
        Kafka's default partitioner gives (murmur2), as a single send would choose."""
        producer = self._producer
        results: list[Outcome] = [None] * len(pending)
        parts_of: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], tuple[Any, list[int]]] = {}
        sent: list[tuple[asyncio.Future[Any], list[int]]] = []
        for index, message in enumerate(pending):
            topic = self._prefix + message.topic
            parts = parts_of.get(topic)
            if parts is None:
                parts = parts_of[topic] = sorted(await producer.partitions_for(topic))
            key = message.key.encode()
            slot = (topic, parts[key_hash(key) % len(parts)])
            headers = encode_headers(
                {
                    **message.headers,
                    HEADER_SEQ: str(message.id),
                    HEADER_CONTENT_TYPE: "application/cloudevents+json",
                }
            )
            size = len(key) + len(message.payload) + sum(len(n) + len(v) for n, v in headers)
            if size > self._max_message_bytes:
                results[index] = Parked(
                    f"{size} bytes (key, value and headers): more than the "
                    f"{self._max_message_bytes} the relay sends in one message "
                    "(CRM_RELAY_MAX_MESSAGE_BYTES)"
                )
                continue
            current = open_batches.get(slot)
            alone = message.id in self._alone
            if current is not None:
                batch, members = current
                if not alone and _append(batch, key, message.payload, headers):
                    members.append(index)
                    continue
                # full, or the next goes alone: off it goes
                sent.append((await producer.send_batch(batch, topic, partition=slot[1]), members))
                del open_batches[slot]
            batch = producer.create_batch()
            _append(batch, key, message.payload, headers)  # a batch takes its first record
            if alone:
                batch.close()
                sent.append((await producer.send_batch(batch, topic, partition=slot[1]), [index]))
            else:
                open_batches[slot] = (batch, [index])
        for (topic, partition), (batch, members) in open_batches.items():
            batch.close()
            sent.append((await producer.send_batch(batch, topic, partition=partition), members))
        outcomes = await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
        for (_, members), outcome in zip(sent, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                self._alone.difference_update(pending[i].id for i in members)
            elif not isinstance(outcome, _TOO_LARGE):
                for index in members:
                    results[index] = outcome
            elif len(members) == 1:
                self._alone.discard(pending[members[0]].id)
                results[members[0]] = Parked(f"the broker refused it: {outcome!r}"[:1000])
            else:  # which one? each alone next round
                self._alone.update(pending[i].id for i in members)
                for index in members:
                    results[index] = outcome
        self._watch([o for o in outcomes if not isinstance(o, BaseException)])
        return results

    def _watch(self, written: list[Any]) -> None:
        """Offsets only grow on a partition; one that went back means the broker lost its
        log (the embedded broker forgets everything when it restarts)."""
        for record in written:
            key = (record.topic, record.partition)
            if record.offset <= self._offsets.get(key, -1):  # an offset is never given twice
                self._reset = True
            self._offsets[key] = record.offset

    async def heartbeat(self, topic: str, key: str) -> None:
        """A small record whose offset tells whether the broker still has its log; after a
        reset, everything in the outbox is published again (inboxes absorb the repeats)."""
        sent = await self._producer.send_and_wait(self._prefix + topic, b"{}", key=key.encode())
        self._watch([sent])
        await self.recover_if_reset()

    async def recover_if_reset(self) -> int:
        if not self._reset:
            return 0
        self._reset = False
        await self._on_reset()
        self._unmarked, self._unparked, self._cursor = [], [], 0
        async with self._db.transaction() as conn:
            again = await self._outbox.republish_from(conn)
        log.warning(
            "the broker lost its log; publishing the outbox again", extra={"messages": again}
        )
        self.wake()
        return again

    def _count(self, pending: list[PendingMessage], outcomes: list[Outcome]) -> None:
        published = [m for m, outcome in zip(pending, outcomes, strict=True) if outcome is None]
        for topic, count in Counter(m.topic for m in published).items():
            self._metrics.events_published.labels(topic).inc(count)
        if published:
            self._metrics.outbox_position.set(published[-1].id)

    async def _sleep(self, seconds: float) -> None:
        # A wake-up that arrived during the last round ends this sleep at once.
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()


def _log_parked(message: PendingMessage, reason: str) -> None:
    log.error(
        "outbox message parked: it will not be sent until republished",
        extra={
            "outbox_id": message.id,
            "topic": message.topic,
            "key": message.key,
            "event_id": message.event_id,
            "reason": reason,
        },
    )


def _append(batch: Any, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> bool:
    return batch.append(key=key, value=value, timestamp=None, headers=headers) is not None


@lru_cache(maxsize=16_384)
def key_hash(key: bytes) -> int:
    """murmur2 of a message key, as Kafka's default partitioner hashes it (positive), kept
    for the keys seen lately: the pure-Python hash takes 7 us, and keys (customer ids)
    repeat. 16,384 keys take ~2.3 MB."""
    return int(murmur2(key)) & 0x7FFFFFFF


async def _try_lock(conn: AsyncConnection, key: int) -> bool:
    return bool((await conn.execute(select(func.pg_try_advisory_xact_lock(key)))).scalar_one())
