"""The cohort table: customers by month of first purchase, share still active later."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.store.tables import stage_transitions

ACTIVE = ("new", "active")


def month_start(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(moment: datetime, months: int) -> datetime:
    """The first of the month `months` after `moment`'s (the last one the calendar has,
    December 9999, for any later)."""
    index = min(moment.year * 12 + moment.month - 1 + months, 9999 * 12 + 11)
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


async def cohort_table(
    conn: AsyncConnection, *, months: int, now: datetime
) -> list[dict[str, Any]]:
    histories = await _histories(conn)
    cohorts: dict[datetime, list[list[tuple[datetime, str]]]] = defaultdict(list)
    for history in histories.values():
        first = next((at for at, stage in history if stage == "new"), None)
        if first is not None:
            cohorts[month_start(first)].append(history)
    return [_row(start, members, months, now) for start, members in sorted(cohorts.items())]


def _row(
    start: datetime, members: list[list[tuple[datetime, str]]], months: int, now: datetime
) -> dict[str, Any]:
    shares: list[float | None] = []
    for offset in range(months + 1):
        end = add_months(start, offset + 1)
        if end > add_months(month_start(now), 1):
            shares.append(None)  # that month has not ended yet
            continue
        active = sum(1 for h in members if _stage_at(h, end) in ACTIVE)
        shares.append(round(active / len(members), 4))
    return {"cohort": start.strftime("%Y-%m"), "customers": len(members), "active_share": shares}


def _stage_at(history: list[tuple[datetime, str]], moment: datetime) -> str | None:
    index = bisect_right([at for at, _ in history], moment)
    return history[index - 1][1] if index else None


async def _histories(conn: AsyncConnection) -> dict[str, list[tuple[datetime, str]]]:
    t = stage_transitions.c
    query = (
        select(t.customer_id, t.occurred_at, t.to_stage)
        .where(t.superseded.is_(False))
        .order_by(t.customer_id, t.seq)
    )
    histories: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for row in await conn.execute(query):
        histories[row.customer_id].append((row.occurred_at, row.to_stage))
    return histories
