"""The tables every service has: its event store, its outbox and its inbox.

Each service owns its database and its SQLAlchemy MetaData; `CoreTables` adds these three
tables to it, so a service's migrations and queries see one schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect

# SQLite only auto-increments an INTEGER PRIMARY KEY (the row id); PostgreSQL wants BIGINT.
Position = BigInteger().with_variant(Integer(), "sqlite")


# The SQLite text of recently written instants, shared by every `UtcDateTime` column
# (see `UtcDateTime.bind_processor`); emptied when full.
_TEXTS: dict[datetime, str] = {}
_TEXTS_KEPT = 4096


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC timestamp on every database (SQLite stores it naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLite stores the text SQLAlchemy's DATETIME writes ("YYYY-MM-DD HH:MM:SS.ffffff");
        # made here from one `isoformat` instead of this decorator plus DATETIME's `%`
        # formatting of a dict per value, which were ~10% of lifecycle's CPU in bulk inserts.
        # One instant is written many times (a batch's `now` in every row; an event's time
        # as a fact's, a transition's, a stage's start), so the texts of recent instants are
        # kept for every column (`_TEXTS`, by equality: equal aware values are one instant,
        # one UTC text): a lookup costs 0.05 us, the formatting 1.2-1.6.

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            text = _TEXTS.get(value)
            if text is not None:
                return text
            if value.tzinfo is None:
                raise ValueError("timestamps must be timezone-aware")
            utc = value if value.tzinfo is UTC else value.astimezone(UTC)
            # "...+00:00" off the end; whole seconds come without a fraction.
            text = utc.isoformat(" ")[:-6]
            if len(text) == 19:
                text += ".000000"
            if len(_TEXTS) >= _TEXTS_KEPT:
                _TEXTS.clear()
            _TEXTS[value] = text
            return text

        return process

    def result_processor(
        self, dialect: Dialect, coltype: Any
    ) -> Callable[[Any], datetime | None] | None:
        fallback = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite":
            return fallback

        # The text `bind_processor` writes ("YYYY-MM-DD HH:MM:SS.ffffff", UTC): one
        # `fromisoformat` of it with the offset added makes the aware value, where DATETIME's
        # parse plus this decorator's `replace(tzinfo=UTC)` took 7x as long (0.97 against
        # 0.14 us; 2.8 million reads in the CDNOW replay). Any other value (text of another
        # length, not text) takes the general path.
        parse = datetime.fromisoformat

        def process(value: Any) -> datetime | None:
            if value is None:
                return None
            if type(value) is str and len(value) == 26:
                try:
                    return parse(value + "+00:00")
                except ValueError:
                    pass
            return fallback(value) if fallback is not None else value

        return process


@dataclass(frozen=True)
class CoreTables:
    """`events`, `outbox` and `inbox`, bound to one service's MetaData."""

    metadata: MetaData
    events: Table
    outbox: Table
    inbox: Table

    @classmethod
    def on(cls, metadata: MetaData) -> CoreTables:
        return cls(metadata, _events(metadata), _outbox(metadata), _inbox(metadata))


def _events(metadata: MetaData) -> Table:
    return Table(
        "events",
        metadata,
        Column("position", Position, primary_key=True, autoincrement=True),
        Column("stream_id", String(200), nullable=False),
        Column("version", Integer, nullable=False),
        Column("event_id", String(200), nullable=False),
        Column("type", String(200), nullable=False),
        Column("time", UtcDateTime(), nullable=False),
        Column("recorded_at", UtcDateTime(), nullable=False),
        Column("envelope", JSON, nullable=False),
        UniqueConstraint("stream_id", "version", name="uq_events_stream_version"),
        UniqueConstraint("event_id", name="uq_events_event_id"),
    )


def _outbox(metadata: MetaData) -> Table:
    table = Table(
        "outbox",
        metadata,
        Column("id", Position, primary_key=True, autoincrement=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(200), nullable=False),
        Column("event_id", String(200), nullable=False),
        Column("payload", Text, nullable=False),
        Column("headers", JSON, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("published_at", UtcDateTime(), nullable=True),
        # Set aside by the relay (a message no broker would take): not pending, not
        # published; `republish_from` makes it pending again.
        Column("parked_at", UtcDateTime(), nullable=True),
        Column("parked_reason", Text, nullable=True),
    )
    pending = table.c.published_at.is_(None)
    Index("ix_outbox_pending", table.c.id, postgresql_where=pending, sqlite_where=pending)
    parked = table.c.parked_at.is_not(None)  # counted every few seconds: rows are kept
    Index("ix_outbox_parked", table.c.id, postgresql_where=parked, sqlite_where=parked)
    return table


def _inbox(metadata: MetaData) -> Table:
    return Table(
        "inbox",
        metadata,
        Column("consumer", String(100), nullable=False),
        Column("event_id", String(200), nullable=False),
        Column("processed_at", UtcDateTime(), nullable=False),
        PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox"),
    )
