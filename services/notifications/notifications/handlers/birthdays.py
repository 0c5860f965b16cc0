"""Birthday triggers: once a day per customer, on their birthday in their own time zone."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from notifications.domain.decide import zone
from notifications.domain.rules import TriggerEvent
from notifications.handlers.triggers import Triggers
from notifications.store import outreach
from notifications.store.tables import customers


async def birthdays_today(
    conn: AsyncConnection, now: datetime, default_tz: str
) -> list[TriggerEvent]:
    """A trigger for every customer whose birthday it is now, where they live. Every time
    zone's date is within a day of UTC's, so only three month-days need reading."""
    days = {(now + timedelta(days=d)).strftime("-%m-%d") for d in (-1, 0, 1)}
    query = select(customers.c.customer_id, customers.c.birthday, customers.c.time_zone).where(
        customers.c.merged_into.is_(None),
        or_(*(customers.c.birthday.endswith(day) for day in days)),
    )
    fired = []
    for row in await conn.execute(query):
        local = now.astimezone(zone(row.time_zone, default_tz)).date()
        if row.birthday[5:] == local.strftime("%m-%d"):
            fired.append(TriggerEvent(row.customer_id, f"birthday:{local.year}", "birthday", now))
    return fired


async def run(triggers: Triggers, conn: AsyncConnection, now: datetime, default_tz: str) -> int:
    """Schedule today's birthday greetings (once a year each: the key names the year)."""
    fired = await birthdays_today(conn, now, default_tz)
    views = await outreach.load_customers(conn, {f.customer_id for f in fired})
    await triggers.schedule(conn, fired, views, now)
    return len(fired)
