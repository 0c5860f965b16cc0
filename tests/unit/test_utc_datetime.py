"""`UtcDateTime` on SQLite writes exactly the text SQLAlchemy's DATETIME writes (rows written
before and after must compare and sort as text), and reads back the same aware instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
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
