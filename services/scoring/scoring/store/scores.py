"""Scores, what was published, score history and fitted models."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store import cursor as cursor_text
from crm_shared.store.bulk import insert_rows
from crm_shared.store.db import Database
from crm_shared.store.sql import advance_clock, clock_value, upsert
from scoring.domain.model import ScoringModel
from scoring.store.tables import (
    customer_stats,
    models,
    published_scores,
    score_history,
    scores,
    scoring_clock,
)

SCORE_COLUMNS = [c.name for c in scores.columns]


async def save(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await upsert(
        conn, scores, [{k: r[k] for k in SCORE_COLUMNS} for r in rows], key=["customer_id"]
    )


_SET_STAGE = (
    update(scores)
    .where(scores.c.customer_id == bindparam("customer"))
    .values(stage=bindparam("to_stage"))
)


async def set_stages(conn: AsyncConnection, stages: dict[str, str | None]) -> None:
    """Record customers' stages in their current scores (none: nothing to record)."""
    if stages:
        rows = [{"customer": i, "to_stage": stage} for i, stage in stages.items()]
        await conn.execute(_SET_STAGE, rows)


_PUBLISHED_COLUMNS = [c.name for c in published_scores.columns]
_PUBLISHED = select(published_scores).where(
    published_scores.c.customer_id.in_(bindparam("ids", expanding=True))
)


async def published(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = list(set(ids))
    found: dict[str, dict[str, Any]] = {}
    names = _PUBLISHED_COLUMNS
    for start in range(0, len(wanted), 1000):
        for row in await conn.execute(_PUBLISHED, {"ids": wanted[start : start + 1000]}):
            entry = dict(zip(names, row, strict=True))
            found[entry["customer_id"]] = entry
    return found


async def mark_published(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], now: datetime
) -> None:
    if not rows:
        return
    await upsert(
        conn,
        published_scores,
        [
            {
                "customer_id": r["customer_id"],
                "tier": r["tier"],
                "risk_band": r["risk_band"],
                "churn_risk": r["churn_risk"],
                "clv": r["clv"],
                "published_at": now,
            }
            for r in rows
        ],
        key=["customer_id"],
    )
    await insert_rows(
        conn,
        score_history,
        [
            {
                "customer_id": r["customer_id"],
                "at": r["computed_at"],
                "score": _document(r),
            }
            for r in rows
        ],
    )


def _document(row: dict[str, Any]) -> dict[str, Any]:
    """A score row as JSON keeps it: timestamps as text (the rest is JSON already; a round
    trip through `json` per row was 10% of scoring's CPU)."""
    return {k: str(v) if isinstance(v, datetime) else v for k, v in row.items()}


# Built once: building a select and its cache key cost more than running it.
_CURRENT = select(scores).where(scores.c.customer_id == bindparam("customer_id"))


async def current(conn: AsyncConnection, customer_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(_CURRENT, {"customer_id": customer_id})).first()
    return dict(row._mapping) if row else None


async def lookup(db: Database, customer_id: str) -> dict[str, Any] | None:
    """The customer's current score, as `current`, in one statement of its own."""
    row = await db.fetch_one(_CURRENT, {"customer_id": customer_id})
    return dict(row) if row else None


async def as_of(conn: AsyncConnection, customer_id: str, at: datetime) -> dict[str, Any] | None:
    """The last published score at `at` (history keeps the material changes)."""
    query = (
        select(score_history.c.score)
        .where(score_history.c.customer_id == customer_id, score_history.c.at <= at)
        .order_by(score_history.c.at.desc(), score_history.c.id.desc())
        .limit(1)
    )
    value = (await conn.execute(query)).scalar_one_or_none()
    return dict(value) if value else None


ORDERS = {"churn_risk": scores.c.churn_risk, "clv": scores.c.clv}


async def worklist(
    conn: AsyncConnection,
    *,
    filters: dict[str, str | None],
    order: str,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Customers by descending `order`, filtered; keyset paging on (order value, id)."""
    column = ORDERS[order]
    query = select(scores).order_by(column.desc(), scores.c.customer_id).limit(limit + 1)
    for name, value in filters.items():
        if value is not None:
            query = query.where(scores.c[name] == value)
    if cursor:
        after, last_id = _decode(cursor)
        query = query.where(
            or_(column < after, and_(column == after, scores.c.customer_id > last_id))
        )
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], _encode(last[order], last["customer_id"])


def _encode(value: float, customer_id: str) -> str:
    return cursor_text.encode(value, customer_id)


def _decode(text: str) -> tuple[float, str]:
    value, customer_id = cursor_text.decode(text, 2)
    try:
        return float(value), str(customer_id)
    except (ValueError, TypeError) as exc:
        raise cursor_text.BadCursor("cursor: not a cursor this API returned") from exc


_ACTIVE_VERSION = select(models.c.version).where(models.c.active.is_(True)).limit(1)
_MODEL = select(models.c.model).where(models.c.version == bindparam("version"))
# Parsed models by version: a stored model never changes (a refit stores a new version),
# and every consumed batch asks for the active one.
_parsed: dict[str, ScoringModel] = {}


async def active_model(conn: AsyncConnection) -> ScoringModel | None:
    version = (await conn.execute(_ACTIVE_VERSION)).scalar_one_or_none()
    if version is None:
        return None
    model = _parsed.get(version)
    if model is None:
        value = (await conn.execute(_MODEL, {"version": version})).scalar_one()
        model = ScoringModel.model_validate(value)
        if len(_parsed) >= 8:
            _parsed.clear()
        _parsed[version] = model
    return model


async def store_model(conn: AsyncConnection, model: ScoringModel) -> None:
    """Keep the model and make it the active one."""
    await conn.execute(update(models).values(active=False))
    await conn.execute(
        insert(models).values(
            version=model.version,
            fitted_at=model.fitted_at,
            active=True,
            model=model.model_dump(mode="json"),
        )
    )


async def all_models(conn: AsyncConnection) -> list[dict[str, Any]]:
    query = select(models).order_by(models.c.fitted_at.desc())
    return [dict(r._mapping) for r in await conn.execute(query)]


async def model(conn: AsyncConnection, version: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(models).where(models.c.version == version))).first()
    return dict(row._mapping) if row else None


async def all_ids(conn: AsyncConnection) -> list[str]:
    """Every customer (a contact merged into another is not one)."""
    query = select(customer_stats.c.customer_id).where(customer_stats.c.merged_into.is_(None))
    return list((await conn.execute(query)).scalars())


async def remove(conn: AsyncConnection, ids: Sequence[str]) -> None:
    """Take these customers' current scores out (merged into others: not customers of their
    own); their history and what was published of them stay."""
    if ids:
        await conn.execute(delete(scores).where(scores.c.customer_id.in_(ids)))


EVENT_TIME = "event-time"


async def event_clock(conn: AsyncConnection) -> datetime | None:
    """The latest event time scoring has seen (any replica, before any restart)."""
    return await clock_value(conn, scoring_clock, EVENT_TIME)


async def advance_event_clock(conn: AsyncConnection, to: datetime) -> datetime:
    """The event-time clock moves forward only; return where it stands."""
    return await advance_clock(conn, scoring_clock, EVENT_TIME, to)
