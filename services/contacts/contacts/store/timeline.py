"""The customer timeline: every accepted event about a contact and those merged into it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contacts.store.records import absorbed, timeline_stream
from contacts.store.tables import core
from contacts.store.vault import Vault
from crm_shared.store import cursor

events = core.events


@dataclass(frozen=True)
class TimelineQuery:
    types: list[str]
    after: datetime | None
    before: datetime | None
    limit: int
    cursor: str | None


async def timeline(
    conn: AsyncConnection, contact_id: str, q: TimelineQuery, vault: Vault
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of events in event-time order (then arrival), and the next page's cursor;
    personal data opened with the contact's key (gone, for an erased contact)."""
    streams = [timeline_stream(i) for i in await absorbed(conn, contact_id)]
    query = select(events.c.position, events.c.time, events.c.recorded_at, events.c.envelope).where(
        events.c.stream_id.in_(streams)
    )
    if q.types:
        exact = [t for t in q.types if not t.endswith("*")]
        prefixes = [t[:-1] for t in q.types if t.endswith("*")]
        query = query.where(
            or_(
                events.c.type.in_(exact),
                *(events.c.type.startswith(p, autoescape=True) for p in prefixes),
            )
        )
    if q.after:
        query = query.where(events.c.time >= q.after)
    if q.before:
        query = query.where(events.c.time < q.before)
    if q.cursor:
        time, position = decode(q.cursor)
        query = query.where(
            or_(events.c.time > time, and_(events.c.time == time, events.c.position > position))
        )
    query = query.order_by(events.c.time, events.c.position).limit(q.limit + 1)
    rows = list(await conn.execute(query))
    shown = rows[: q.limit]
    opened = await vault.open_documents(conn, [r.envelope for r in shown])
    page = [
        {"time": r.time, "recorded_at": r.recorded_at, "event": event}
        for r, event in zip(shown, opened, strict=True)
    ]
    if len(rows) <= q.limit:
        return page, None
    last = rows[q.limit - 1]
    return page, encode(last.time, last.position)


def encode(time: datetime, position: int) -> str:
    return cursor.encode(time.isoformat(), position)


def decode(text: str) -> tuple[datetime, int]:
    time, position = cursor.decode(text, 2)
    try:
        moment, number = datetime.fromisoformat(time), int(position)
    except (ValueError, TypeError) as exc:
        raise cursor.BadCursor("cursor: not a cursor this API returned") from exc
    if moment.tzinfo is None or not 0 <= number < 2**63:  # not one this API made
        raise cursor.BadCursor("cursor: not a cursor this API returned")
    return moment, number
