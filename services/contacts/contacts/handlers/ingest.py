"""Event ingestion: validate, de-duplicate, resolve the customer, append to their timeline,
publish the canonical copy.

HTTP batches and `crm.inbound` batches take the same path, in one transaction per batch:
the events' subjects are resolved to contacts (an unknown identifier creates a prospect
contact, or is rejected, as configured), the accepted events are appended to their
contacts' timelines, and their canonical copies (subject and Kafka key = contact id) are
written to the outbox for `crm.customer-events`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from contacts.domain.contact import DomainError
from contacts.domain.identity import parse_identifier, prospect_profile
from contacts.handlers.records import ContactService, NewContact, Unwritten
from contacts.store import records
from crm_shared import tracecontext
from crm_shared.events import CloudEvent, Event, EventData, EventRegistry, InvalidEvent
from crm_shared.events.catalog import ConsentChanged
from crm_shared.events.envelope import parse_envelope
from crm_shared.ids import new_id
from crm_shared.messaging.topics import CUSTOMER_EVENTS
from crm_shared.store.db import Database
from crm_shared.store.eventstore import ConcurrencyError, DuplicateEventError, EventStore
from crm_shared.store.group_commit import GroupCommit
from crm_shared.store.outbox import Outbox, OutgoingMessage

Status = Literal["accepted", "duplicate", "rejected"]
UnknownCustomers = Literal["create", "reject"]
ATTEMPTS = 3
IDENTITY_EXTENSION = "crmidentity"


@dataclass(frozen=True, slots=True)
class Outcome:
    id: str | None
    status: Status
    reason: str | None = None
    field: str | None = None
    contact_id: str | None = None


class Ingestor:
    def __init__(
        self,
        db: Database,
        store: EventStore,
        outbox: Outbox,
        registry: EventRegistry,
        contacts: ContactService,
        clock: Callable[[], datetime],
        *,
        max_event_bytes: int,
        unknown_customers: UnknownCustomers = "create",
    ) -> None:
        self._db, self._store, self._outbox, self._registry = db, store, outbox, registry
        self._contacts = contacts
        self._clock = clock
        self._max_event_bytes = max_event_bytes
        self._unknown = unknown_customers
        # Concurrent HTTP requests share transactions: one SQLite writer, many requests.
        self._group: GroupCommit[Event[EventData], Outcome] = GroupCommit(self._store_with_retry)

    def validate(self, raw: Any, *, check_size: bool = True) -> Event[EventData]:
        """One decoded JSON value as a typed event, or InvalidEvent naming the field; an
        event that carries no trace joins the current one (the HTTP request's)."""
        if check_size and len(json.dumps(raw, default=str)) > self._max_event_bytes:
            raise InvalidEvent(f"event larger than {self._max_event_bytes} bytes")
        envelope = parse_envelope(raw)
        if envelope.traceparent is None:
            envelope = envelope.with_trace(tracecontext.child_of_current())
        return self._registry.validate(envelope)

    async def ingest(
        self, raw_events: Sequence[Any], *, body_bytes: int | None = None
    ) -> list[Outcome]:
        """Validate and store a batch from HTTP; one outcome per event, in order."""
        # A body within the per-event limit cannot hold an event over it: skip re-encoding.
        check_size = body_bytes is None or body_bytes > self._max_event_bytes
        outcomes: list[Outcome | None] = []
        valid: list[tuple[int, Event[EventData]]] = []
        for index, raw in enumerate(raw_events):
            try:
                valid.append((index, self.validate(raw, check_size=check_size)))
                outcomes.append(None)
            except InvalidEvent as exc:
                outcomes.append(Outcome(_id_of(raw), "rejected", exc.reason, exc.field))
        stored = await self._group.submit([event for _, event in valid])
        for (index, _), outcome in zip(valid, stored, strict=True):
            outcomes[index] = outcome
        return [o for o in outcomes if o is not None]

    async def _store_with_retry(self, events: list[Event[EventData]]) -> list[Outcome]:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._db.transaction() as conn:
                    return await self.store(conn, events)
            except (DuplicateEventError, ConcurrencyError):
                # A concurrent request stored one of these ids or contacts first; look again.
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def store(
        self, conn: AsyncConnection, events: Sequence[Event[EventData]], *, publish: bool = True
    ) -> list[Outcome]:
        """Append what is new (and publish it unless told not to); an outcome per event."""
        known = await self._store.known_ids(conn, [e.id for e in events])
        outcomes: list[Outcome] = []
        fresh: list[tuple[int, Event[EventData], str]] = []
        for event in events:
            if event.id in known:
                outcomes.append(Outcome(event.id, "duplicate"))
                continue
            known.add(event.id)
            try:
                fresh.append((len(outcomes), event, parse_identifier(event.subject)))
                outcomes.append(Outcome(event.id, "accepted"))
            except ValueError as exc:
                outcomes.append(Outcome(event.id, "rejected", f"subject: {exc}", "subject"))
        # The prospects made for unknown identifiers are written with the events that named
        # them (one statement each for events, contacts and messages), unless a consent
        # change needs the contact stored before it.
        unwritten = Unwritten(self._clock())
        owners, created = await self._owners(conn, _first_times(fresh), unwritten)
        if any(isinstance(event.data, ConsentChanged) for _, event, _ in fresh):
            await unwritten.write(conn, self._store, self._outbox)
        # A contact created just now has its key (making it checked for an erasure).
        erased = await self._contacts.vault.erased(conn, set(owners.values()) - created)
        accepted = []
        for index, event, ident in fresh:
            owner = owners.get(ident)
            if owner is None:
                outcomes[index] = Outcome(
                    event.id, "rejected", _unknown_reason(event.subject), "subject"
                )
            elif owner in erased:
                reason = "subject: this contact was erased; nothing more is recorded about it"
                outcomes[index] = Outcome(event.id, "rejected", reason, "subject")
            elif isinstance(event.data, ConsentChanged):
                outcomes[index] = await self._consent(conn, event, owner)
                if outcomes[index].status == "accepted":
                    await self._append(conn, [_canonical(event, owner)], publish=False)
            else:
                outcomes[index] = Outcome(event.id, "accepted", contact_id=owner)
                accepted.append(_canonical(event, owner))
        await self._append(conn, accepted, publish=publish, unwritten=unwritten)
        return outcomes

    async def _consent(self, conn: AsyncConnection, event: Event[EventData], owner: str) -> Outcome:
        """A consent change sent by another system (an unsubscribe link, a preference
        centre) changes the contact's record; contacts then publishes it as its own."""
        assert isinstance(event.data, ConsentChanged)
        state = await records.current(conn, owner)
        if state is None:
            return Outcome(event.id, "rejected", "subject: no such contact", "subject")
        try:
            await self._contacts.change_consent_in(
                conn,
                state,
                event.data.channel,
                event.data.status,
                source=event.data.source,
                at=event.data.changed_at,
            )
        except DomainError as exc:
            return Outcome(event.id, "rejected", f"data.status: {exc.reason}", "data.status")
        return Outcome(event.id, "accepted", contact_id=owner)

    async def on_inbound(
        self, conn: AsyncConnection, events: list[Event[EventData]]
    ) -> dict[str, str]:
        """Consumer handler for `crm.inbound`; returns the rejected events' reasons, which
        the consumer sends to `crm.inbound.dlq`."""
        outcomes = await self.store(conn, events)
        return {o.id: o.reason or "rejected" for o in outcomes if o.status == "rejected" and o.id}

    async def on_outreach(
        self, conn: AsyncConnection, events: list[Event[EventData]]
    ) -> dict[str, str]:
        """Consumer handler for `crm.outreach`: outreach joins the customer's timeline; it is
        not published again (it is on Kafka already)."""
        outcomes = await self.store(conn, events, publish=False)
        return {o.id: o.reason or "rejected" for o in outcomes if o.status == "rejected" and o.id}

    async def _owners(
        self, conn: AsyncConnection, first_times: dict[str, datetime], unwritten: Unwritten
    ) -> tuple[dict[str, str], set[str]]:
        """Identifier -> the contact it belongs to today, creating prospects as configured
        (each dated by the first event that names it: `first_times`); and the contacts
        created."""
        idents = set(first_times)
        bare = {i for i in idents if i.startswith("id:")}
        owners = await records.resolve(conn, idents - bare)
        merged = await records.statuses(conn, {i.removeprefix("id:") for i in bare})
        for ident in bare:
            contact_id = ident.removeprefix("id:")
            if contact_id in merged:
                survivor = merged[contact_id] and await records.survivor_of(conn, contact_id)
                owners[ident] = survivor or contact_id
        missing = sorted(idents - set(owners))
        if missing and self._unknown == "create" and conn.dialect.name == "postgresql":
            # Two transactions (a POST and the inbound consumer, or two replicas) naming the
            # same unknown identifier would each make a prospect: the second waits for the
            # first to commit, then finds its prospect. SQLite has one writer at a time.
            await records.lock_identifiers(conn, missing)
            owners.update(await records.resolve(conn, missing))
            missing = sorted(idents - set(owners))
        # An erased contact's email, phone or external id names it still: refused below.
        owners.update(await self._contacts.vault.erased_identifiers(conn, missing))
        missing = sorted(idents - set(owners))
        if not missing or self._unknown != "create":
            return owners, set()
        created = await self._create_prospects(conn, missing, first_times, unwritten)
        owners.update(created)
        return owners, set(created.values())

    async def _create_prospects(
        self,
        conn: AsyncConnection,
        idents: list[str],
        first_times: dict[str, datetime],
        unwritten: Unwritten,
    ) -> dict[str, str]:
        """A prospect for each identifier, known since its first event: a replay of last
        year's events creates contacts of last year, so event-time clocks downstream stay
        in last year."""
        items = []
        for ident in idents:
            profile, external = prospect_profile(ident)
            contact_id = ident.removeprefix("id:") if ident.startswith("id:") else new_id()
            items.append(NewContact(contact_id, profile, external, first_times.get(ident)))
        created = await self._contacts.create_many(
            conn, items, origin="ingestion", actor=None, unwritten=unwritten
        )
        return {ident: state.id for ident, state in zip(idents, created, strict=True)}

    async def _append(
        self,
        conn: AsyncConnection,
        accepted: list[CloudEvent],
        *,
        publish: bool,
        unwritten: Unwritten | None = None,
    ) -> None:
        """Append to the customers' timelines (and publish), after what `unwritten` holds."""
        collect = unwritten if unwritten is not None else Unwritten(self._clock())
        collect.events += [(records.timeline_stream(e.subject or ""), e) for e in accepted]
        if publish:
            collect.messages += [
                OutgoingMessage(CUSTOMER_EVENTS, e.subject or "", e) for e in accepted
            ]
        await collect.write(conn, self._store, self._outbox)


def _canonical(event: Event[EventData], contact_id: str) -> CloudEvent:
    """The event as published: subject and key are the contact id; the identifier the
    sender used stays in the `crmidentity` extension."""
    if event.subject == contact_id:
        return event.envelope
    return event.envelope.model_copy(
        update={"subject": contact_id, IDENTITY_EXTENSION: event.subject}
    )


def _first_times(fresh: Sequence[tuple[int, Event[EventData], str]]) -> dict[str, datetime]:
    """Each identifier's earliest event time in the batch."""
    out: dict[str, datetime] = {}
    for _, event, ident in fresh:
        if ident not in out or event.time < out[ident]:
            out[ident] = event.time
    return out


def _unknown_reason(subject: str) -> str:
    return (
        f"subject: no contact is known by {subject!r} (unknown customers are rejected; "
        "create the contact first)"
    )


def _id_of(raw: Any) -> str | None:
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None
