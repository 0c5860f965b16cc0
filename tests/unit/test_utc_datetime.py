"""`UtcDateTime` on SQLite writes exactly the text SQLAlchemy's DATETIME writes (rows written
before and after must compare and sort as text), and reads back the same aware instant."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import TypeAdapter
from sqlalchemy.dialects.sqlite import DATETIME
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from crm_shared.store.tables import UtcDateTime

DIALECT = SQLiteDialect_pysqlite()
VALUES = [
    datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
    datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=UTC),
    datetime(1997, 3, 1, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-7))),
    datetime(1, 1, 1, 0, 0, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
    datetime(2026, 6, 30, 0, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
]


@pytest.mark.parametrize("value", VALUES, ids=str)
def test_sqlite_text_is_what_sqlalchemy_datetime_writes(value: datetime) -> None:
    ours = UtcDateTime().bind_processor(DIALECT)
    theirs = DATETIME().bind_processor(DIALECT)  # type: ignore[no-untyped-call]
    assert ours is not None and theirs is not None
    assert ours(value) == theirs(value.astimezone(UTC).replace(tzinfo=None))
    read = DATETIME().result_processor(DIALECT, None)  # type: ignore[no-untyped-call]
    assert read is not None
    assert UtcDateTime().process_result_value(read(ours(value)), DIALECT) == value


def test_naive_timestamps_are_refused() -> None:
    process = UtcDateTime().bind_processor(DIALECT)
    assert process is not None
    assert process(None) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        process(datetime(2026, 1, 1))


def test_one_processor_fed_repeats_and_changes_writes_each_value_right() -> None:
    # It keeps the last value's text: repeats (one object, or equal ones), other offsets,
    # pydantic's own tzinfo and None in between must each still come out right.
    parsed = TypeAdapter(datetime).validate_json('"2026-03-01T10:00:00.25+02:00"')
    same = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    sequence = [same, same, None, same, parsed, parsed, *VALUES, *reversed(VALUES), same]
    ours = UtcDateTime().bind_processor(DIALECT)
    theirs = DATETIME().bind_processor(DIALECT)  # type: ignore[no-untyped-call]
    assert ours is not None and theirs is not None
    expected = [
        None if v is None else theirs(v.astimezone(UTC).replace(tzinfo=None)) for v in sequence
    ]
    assert [ours(v) for v in sequence] == expected
    with pytest.raises(ValueError, match="timezone-aware"):
        ours(same.replace(tzinfo=None))


@pytest.mark.parametrize("value", VALUES, ids=str)
def test_sqlite_reads_back_the_same_instant_in_utc(value: datetime) -> None:
    write = UtcDateTime().bind_processor(DIALECT)
    read = _reader()
    assert write is not None
    back = read(write(value))
    assert back == value and back.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Text another writer left (SQLite's own CURRENT_TIMESTAMP, a date): SQLAlchemy's
        # parse, still read as UTC.
        ("2026-01-01 12:00:00", datetime(2026, 1, 1, 12, 0, tzinfo=UTC)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01 12:00:00.5", datetime(2026, 1, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        (None, None),
    ],
)
def test_sqlite_reads_other_text_as_sqlalchemy_does(text: str | None, expected: object) -> None:
    read = _reader()
    theirs = DATETIME().result_processor(DIALECT, None)  # type: ignore[no-untyped-call]
    assert theirs is not None
    assert read(text) == expected
    if text is not None:
        parsed = theirs(text)
        assert parsed is not None and read(text) == parsed.replace(tzinfo=UTC)


def _reader() -> Callable[[object], datetime | None]:
    """The processor SQLAlchemy uses to read the column (the type adapted to the dialect)."""
    read = UtcDateTime().dialect_impl(DIALECT).result_processor(DIALECT, None)
    assert read is not None
    return read


def test_columns_share_the_text_of_an_instant_whatever_its_offset() -> None:
    # One instant in two time zones (pydantic's tzinfo and the stdlib's) is one UTC text,
    # through any column's processor, before and after the other has seen it.
    in_paris = TypeAdapter(datetime).validate_json('"2026-03-01T10:00:00.25+02:00"')
    in_utc = datetime(2026, 3, 1, 8, 0, 0, 250000, tzinfo=UTC)
    first, second = UtcDateTime().bind_processor(DIALECT), UtcDateTime().bind_processor(DIALECT)
    assert first is not None and second is not None
    assert first(in_paris) == second(in_utc) == second(in_paris) == "2026-03-01 08:00:00.250000"
    with pytest.raises(ValueError, match="timezone-aware"):
        second(in_utc.replace(tzinfo=None))  # equal to nothing aware: still refused


def test_many_instants_each_write_their_own_text() -> None:
    # More distinct instants than the shared texts keep: each still comes out right.
    process = UtcDateTime().bind_processor(DIALECT)
    theirs = DATETIME().bind_processor(DIALECT)  # type: ignore[no-untyped-call]
    assert process is not None and theirs is not None
    start = datetime(2026, 1, 1, tzinfo=UTC)
    values = [start + timedelta(milliseconds=7 * i) for i in range(10_000)]
    values += values[:100]  # again, after the texts were emptied
    assert [process(v) for v in values] == [theirs(v.replace(tzinfo=None)) for v in values]
