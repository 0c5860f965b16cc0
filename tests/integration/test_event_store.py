"""Contract of the SQL event store, run on every configured database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from crm_shared.store.eventstore import (
    NO_STREAM,
    ConcurrencyError,
    DuplicateEventError,
    EventStore,
)
from tests.support.db import CoreDb
from tests.support.events import envelope

NOW = datetime(2026, 2, 1, tzinfo=UTC)


async def test_appended_events_read_back_in_stream_order(core: CoreDb) -> None:
    store = EventStore(core.tables)
    events = [envelope("c1", day=d) for d in range(3)]
    async with core.db.transaction() as conn:
        version = await store.append(conn, "s1", events, expected_version=NO_STREAM, now=NOW)
    async with core.db.read() as conn:
        read = await store.read_stream(conn, "s1")
    assert version == 3
    assert [r.version for r in read] == [1, 2, 3]
    assert [r.envelope.id for r in read] == [e.id for e in events]
    assert read[0].envelope == events[0]
    assert read[0].recorded_at == NOW and read[0].recorded_at.tzinfo is not None


async def test_an_append_with_a_stale_expected_version_is_refused_and_stores_nothing(
    core: CoreDb,
) -> None:
    store = EventStore(core.tables)
    async with core.db.transaction() as conn:
        await store.append(conn, "s1", [envelope()], expected_version=NO_STREAM, now=NOW)
    with pytest.raises(ConcurrencyError, match="expected version 0, actual 1"):
        async with core.db.transaction() as conn:
            await store.append(conn, "s1", [envelope()], expected_version=0, now=NOW)
    async with core.db.read() as conn:
        assert await store.version(conn, "s1") == 1


async def test_of_two_concurrent_writers_at_one_version_exactly_one_wins(core: CoreDb) -> None:
    store = EventStore(core.tables)

    async def write() -> str:
        try:
            async with core.db.transaction() as conn:
                await store.append(conn, "s1", [envelope()], expected_version=NO_STREAM, now=NOW)
                await asyncio.sleep(0.05)  # hold the transaction so the two overlap
            return "won"
        except ConcurrencyError:
            return "conflict"

    results = await asyncio.gather(*(write() for _ in range(5)))
    assert sorted(results) == ["conflict"] * 4 + ["won"]
    async with core.db.read() as conn:
        assert [r.version for r in await store.read_stream(conn, "s1")] == [1]


async def test_an_event_id_is_stored_once(core: CoreDb) -> None:
    store = EventStore(core.tables)
    event = envelope()
    async with core.db.transaction() as conn:
        await store.append(conn, "s1", [event], expected_version=None, now=NOW)
    with pytest.raises(DuplicateEventError):
        async with core.db.transaction() as conn:
            await store.append(conn, "s2", [event], expected_version=None, now=NOW)
    async with core.db.read() as conn:
        assert await store.known_ids(conn, [event.id, "other"]) == {event.id}
        assert await store.version(conn, "s2") == 0


async def test_read_all_pages_through_every_stream_in_global_order(core: CoreDb) -> None:
    store = EventStore(core.tables)
    batch = [(f"s{i % 3}", envelope(f"c{i}")) for i in range(7)]
    async with core.db.transaction() as conn:
        versions = await store.append_many(conn, batch, now=NOW)
    assert versions == [1, 1, 1, 2, 2, 2, 3]
    seen, after = [], 0
    async with core.db.read() as conn:
        while page := await store.read_all(conn, after=after, limit=3):
            seen += page
            after = page[-1].position
    assert [r.envelope.id for r in seen] == [e.id for _, e in batch]
    assert [r.position for r in seen] == sorted(r.position for r in seen)
