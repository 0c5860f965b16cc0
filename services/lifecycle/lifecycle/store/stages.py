"""Reads and writes of the stage projection; whole batches in a few statements."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store.sql import upsert
from lifecycle.domain.stages import POLICY_VERSION, CustomerState, Transition
from lifecycle.store.tables import customer_stages, stage_transitions


async def load_states(
    conn: AsyncConnection, customer_ids: Iterable[str]
) -> dict[str, CustomerState]:
    ids = list(set(customer_ids))
    if not ids:
        return {}
    query = select(customer_stages).where(customer_stages.c.customer_id.in_(ids))
    return {row.customer_id: _state(row._mapping) for row in await conn.execute(query)}


async def load_state(conn: AsyncConnection, customer_id: str) -> CustomerState | None:
    return (await load_states(conn, [customer_id])).get(customer_id)


async def save(
    conn: AsyncConnection,
    states: Sequence[CustomerState],
    transitions: Sequence[Transition],
    now: datetime,
) -> None:
    await upsert(conn, customer_stages, [_row(s, now) for s in states], key=["customer_id"])
    if transitions:
        await conn.execute(
            insert(stage_transitions), [_transition_row(t, now) for t in transitions]
        )


async def transitions_of(conn: AsyncConnection, customer_id: str) -> list[dict[str, Any]]:
    query = (
        select(stage_transitions)
        .where(stage_transitions.c.customer_id == customer_id)
        .order_by(stage_transitions.c.id)
    )
    return [dict(row._mapping) for row in await conn.execute(query)]


def _state(m: Any) -> CustomerState:
    return CustomerState(
        m["customer_id"],
        m["stage"],
        m["stage_since"],
        m["purchases"],
        m["first_purchase_at"],
        m["last_purchase_at"],
    )


def _row(state: CustomerState, now: datetime) -> dict[str, Any]:
    return {
        "customer_id": state.customer_id,
        "stage": state.stage,
        "stage_since": state.stage_since,
        "purchases": state.purchases,
        "first_purchase_at": state.first_purchase_at,
        "last_purchase_at": state.last_purchase_at,
        "updated_at": now,
    }


def _transition_row(t: Transition, now: datetime) -> dict[str, Any]:
    return {
        "customer_id": t.customer_id,
        "from_stage": t.from_stage,
        "to_stage": t.to_stage,
        "reason": t.reason,
        "caused_by": t.caused_by,
        "occurred_at": t.occurred_at,
        "recorded_at": now,
        "policy_version": POLICY_VERSION,
    }
