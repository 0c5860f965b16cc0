"""Reporting queries: transitions listing, flow matrix, cohorts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.store.tables import stage_transitions

MAX_ID = 2**63 - 1  # the largest id the column holds (BIGINT)

t = stage_transitions.c


@dataclass(frozen=True)
class TransitionFilter:
    from_stage: str | None
    to_stage: str | None
    reason: str | None
    after: datetime | None
    before: datetime | None
    include_superseded: bool = False


async def transitions(
    conn: AsyncConnection, where: TransitionFilter, *, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    query = select(stage_transitions).order_by(t.id).limit(limit + 1)
    if cursor:
        if not cursor.isdigit() or int(cursor) > MAX_ID:
            raise ValueError("cursor: not a cursor this API returned")
        query = query.where(t.id > int(cursor))
    if not where.include_superseded:
        query = query.where(t.superseded.is_(False))
    for column, value in (
        (t.from_stage, where.from_stage),
        (t.to_stage, where.to_stage),
        (t.reason, where.reason),
    ):
        if value:
            query = query.where(column == value)
    if where.after:
        query = query.where(t.occurred_at >= where.after)
    if where.before:
        query = query.where(t.occurred_at < where.before)
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], str(rows[limit - 1]["id"])


async def flow(
    conn: AsyncConnection, after: datetime | None, before: datetime | None
) -> dict[str, dict[str, int]]:
    """How many customers moved from each stage to each other stage in the period."""
    query = (
        select(t.from_stage, t.to_stage, func.count(func.distinct(t.customer_id)))
        .where(t.superseded.is_(False), t.from_stage.is_not(None))
        .group_by(t.from_stage, t.to_stage)
    )
    if after:
        query = query.where(t.occurred_at >= after)
    if before:
        query = query.where(t.occurred_at < before)
    matrix: dict[str, dict[str, int]] = {}
    for source, target, count in await conn.execute(query):
        matrix.setdefault(source, {})[target] = int(count)
    return matrix
