"""The transactional outbox: messages written with the state change that caused them.

A relay publishes pending rows in id order and marks them; rows are kept, so everything can
be published again from any position (for instance after the broker lost its data). A
message no broker would take (too large) is parked by the relay with the reason: neither
pending nor published, counted in `crm_outbox_parked`, and pending again after
`republish_from` a position at or before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.events.envelope import CloudEvent
from crm_shared.store.bulk import insert_rows
from crm_shared.store.eventstore import EventCodec
from crm_shared.store.tables import CoreTables


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """What to publish: topic, key (the customer id) and a CloudEvent; the event's trace
    goes into the Kafka headers too (`traceparent`, `tracestate`)."""

    topic: str
    key: str
    event: CloudEvent
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PendingMessage:
    id: int
    topic: str
    key: str
    event_id: str
    payload: bytes
    headers: dict[str, str]


class Outbox:
    def __init__(self, tables: CoreTables, codec: EventCodec | None = None) -> None:
        self._t = tables.outbox
        self.codec = codec
        # Built once: a relay round on a quiet stream costs little more than building them.
        t = self._t
        self._pending = (
            select(t.c.id, t.c.topic, t.c.key, t.c.event_id, t.c.payload, t.c.headers)
            .where(t.c.published_at.is_(None), t.c.parked_at.is_(None), t.c.id > bindparam("after"))
            .order_by(t.c.id)
            .limit(bindparam("limit"))
        )
        self._mark = (
            update(t)
            .where(t.c.id.in_(bindparam("ids", expanding=True)))
            .values(published_at=bindparam("now"))
        )
        self._park = (
            update(t)
            .where(t.c.id == bindparam("parked_id"))
            .values(parked_at=bindparam("now"), parked_reason=bindparam("reason"))
        )
        self._high_water = select(func.coalesce(func.max(t.c.id), 0))  # before every fetch

    async def add(
        self, conn: AsyncConnection, messages: Sequence[OutgoingMessage], now: datetime
    ) -> None:
        """Write messages in the caller's transaction (their events sealed by the codec,
        if there is one: the relay opens them again just before publishing)."""
        if not messages:
            return
        if self.codec is not None:
            sealed = await self.codec.seal(conn, [m.event for m in messages])
            messages = [replace(m, event=e) for m, e in zip(messages, sealed, strict=True)]
        await insert_rows(conn, self._t, [_row(m, now) for m in messages])

    async def pending(
        self, conn: AsyncConnection, *, limit: int, after: int = 0
    ) -> list[PendingMessage]:
        """The oldest unpublished messages (with an id above `after`), in id order."""
        rows = await conn.execute(self._pending, {"after": after, "limit": limit})
        return [
            PendingMessage(r.id, r.topic, r.key, r.event_id, r.payload.encode(), r.headers)
            for r in rows
        ]

    async def mark_published(
        self, conn: AsyncConnection, ids: Sequence[int], now: datetime
    ) -> None:
        if ids:
            await conn.execute(self._mark, {"ids": list(ids), "now": now})

    async def park(
        self, conn: AsyncConnection, parked: Sequence[tuple[int, str]], now: datetime
    ) -> None:
        """Set messages aside, each with its reason: the relay no longer tries them."""
        if parked:
            rows = [{"parked_id": id_, "reason": reason, "now": now} for id_, reason in parked]
            await conn.execute(self._park, rows)

    async def parked_messages(
        self, conn: AsyncConnection, *, after: int, limit: int
    ) -> list[dict[str, object]]:
        """Parked messages with an id above `after`, oldest first, with their reasons."""
        t = self._t
        query = (
            select(
                t.c.id,
                t.c.topic,
                t.c.key,
                t.c.event_id,
                func.length(t.c.payload).label("size"),
                t.c.created_at,
                t.c.parked_at,
                t.c.parked_reason.label("reason"),
            )
            .where(t.c.parked_at.is_not(None), t.c.id > after)
            .order_by(t.c.id)
            .limit(limit)
        )
        return [dict(row._mapping) for row in await conn.execute(query)]

    async def backlog(self, conn: AsyncConnection) -> int:
        t = self._t
        query = (
            select(func.count())
            .select_from(t)
            .where(t.c.published_at.is_(None), t.c.parked_at.is_(None))
        )
        return int((await conn.execute(query)).scalar_one())

    async def parked(self, conn: AsyncConnection) -> int:
        """How many messages are parked."""
        t = self._t
        query = select(func.count()).select_from(t).where(t.c.parked_at.is_not(None))
        return int((await conn.execute(query)).scalar_one())

    async def high_water(self, conn: AsyncConnection) -> int:
        """The id of the newest message written (0 when none)."""
        return int((await conn.execute(self._high_water)).scalar_one())

    async def republish_from(self, conn: AsyncConnection, first_id: int = 1) -> int:
        """Mark messages from `first_id` on as pending again, parked ones too; return how
        many."""
        t = self._t
        result = await conn.execute(
            update(t)
            .where(t.c.id >= first_id, t.c.published_at.is_not(None) | t.c.parked_at.is_not(None))
            .values(published_at=None, parked_at=None, parked_reason=None)
        )
        return int(result.rowcount)


def _row(message: OutgoingMessage, now: datetime) -> dict[str, object]:
    return {
        "topic": message.topic,
        "key": message.key,
        "event_id": message.event.id,
        "payload": message.event.to_json().decode(),
        "headers": {**_trace_headers(message.event), **message.headers},
        "created_at": now,
        "published_at": None,
    }


def _trace_headers(event: CloudEvent) -> dict[str, str]:
    # Kafka tooling reads the trace from headers without parsing the event.
    headers = {"traceparent": event.traceparent, "tracestate": event.tracestate}
    return {name: value for name, value in headers.items() if value is not None}
