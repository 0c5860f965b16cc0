"""The inbox: ids of events a consumer has applied, written in the projection's transaction.

Delivery is at least once; because the inbox row and the projection change commit together,
each event changes state exactly once however often it is delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store.bulk import insert_rows
from crm_shared.store.tables import CoreTables


class Inbox:
    def __init__(self, tables: CoreTables, consumer: str) -> None:
        self._t = tables.inbox
        self.consumer = consumer

    async def unseen(self, conn: AsyncConnection, event_ids: Sequence[str]) -> list[str]:
        """The ids not applied yet, first occurrence only, in the order given."""
        ordered = list(dict.fromkeys(event_ids))
        if not ordered:
            return []
        query = select(self._t.c.event_id).where(
            self._t.c.consumer == self.consumer, self._t.c.event_id.in_(ordered)
        )
        seen = set((await conn.execute(query)).scalars())
        return [event_id for event_id in ordered if event_id not in seen]

    async def record(self, conn: AsyncConnection, event_ids: Sequence[str], now: datetime) -> None:
        if event_ids:
            rows = [
                {"consumer": self.consumer, "event_id": i, "processed_at": now} for i in event_ids
            ]
            await insert_rows(conn, self._t, rows)
