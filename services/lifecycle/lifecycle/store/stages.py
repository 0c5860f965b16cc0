"""Reads and writes of lifecycle's tables; whole batches in a few statements each."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter

from crm_shared.ids import new_id
from crm_shared.store.bulk import insert_rows
from crm_shared.store.db import Database
from crm_shared.store.sql import advance_clock, clock_value, upsert
from lifecycle.domain.policy import Policy
from lifecycle.domain.stages import CustomerState, Fact, Transition, kind_of, order
from lifecycle.store.tables import clock, customer_stages, facts, stage_transitions, wakeups

EVENT_TIME = "event-time"

# The statements every consumed batch runs, built once: building a statement and its cache
# key costs more than a small batch's lookup.
_IDS: BindParameter[list[str]] = bindparam("ids", expanding=True)
_FACTS = select(facts.c.customer_id, facts.c.event_id, facts.c.type, facts.c.time).where(
    facts.c.customer_id.in_(_IDS)
)
_ACTIVE = (
    select(stage_transitions)
    .where(stage_transitions.c.customer_id.in_(_IDS), stage_transitions.c.superseded.is_(False))
    .order_by(stage_transitions.c.customer_id, stage_transitions.c.seq)
)
_STORED = (
    select(customer_stages, wakeups.c.at.label("wake_at"))
    .select_from(
        customer_stages.outerjoin(wakeups, wakeups.c.customer_id == customer_stages.c.customer_id)
    )
    .where(customer_stages.c.customer_id.in_(_IDS))
)
_DUE = (
    select(customer_stages.c.customer_id)
    .where(customer_stages.c.next_due <= bindparam("now"))
    .order_by(customer_stages.c.next_due)
    .limit(bindparam("limit"))
)
_WOKEN = (
    select(wakeups.c.customer_id)
    .where(wakeups.c.at <= bindparam("now"))
    .order_by(wakeups.c.at)
    .limit(bindparam("limit"))
)
_UNWAKE = wakeups.delete().where(wakeups.c.customer_id.in_(_IDS))


async def add_facts(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Keep these events' facts; an event seen before is kept once."""
    if not rows:
        return
    await insert_rows(conn, facts, rows, on_conflict="nothing")


async def move_facts(conn: AsyncConnection, from_ids: Sequence[str], to_id: str) -> None:
    await conn.execute(
        update(facts).where(facts.c.customer_id.in_(from_ids)).values(customer_id=to_id)
    )


async def merged_owners(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, str]:
    """Which of these customers are merged into another now: customer -> the one that holds
    its facts (read off the facts that named it)."""
    found: dict[str, str] = {}
    for chunk in _chunks(sorted(set(ids))):
        rows = await conn.execute(_MERGED_OWNERS, {"ids": chunk})
        found.update({row.origin_id: row.customer_id for row in rows})
    return found


_MERGED_OWNERS = (
    select(facts.c.origin_id, facts.c.customer_id)
    .where(facts.c.origin_id.in_(_IDS), facts.c.customer_id != facts.c.origin_id)
    .distinct()
)


async def restore_facts(conn: AsyncConnection, origin_id: str) -> None:
    """Facts that first named `origin_id` belong to it again (an undone merge)."""
    await conn.execute(
        update(facts).where(facts.c.origin_id == origin_id).values(customer_id=origin_id)
    )


async def facts_of(
    conn: AsyncConnection, ids: Iterable[str], policy: Policy
) -> dict[str, list[Fact]]:
    wanted = list(set(ids))
    found: dict[str, list[Fact]] = defaultdict(list)
    for chunk in _chunks(wanted):
        for row in await conn.execute(_FACTS, {"ids": chunk}):
            found[row.customer_id].append(
                Fact(row.customer_id, row.event_id, kind_of(row.type, policy), row.time)
            )
    return found


async def all_customer_ids(conn: AsyncConnection) -> list[str]:
    return list((await conn.execute(select(facts.c.customer_id).distinct())).scalars())


