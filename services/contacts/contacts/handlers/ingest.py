"""Event ingestion: validate, de-duplicate, append to the customer's timeline, publish.

HTTP batches and `crm.inbound` batches take the same path: one transaction appends the
accepted events to their customers' streams and writes their canonical copies to the
outbox for `crm.customer-events`.

Identity: the CloudEvents `subject` is taken as the contact id as it stands; resolving
emails, phones and ids in other systems to contacts belongs to identity resolution.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.events import Event, EventData, EventRegistry, InvalidEvent, parse_envelope
from crm_shared.messaging.topics import CUSTOMER_EVENTS
from crm_shared.store.db import Database
from crm_shared.store.eventstore import ConcurrencyError, DuplicateEventError, EventStore
from crm_shared.store.outbox import Outbox, OutgoingMessage

Status = Literal["accepted", "duplicate", "rejected"]
ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Outcome:
    id: str | None
    status: Status
    reason: str | None = None
    field: str | None = None


def stream_of(customer_id: str) -> str:
    return f"contact-{customer_id}"


class Ingestor:
    def __init__(
        self,
        db: Database,
        store: EventStore,
        outbox: Outbox,
        registry: EventRegistry,
        clock: Callable[[], datetime],
        *,
        max_event_bytes: int,
    ) -> None:
        self._db, self._store, self._outbox, self._registry = db, store, outbox, registry
        self._clock = clock
        self._max_event_bytes = max_event_bytes

    def validate(self, raw: Any) -> Event[EventData]:
        """One decoded JSON value as a typed event, or InvalidEvent naming the field."""
        if self._max_event_bytes and len(json.dumps(raw, default=str)) > self._max_event_bytes:
            raise InvalidEvent(f"event larger than {self._max_event_bytes} bytes")
        return self._registry.validate(parse_envelope(raw))

    async def ingest(self, raw_events: Sequence[Any]) -> list[Outcome]:
        """Validate and store a batch from HTTP; one outcome per event, in order."""
        outcomes: list[Outcome | None] = []
        valid: list[tuple[int, Event[EventData]]] = []
        for index, raw in enumerate(raw_events):
            try:
                valid.append((index, self.validate(raw)))
                outcomes.append(None)
            except InvalidEvent as exc:
                outcomes.append(Outcome(_id_of(raw), "rejected", exc.reason, exc.field))
        statuses = await self._store_with_retry([event for _, event in valid])
        for (index, event), status in zip(valid, statuses, strict=True):
            outcomes[index] = Outcome(event.id, status)
        return [o for o in outcomes if o is not None]

    async def _store_with_retry(self, events: list[Event[EventData]]) -> list[Status]:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._db.transaction() as conn:
                    return await self.store(conn, events)
            except (DuplicateEventError, ConcurrencyError):
                # A concurrent request stored one of these ids first; look again.
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def store(
        self, conn: AsyncConnection, events: Sequence[Event[EventData]]
    ) -> list[Status]:
        """Append the events not stored yet; publish their canonical copies via the outbox."""
        known = await self._store.known_ids(conn, [e.id for e in events])
        statuses: list[Status] = []
        fresh: list[Event[EventData]] = []
        for event in events:
            if event.id in known:
                statuses.append("duplicate")
                continue
            known.add(event.id)
            fresh.append(event)
            statuses.append("accepted")
        now = self._clock()
        await self._store.append_many(
            conn, [(stream_of(e.subject), e.envelope) for e in fresh], now=now
        )
        await self._outbox.add(conn, [_canonical(e) for e in fresh], now)
        return statuses

    async def on_inbound(self, conn: AsyncConnection, events: list[Event[EventData]]) -> None:
        """Consumer handler for `crm.inbound`: invalid messages were dead-lettered already."""
        await self.store(conn, events)


def _canonical(event: Event[EventData]) -> OutgoingMessage:
    return OutgoingMessage(topic=CUSTOMER_EVENTS, key=event.subject, event=event.envelope)


def _id_of(raw: Any) -> str | None:
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None
