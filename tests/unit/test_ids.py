"""Identifiers the system creates are UUIDv7: valid, unique, and ordered by creation time,
so that inserting them appends to the right-hand end of an index (see `crm_shared.ids`)."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

import pytest

from crm_shared import ids
from crm_shared.events import new_event
from crm_shared.ids import new_id, uuid7


def test_an_id_is_a_version_7_rfc_9562_uuid_holding_its_creation_time() -> None:
    made = datetime(2026, 11, 24, 1, 2, 3, 456789, tzinfo=UTC)
    ns = int(made.timestamp()) * 1_000_000_000 + made.microsecond * 1000
    value = uuid7(ns)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == ns // 1_000_000  # the Unix time in milliseconds
    sub_ms = (value.int >> 64) & 0xFFF
    assert sub_ms == (ns % 1_000_000) * 4096 // 1_000_000  # the rest, in 1/4096 ms


def test_ids_sort_in_the_order_they_were_made_as_text_and_as_numbers() -> None:
    made = [new_id() for _ in range(5000)]
    assert len(set(made)) == len(made)
    assert sorted(made) == made
    assert sorted(made, key=lambda text: uuid.UUID(text).int) == made
    later = new_id()
    time.sleep(0.002)
    assert new_id() > later


def test_ids_keep_their_order_when_the_clock_stands_still_or_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A coarse clock or a clock set back (NTP) must not reorder one process's ids."""
    ticks = iter([5_000_000_000, 5_000_000_000, 5_000_000_000, 4_000_000_000, 5_000_000_001])
    monkeypatch.setattr(ids, "_last_steps", 0)
    monkeypatch.setattr(ids, "_clock", lambda: next(ticks))
    made = [uuid7() for _ in range(5)]
    steps = [value.int >> 64 & ~(0xF << 12) for value in made]  # time bits, version removed
    assert steps == sorted(steps) and len(set(steps)) == 5
    assert made[0].int >> 80 == 5_000  # milliseconds of the first clock reading
    assert sorted(str(value) for value in made) == [str(value) for value in made]


def test_ids_of_one_instant_differ_in_their_random_bits() -> None:
    ns = 1_795_000_000_123_456_789
    same_instant = {uuid7(ns) for _ in range(1000)}
    assert len(same_instant) == 1000
    assert {value.int >> 62 for value in same_instant} == {uuid7(ns).int >> 62}


def test_events_the_system_emits_get_such_ids() -> None:
    first = new_event(type="t.v1", source="s", subject="c", data={}, time=datetime.now(UTC))
    second = new_event(type="t.v1", source="s", subject="c", data={}, time=datetime.now(UTC))
    assert uuid.UUID(first.id).version == 7
    assert first.id < second.id


def test_an_id_is_the_canonical_text_of_its_uuid() -> None:
    for text in (new_id() for _ in range(1000)):
        assert str(uuid.UUID(text)) == text
        assert uuid.UUID(text).version == 7 and uuid.UUID(text).variant == uuid.RFC_4122


def test_a_forked_process_does_not_repeat_its_parents_random_bits() -> None:
    """The random bits are drawn ahead, in a pool: a child made by fork (a worker process)
    must not take the same ones as its parent."""
    ns = 1_795_000_000_123_456_789
    uuid7(ns)  # the pool is filled, with more left in it
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, uuid7(ns).int.to_bytes(16, "big"))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        theirs = int.from_bytes(pipe.read(16), "big")
    os.waitpid(child, 0)
    ours = uuid7(ns).int
    assert theirs >> 62 == ours >> 62  # the same instant
    assert theirs != ours
