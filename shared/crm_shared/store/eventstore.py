"""Append-only event store: streams with optimistic concurrency, and a global order."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.events.envelope import CloudEvent
from crm_shared.store.bulk import insert_rows
from crm_shared.store.tables import CoreTables

ANY_VERSION = None
NO_STREAM = 0


class ConcurrencyError(Exception):
    """The stream moved on since the caller read it: re-read and decide again."""

    def __init__(self, stream_id: str, expected: int | None, actual: int | None) -> None:
        detail = f"actual {actual}" if actual is not None else "a concurrent writer won"
        super().__init__(f"stream {stream_id!r}: expected version {expected}, {detail}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class EventCodec(Protocol):
    """Turns events into what is stored and back (contacts seals personal data with it);
    both run inside the caller's transaction."""

    async def seal(
        self, conn: AsyncConnection, events: Sequence[CloudEvent]
    ) -> list[CloudEvent]: ...

    async def open(
        self, conn: AsyncConnection, events: Sequence[CloudEvent]
    ) -> list[CloudEvent]: ...


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: where it stands in its stream and in the global order."""

    position: int
    stream_id: str
    version: int
    envelope: CloudEvent
    recorded_at: datetime


class EventStore:
    """Reads and appends events in one service's `events` table."""

    def __init__(self, tables: CoreTables, codec: EventCodec | None = None) -> None:
        self._t = tables.events
        self.codec = codec
        # Built once (every consumed batch of contacts runs them): building a statement
        # costs more than a small batch's lookup.
        t = self._t
        self._ends = (
            select(t.c.stream_id, func.max(t.c.version))
            .where(t.c.stream_id.in_(bindparam("ids", expanding=True)))
            .group_by(t.c.stream_id)
        )
        self._known = select(t.c.event_id).where(t.c.event_id.in_(bindparam("ids", expanding=True)))

    async def version(self, conn: AsyncConnection, stream_id: str) -> int:
        """The stream's current version (0 for a stream that does not exist)."""
        query = select(func.coalesce(func.max(self._t.c.version), 0)).where(
            self._t.c.stream_id == stream_id
        )
        return int((await conn.execute(query)).scalar_one())

    async def append(
        self,
        conn: AsyncConnection,
        stream_id: str,
        events: Sequence[CloudEvent],
        *,
        expected_version: int | None,
        now: datetime,
    ) -> int:
        """Append after `expected_version` (None: wherever the stream ends); return its version."""
        current = await self.version(conn, stream_id)
        if expected_version is not None and current != expected_version:
            raise ConcurrencyError(stream_id, expected_version, current)
        if not events:
            return current
        if self.codec is not None:
            events = await self.codec.seal(conn, events)
        rows = [self._row(stream_id, current + i, e, now) for i, e in enumerate(events, 1)]
        await self._insert(conn, rows, stream_id=stream_id, expected=expected_version)
        return current + len(events)

    async def append_many(
        self,
        conn: AsyncConnection,
        batch: Sequence[tuple[str, CloudEvent]],
        *,
        now: datetime,
        new_streams: Collection[str] = (),
    ) -> list[int]:
        """Append to many streams at their current ends in two statements; return versions.
        `new_streams` are known to be empty (a contact created in this transaction): their
        ends are not read, and if one was not empty after all, its first version is taken
        and the append fails with ConcurrencyError."""
        if not batch:
            return []
        ids = [i for i in {stream_id: None for stream_id, _ in batch} if i not in new_streams]
        ends: dict[str, int] = {}
        if ids:
            ends = {row[0]: row[1] for row in await conn.execute(self._ends, {"ids": ids})}
        if self.codec is not None:
            sealed = await self.codec.seal(conn, [event for _, event in batch])
            batch = [
                (stream_id, event) for (stream_id, _), event in zip(batch, sealed, strict=True)
            ]
        rows, versions = [], []
        for stream_id, event in batch:
            ends[stream_id] = ends.get(stream_id, 0) + 1
            versions.append(ends[stream_id])
            rows.append(self._row(stream_id, ends[stream_id], event, now))
        await self._insert(conn, rows, stream_id=None, expected=None)
        return versions

    async def _insert(
        self,
        conn: AsyncConnection,
        rows: list[dict[str, object]],
        *,
        stream_id: str | None,
        expected: int | None,
    ) -> None:
        # No savepoint: a conflict aborts the whole unit of work, which the caller retries.
        try:
            await insert_rows(conn, self._t, rows)
        except IntegrityError as exc:
            if "event_id" in str(exc.orig).lower():
                raise DuplicateEventError(str(exc.orig)) from None
            raise ConcurrencyError(stream_id or "(batch)", expected, None) from None

    async def read_stream(
        self, conn: AsyncConnection, stream_id: str, *, from_version: int = 1
    ) -> list[RecordedEvent]:
        query = (
            select(self._t)
            .where(self._t.c.stream_id == stream_id, self._t.c.version >= from_version)
            .order_by(self._t.c.version)
        )
        return await self._opened(conn, [_recorded(row) for row in await conn.execute(query)])

    async def read_all(
        self, conn: AsyncConnection, *, after: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]:
        """Events in global order, after a position (exclusive), at most `limit`."""
        query = (
            select(self._t)
            .where(self._t.c.position > after)
            .order_by(self._t.c.position)
            .limit(limit)
        )
        return await self._opened(conn, [_recorded(row) for row in await conn.execute(query)])

    async def _opened(
        self, conn: AsyncConnection, recorded: list[RecordedEvent]
    ) -> list[RecordedEvent]:
        if self.codec is None or not recorded:
            return recorded
        opened = await self.codec.open(conn, [r.envelope for r in recorded])
        return [replace(r, envelope=e) for r, e in zip(recorded, opened, strict=True)]

    async def known_ids(self, conn: AsyncConnection, event_ids: Iterable[str]) -> set[str]:
        """Which of these event ids are stored already."""
        ids = list(set(event_ids))
        if not ids:
            return set()
        return set((await conn.execute(self._known, {"ids": ids})).scalars())

    def _row(
        self, stream_id: str, version: int, event: CloudEvent, now: datetime
    ) -> dict[str, object]:
        return {
            "stream_id": stream_id,
            "version": version,
            "event_id": event.id,
            "type": event.type,
            "time": event.time or now,
            "recorded_at": now,
            "envelope": event.to_dict(),
        }


class DuplicateEventError(Exception):
    """An event with this id is stored already."""


def _recorded(row: object) -> RecordedEvent:
    m = row._mapping  # type: ignore[attr-defined]
    return RecordedEvent(
        position=m["position"],
        stream_id=m["stream_id"],
        version=m["version"],
        envelope=CloudEvent.model_validate(m["envelope"]),
        recorded_at=m["recorded_at"],
    )