async def active_transitions(
    conn: AsyncConnection, ids: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """The published history of each customer (not superseded), in order."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk in _chunks(list(set(ids))):
        for row in await conn.execute(_ACTIVE, {"ids": chunk}):
            found[row.customer_id].append(dict(row._mapping))
    return found


_ALL_ROWS = (
    select(stage_transitions)
    .where(stage_transitions.c.customer_id.in_(_IDS))
    .order_by(stage_transitions.c.customer_id, stage_transitions.c.id)
)


async def last_told(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The history consumers were told last of each customer with no history now (merged
    into another), superseded as it is: its transitions in the order they were published,
    each one replacing what was told from its place on."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk in _chunks(list(set(ids))):
        for row in await conn.execute(_ALL_ROWS, {"ids": chunk}):
            told = found[row.customer_id]
            del told[row.seq :]
            told.append(dict(row._mapping))
    return found


async def supersede(
    conn: AsyncConnection, row_ids: Sequence[int], *, superseded: bool = True
) -> None:
    """Mark these transitions superseded (or, `superseded=False`, part of the history again:
    a restored customer's history that still holds)."""
    for chunk in _chunks(list(row_ids)):
        await conn.execute(
            update(stage_transitions)
            .where(stage_transitions.c.id.in_(chunk))
            .values(superseded=superseded)
        )


async def insert_transitions(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await insert_rows(conn, stage_transitions, rows)


def transition_row(
    t: Transition, *, seq: int, correction: bool, policy: Policy, now: datetime
) -> dict[str, Any]:
    return {
        "customer_id": t.customer_id,
        "from_stage": t.from_stage,
        "to_stage": t.to_stage,
        "reason": t.reason,
        "caused_by": t.caused_by,
        "occurred_at": t.occurred_at,
        "recorded_at": now,
        "policy_version": policy.version,
        "seq": seq,
        "event_id": new_id(),
        "correction": correction,
        "superseded": False,
    }


@dataclass(frozen=True, slots=True)
class Head:
    """Where a customer's fold stands: the last fact folded and the next transition's seq."""

    last_fact_at: datetime
    last_fact_id: str
    next_seq: int

    def precedes(self, fact: Fact) -> bool:
        return (self.last_fact_at, self.last_fact_id) < order(fact)

    def advanced(self, folded: Sequence[Fact], added: int) -> Head:
        """Where the fold stands after `folded` (in fold order) added `added` transitions."""
        last = folded[-1] if folded else None
        return Head(
            last.time if last else self.last_fact_at,
            last.event_id if last else self.last_fact_id,
            self.next_seq + added,
        )


@dataclass(frozen=True, slots=True)
class Stored:
    state: CustomerState
    policy_version: str
    head: Head | None
    waiting: bool  # has facts dated after the clock (a wake-up)


async def stored_states(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, Stored]:
    """The stored state of each of these customers that has one."""
    found: dict[str, Stored] = {}
    for chunk in _chunks(list(set(ids))):
        for row in await conn.execute(_STORED, {"ids": chunk}):
            head = None
            if row.last_fact_at is not None and row.next_seq is not None:
                head = Head(row.last_fact_at, row.last_fact_id, row.next_seq)
            state = CustomerState(
                customer_id=row.customer_id,
                stage=row.stage,
                stage_since=row.stage_since,
                purchases=row.purchases,
                first_purchase_at=row.first_purchase_at,
                last_purchase_at=row.last_purchase_at,
                next_due=row.next_due,
                erased=row.erased,
            )
            found[row.customer_id] = Stored(
                state, row.policy_version, head, waiting=row.wake_at is not None
            )
    return found


async def save_states(
    conn: AsyncConnection,
    states: Sequence[CustomerState],
    policy: Policy,
    now: datetime,
    heads: dict[str, Head],
) -> None:
    rows = [
        {
            "customer_id": s.customer_id,
            "stage": s.stage,
            "stage_since": s.stage_since,
            "purchases": s.purchases,
            "first_purchase_at": s.first_purchase_at,
            "last_purchase_at": s.last_purchase_at,
            "updated_at": now,
            "next_due": s.next_due,
            "policy_version": policy.version,
            "erased": s.erased,
            "last_fact_at": heads[s.customer_id].last_fact_at,
            "last_fact_id": heads[s.customer_id].last_fact_id,
            "next_seq": heads[s.customer_id].next_seq,
        }
        for s in states
    ]
    await upsert(conn, customer_stages, rows, key=["customer_id"])


async def delete_states(conn: AsyncConnection, ids: Sequence[str]) -> None:
    if ids:
        await conn.execute(customer_stages.delete().where(customer_stages.c.customer_id.in_(ids)))


async def due(conn: AsyncConnection, now: datetime, *, limit: int) -> list[str]:
    """Customers whose next silence transition is due, or who have a fact the clock reached
    (indexes on the times, no scan)."""
    found = list((await conn.execute(_DUE, {"now": now, "limit": limit})).scalars())
    woken = (await conn.execute(_WOKEN, {"now": now, "limit": limit})).scalars()
    return list(dict.fromkeys([*found, *woken]))


async def set_wakeups(
    conn: AsyncConnection, at: dict[str, datetime], cleared: Iterable[str]
) -> None:
    """Wake these customers at these times; the `cleared` ones have nothing waiting."""
    for chunk in _chunks(sorted(set(cleared) - at.keys())):
        await conn.execute(_UNWAKE, {"ids": chunk})
    rows = [{"customer_id": c, "at": t} for c, t in at.items()]
    await upsert(conn, wakeups, rows, key=["customer_id"])


async def event_clock(conn: AsyncConnection) -> datetime | None:
    return await clock_value(conn, clock, EVENT_TIME)


async def advance_event_clock(conn: AsyncConnection, to: datetime) -> datetime:
    """The event-time clock moves forward only; return where it stands."""
    return await advance_clock(conn, clock, EVENT_TIME, to)


# Built once: building a select and its cache key cost more than running it.
_STATE = select(customer_stages).where(customer_stages.c.customer_id == bindparam("customer_id"))


async def state_of(db: Database, customer_id: str) -> dict[str, Any] | None:
    """The customer's row of the stage projection (one statement, by key)."""
    row = await db.fetch_one(_STATE, {"customer_id": customer_id})
    return dict(row) if row else None


async def history_of(
    conn: AsyncConnection, customer_id: str, *, include_superseded: bool = False
) -> list[dict[str, Any]]:
    query = select(stage_transitions).where(stage_transitions.c.customer_id == customer_id)
    if not include_superseded:
        query = query.where(stage_transitions.c.superseded.is_(False))
    query = query.order_by(stage_transitions.c.id)
    return [dict(row._mapping) for row in await conn.execute(query)]


def _last_as_of(as_of: datetime) -> Any:
    """Each customer's last transition that had happened by `as_of` (its seq)."""
    t = stage_transitions.c
    return (
        select(t.customer_id, func.max(t.seq).label("seq"))
        .where(t.superseded.is_(False), t.occurred_at <= as_of)
        .group_by(t.customer_id)
        .subquery()
    )


async def stage_as_of(
    conn: AsyncConnection, customer_id: str, as_of: datetime
) -> dict[str, Any] | None:
    t = stage_transitions.c
    query = (
        select(stage_transitions)
        .where(t.customer_id == customer_id, t.superseded.is_(False), t.occurred_at <= as_of)
        .order_by(t.seq.desc())
        .limit(1)
    )
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def stage_counts(conn: AsyncConnection, as_of: datetime | None) -> dict[str, int]:
    if as_of is None:
        query = select(customer_stages.c.stage, func.count()).group_by(customer_stages.c.stage)
    else:
        last = _last_as_of(as_of)
        t = stage_transitions.c
        joined = stage_transitions.join(
            last, and_(t.customer_id == last.c.customer_id, t.seq == last.c.seq)
        )
        query = (
            select(t.to_stage, func.count())
            .select_from(joined)
            .where(t.superseded.is_(False))
            .group_by(t.to_stage)
        )
    return {row[0]: int(row[1]) for row in await conn.execute(query)}


def _chunks(items: list[Any], size: int = 1000) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
