"""Reads and writes of the per-customer statistics, a batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store.sql import upsert
from scoring.domain.stats import CustomerStats, merged
from scoring.store.tables import customer_stats

FIELDS = [f.name for f in fields(CustomerStats)]
# The statistics' columns in the dataclass's field order: a row is its positional arguments
# (building a dict per row through `Row._mapping` was ~7% of scoring's CPU in bulk).
_STATS = select(*(customer_stats.c[name] for name in FIELDS))
# Built once (every consumed batch runs it): building it cost more than a small batch's lookup.
_LOAD = _STATS.where(customer_stats.c.customer_id.in_(bindparam("ids", expanding=True)))


async def load(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, CustomerStats]:
    wanted = list(set(ids))
    found: dict[str, CustomerStats] = {}
    for start in range(0, len(wanted), 1000):
        for row in await conn.execute(_LOAD, {"ids": wanted[start : start + 1000]}):
            stats = CustomerStats(*row)
            found[stats.customer_id] = stats
    return found


async def save(conn: AsyncConnection, stats: Sequence[CustomerStats], now: datetime) -> None:
    # Every field is an immutable scalar: read them as they are (`asdict` deep-copies each).
    rows = [{**{name: getattr(s, name) for name in FIELDS}, "updated_at": now} for s in stats]
    await upsert(conn, customer_stats, rows, key=["customer_id"])


async def set_merged(conn: AsyncConnection, merged_into: dict[str, str | None]) -> None:
    """Mark contacts merged into a survivor (id -> survivor), or theirs again (-> None);
    contacts merged into a contact that is merged itself follow it to its survivor."""
    for contact_id, survivor in merged_into.items():
        await conn.execute(
            update(customer_stats)
            .where(customer_stats.c.customer_id == contact_id)
            .values(merged_into=survivor)
        )
        if survivor is not None:
            await conn.execute(
                update(customer_stats)
                .where(customer_stats.c.merged_into == contact_id)
                .values(merged_into=survivor)
            )


_MERGED_INTO = select(*(customer_stats.c[name] for name in FIELDS), customer_stats.c.merged_into)
_LOAD_MARKED = _MERGED_INTO.where(
    customer_stats.c.customer_id.in_(bindparam("ids", expanding=True))
)


async def load_marked(
    conn: AsyncConnection, ids: Iterable[str]
) -> tuple[dict[str, CustomerStats], dict[str, str]]:
    """These contacts' statistics, as `load`, and which of them are merged into another
    (contact -> its survivor), in the same read."""
    wanted = list(set(ids))
    found: dict[str, CustomerStats] = {}
    marks: dict[str, str] = {}
    for start in range(0, len(wanted), 1000):
        for *row, survivor in await conn.execute(
            _LOAD_MARKED, {"ids": wanted[start : start + 1000]}
        ):
            stats = CustomerStats(*row)
            found[stats.customer_id] = stats
            if survivor is not None:
                marks[stats.customer_id] = survivor
    return found, marks


async def combined(
    conn: AsyncConnection, own: dict[str, CustomerStats]
) -> dict[str, CustomerStats]:
    """These customers' statistics with those of the contacts merged into them."""
    found = dict(own)
    wanted = sorted(own)
    for start in range(0, len(wanted), 1000):
        query = _MERGED_INTO.where(customer_stats.c.merged_into.in_(wanted[start : start + 1000]))
        for *row, survivor in await conn.execute(query):
            found[survivor] = merged(found[survivor], CustomerStats(*row))
    return found


async def every(conn: AsyncConnection) -> list[CustomerStats]:
    """Every customer's statistics, with those of the contacts merged into it (for a refit)."""
    own: dict[str, CustomerStats] = {}
    merged_in: list[tuple[str, CustomerStats]] = []
    for *row, survivor in await conn.execute(_MERGED_INTO):
        stats = CustomerStats(*row)
        if survivor is None:
            own[stats.customer_id] = stats
        else:
            merged_in.append((survivor, stats))
    for survivor, stats in merged_in:
        if survivor in own:
            own[survivor] = merged(own[survivor], stats)
    return list(own.values())


def as_dict(stats: CustomerStats) -> dict[str, Any]:
    return asdict(stats)
