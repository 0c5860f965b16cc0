"""Lifecycle continues a customer's fold from the stored state when their new events come in
order, and replays the whole history otherwise. Whichever it does, after every batch the
published (not superseded) history and the stored state must be exactly what a replay of
every stored fact gives: checked here over random streams with late, repeated, future-dated
and cancelling events, merges, erasures and silences, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from crm_shared.app.runtime import Runtime
from crm_shared.events import CATALOG, CloudEvent, Event, EventData
from lifecycle.bootstrap import create_app
from lifecycle.domain.stages import replay
from lifecycle.handlers.customer_events import Lifecycle
from lifecycle.settings import LifecycleSettings
from lifecycle.store import stages
from lifecycle.store.tables import customer_stages

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CUSTOMERS = [f"c{n}" for n in range(12)]


def event(kind: str, customer: str, at: datetime, event_id: str) -> Event[EventData]:
    types: dict[str, tuple[str, dict[str, Any]]] = {
        "purchase": (
            "crm.purchase.completed.v1",
            {"order_id": event_id, "amount": "10.00", "currency": "EUR"},
        ),
        "login": ("crm.session.started.v1", {"channel": "web"}),
        "cancel": ("crm.subscription.cancelled.v1", {"subscription_id": "s1"}),
        "erase": ("crm.contact.erased.v1", {"contact_id": customer, "erased_ids": [customer]}),
        "merge": (
            "crm.contact.merged.v1",
            {
                "survivor_id": customer,
                "merged_ids": [CUSTOMERS[(CUSTOMERS.index(customer) + 1) % len(CUSTOMERS)]],
            },
        ),
    }
    type_, data = types[kind]
    return CATALOG.validate(
        CloudEvent.model_validate(
            {
                "specversion": "1.0",
                "id": event_id,
                "source": "test/fold",
                "type": type_,
                "subject": customer,
                "time": at.isoformat(),
                "data": data,
            }
        )
    )


def stream(seed: int, batches: int) -> list[list[Event[EventData]]]:
    """Mostly in-order purchases and logins; now and then a late one, a repeat, one dated
    after everything so far, a cancellation, a merge, an erasure."""
    rng = random.Random(seed)
    clock = T0
    last = dict.fromkeys(CUSTOMERS, T0)
    sent: list[Event[EventData]] = []
    out: list[list[Event[EventData]]] = []
    for b in range(batches):
        batch: list[Event[EventData]] = []
        for n in range(rng.randint(1, 25)):
            clock += timedelta(hours=rng.choice([1, 6, 24, 24 * 7, 24 * 45]))
            customer = rng.choice(CUSTOMERS)
            roll = rng.random()
            at = clock
            kind = "purchase" if rng.random() < 0.7 else "login"
            if roll < 0.04:
                at = clock - timedelta(days=rng.randint(1, 200))  # late
            elif roll < 0.08:  # late, but after the customer's own last event
                at = last[customer] + (clock - last[customer]) * rng.random()
            elif roll < 0.12 and sent:
                batch.append(rng.choice(sent))  # redelivered
                continue
            elif roll < 0.14:
                at = clock + timedelta(days=rng.randint(1, 30))  # ahead of the others
            elif roll < 0.16:
                kind = "cancel"
            elif roll < 0.17:
                kind = "merge"
            elif roll < 0.175:
                kind = "erase"
            last[customer] = max(last[customer], at)
            e = event(kind, customer, at, f"e{seed}-{b}-{n}")
            batch.append(e)
            sent.append(e)
        out.append(batch)
    return out


@pytest_asyncio.fixture(loop_scope="session", params=["event-time", "wall"])
async def app(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[FastAPI]:
    app = create_app(LifecycleSettings(database_url=database_url, clock=request.param))
    runtime: Runtime = app.state.runtime
    await runtime.migrate()
    try:
        yield app
    finally:
        await runtime.db.dispose()


async def check_against_replay(app: FastAPI, now: datetime) -> None:
    runtime: Runtime = app.state.runtime
    lifecycle: Lifecycle = app.state.lifecycle
    async with runtime.db.read() as conn:
        facts = await stages.facts_of(conn, CUSTOMERS, lifecycle.policy)
        published = await stages.active_transitions(conn, CUSTOMERS)
        rows = {r.customer_id: r for r in await conn.execute(select(customer_stages))}
    for customer in CUSTOMERS:
        state, history = replay(facts.get(customer, []), lifecycle.policy, now)
        got = [
            tuple(
                r[k]
                for k in ("seq", "from_stage", "to_stage", "reason", "caused_by", "occurred_at")
            )
            for r in published.get(customer, [])
        ]
        want = [
            (seq, t.from_stage, t.to_stage, t.reason, t.caused_by, t.occurred_at)
            for seq, t in enumerate(history)
        ]
        assert got == want, customer
        if state is None:
            assert customer not in rows
            continue
        row = rows[customer]
        assert (row.stage, row.stage_since, row.purchases, row.next_due, row.erased) == (
            state.stage,
            state.stage_since,
            state.purchases,
            state.next_due,
            state.erased,
        ), customer
        assert row.next_seq == len(history)


@pytest.mark.parametrize("seed", range(4))
async def test_continuing_the_fold_gives_what_a_replay_gives(app: FastAPI, seed: int) -> None:
    runtime: Runtime = app.state.runtime
    lifecycle: Lifecycle = app.state.lifecycle
    rng = random.Random(seed)
    wall = T0
    lifecycle.wall = lambda: wall  # the wall clock trails the events, by up to 60 days
    continued = replayed = 0
    for batch in stream(seed, batches=50):
        latest = max(e.time for e in batch)
        wall = max(wall, latest - timedelta(days=rng.randint(0, 60)))
        async with runtime.db.transaction() as conn:
            done = await lifecycle.apply(conn, batch)
            if lifecycle.clock == "wall":  # the sweeper's round
                await lifecycle.sweep(conn)
            now = await stages.event_clock(conn) if lifecycle.clock == "event-time" else wall
        assert now is not None
        continued += done.continued
        replayed += done.replayed
        await check_against_replay(app, now)
    # Both paths ran; with the event-time clock continuing is the common one (the trailing
    # wall clock leaves many facts ahead of it, and those customers replay).
    assert continued > 0 and replayed > 0
    if lifecycle.clock == "event-time":
        assert continued > replayed
