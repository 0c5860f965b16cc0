"""Rebuild the projection from the facts it keeps, and evaluate another policy over them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store.db import Database
from lifecycle.domain.policy import Policy
from lifecycle.domain.stages import STAGES, replay
from lifecycle.handlers.customer_events import Lifecycle
from lifecycle.store import stages
from lifecycle.store.tables import customer_stages

CHUNK = 1000


async def current_now(lifecycle: Lifecycle, conn: AsyncConnection) -> datetime:
    if lifecycle.clock == "wall":
        return lifecycle.wall()
    return await stages.event_clock(conn) or lifecycle.wall()


async def rebuild(db: Database, lifecycle: Lifecycle) -> dict[str, Any]:
    """Drop the stages and replay every customer's facts: the result is the state
    incremental processing reaches. The transitions consumers were told stay, and the
    replayed history is compared with them as incremental processing does: what still
    holds keeps its id and is not published again; what differs (a bug fixed, another
    policy) is published as corrections of what it replaces, which consumers can follow."""
    async with db.transaction() as conn:
        now = await current_now(lifecycle, conn)
        await conn.execute(delete(customer_stages))
        ids = await stages.all_customer_ids(conn)
        transitions = 0
        for start in range(0, len(ids), CHUNK):
            done = await lifecycle.recompute(conn, ids[start : start + CHUNK], now)
            transitions += done.published
    return {
        "customers": len(ids),
        "transitions": transitions,
        "as_of": now,
        "policy_version": lifecycle.policy.version,
    }


async def what_if(
    db: Database, lifecycle: Lifecycle, policy: Policy, *, examples: int = 100
) -> dict[str, Any]:
    """Who would end in another stage under `policy`, and how the counts would change.
    Nothing is written or published."""
    async with db.read() as conn:
        now = await current_now(lifecycle, conn)
        current = {
            r.customer_id: r.stage
            for r in await conn.execute(
                select(customer_stages.c.customer_id, customer_stages.c.stage)
            )
        }
        ids = await stages.all_customer_ids(conn)
        alternative: dict[str, str] = {}
        for start in range(0, len(ids), CHUNK):
            facts = await stages.facts_of(conn, ids[start : start + CHUNK], policy)
            for customer_id, history in facts.items():
                state, _ = replay(history, policy, now)
                if state is not None:
                    alternative[customer_id] = state.stage
    changed = sorted(c for c in alternative if alternative[c] != current.get(c))
    before, after = Counter(current.values()), Counter(alternative.values())
    return {
        "as_of": now,
        "current_policy": lifecycle.policy.version,
        "policy": policy.version,
        "counts": {
            s: {"current": before[s], "what_if": after[s], "change": after[s] - before[s]}
            for s in STAGES
        },
        "changed": len(changed),
        "examples": [
            {"customer_id": c, "current": current.get(c), "what_if": alternative[c]}
            for c in changed[:examples]
        ],
    }
