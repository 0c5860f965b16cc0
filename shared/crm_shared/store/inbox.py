"""The inbox: ids of events a consumer has applied, written in the projection's transaction.

Delivery is at least once; because the inbox row and the projection change commit together,
each event changes state exactly once however often it is delivered.

A consumer whose handler appends every event it applies to the service's event store has
that record already: the store's unique event ids, written in the same transaction.
`StoredEvents` reads those instead of keeping a second copy. Each inbox row is an insert at
a random place in a unique index (event ids from other systems are random), which for
contacts' inbound consumer was one more such index per event besides the event store's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store.bulk import insert_rows
from crm_shared.store.eventstore import EventStore
from crm_shared.store.tables import CoreTables


class Applied(Protocol):
    """Where a consumer finds which events it has applied, and records that it applied them
    (inside the batch's transaction)."""

    async def unseen(self, conn: AsyncConnection, event_ids: Sequence[str]) -> list[str]: ...

    async def record(
        self, conn: AsyncConnection, event_ids: Sequence[str], now: datetime
    ) -> None: ...


class Inbox:
    def __init__(self, tables: CoreTables, consumer: str) -> None:
        self._t = tables.inbox
        self.consumer = consumer
        # Built once: building a statement costs more than a small batch's lookup.
        self._seen = select(self._t.c.event_id).where(
            self._t.c.consumer == bindparam("consumer"),
            self._t.c.event_id.in_(bindparam("ids", expanding=True)),
        )

    async def unseen(self, conn: AsyncConnection, event_ids: Sequence[str]) -> list[str]:
        """The ids not applied yet, first occurrence only, in the order given."""
        ordered = list(dict.fromkeys(event_ids))
        if not ordered:
            return []
        found = await conn.execute(self._seen, {"consumer": self.consumer, "ids": ordered})
        seen = set(found.scalars())
        return [event_id for event_id in ordered if event_id not in seen]

    async def record(self, conn: AsyncConnection, event_ids: Sequence[str], now: datetime) -> None:
        if event_ids:
            rows = [
                {"consumer": self.consumer, "event_id": i, "processed_at": now} for i in event_ids
            ]
            await insert_rows(conn, self._t, rows)


class StoredEvents:
    """The inbox of a consumer whose handler stores every event it applies in the event store
    (in the batch's transaction) and refuses, to the dead-letter topic, every event it does
    not store: an event is applied when its id is in the store."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def unseen(self, conn: AsyncConnection, event_ids: Sequence[str]) -> list[str]:
        """The ids not stored yet, first occurrence only, in the order given."""
        ordered = list(dict.fromkeys(event_ids))
        known = await self._store.known_ids(conn, ordered)
        return [event_id for event_id in ordered if event_id not in known]

    async def record(self, conn: AsyncConnection, event_ids: Sequence[str], now: datetime) -> None:
        """Nothing to write: the handler stored them."""
        return None
