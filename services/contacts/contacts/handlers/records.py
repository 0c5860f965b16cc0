"""Use cases on contact records: each one transaction of load, decide, append, project, publish.

Record events are published on `crm.customer-events` keyed by the contact id (the
survivor's, for merges), so downstream services see consent changes and merges in order
with the customer's other events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from contacts.domain import contact as domain
from contacts.domain.contact import Contact, DomainError
from contacts.store import records
from contacts.store.records import Erasure
from contacts.store.vault import Vault
from crm_shared import ids
from crm_shared.events import CloudEvent, EventData, EventRegistry, new_event, type_name_of
from crm_shared.events.catalog import ContactMerged
from crm_shared.messaging.topics import CUSTOMER_EVENTS
from crm_shared.store.db import Database
from crm_shared.store.eventstore import EventStore
from crm_shared.store.outbox import Outbox, OutgoingMessage

SOURCE = "crm/contacts"


class NotFound(Exception):
    def __init__(self, contact_id: str) -> None:
        super().__init__(f"no contact {contact_id!r}")
        self.contact_id = contact_id


class PreconditionFailed(Exception):
    """The client's If-Match names a version that is not the current one."""

    def __init__(self, contact_id: str, expected: str, actual: int) -> None:
        super().__init__(f"contact {contact_id!r} is at version {actual}, not {expected}")
        self.actual = actual


@dataclass(frozen=True)
class NewContact:
    contact_id: str
    profile: dict[str, Any]
    external_ids: list[str]
    # When the customer became known, if before now: the time of the event that named them
    # (a prospect created by ingestion). It is the time of the published contact.created.
    known_since: datetime | None = None


@dataclass
class Unwritten:
    """Events to append (stream, event), contacts created and messages to publish, at one
    time (`now`: when they are recorded, and the created contacts' dates), collected so
    that a unit of work writes them in one statement each (ingestion: new contacts'
    events with the events that named them)."""

    now: datetime
    events: list[tuple[str, CloudEvent]] = field(default_factory=list)
    created: list[Contact] = field(default_factory=list)
    messages: list[OutgoingMessage] = field(default_factory=list)

    async def write(self, conn: AsyncConnection, store: EventStore, outbox: Outbox) -> None:
        """Write what was collected, in the order collected, and forget it. The events go
        first: a contact created meanwhile by another transaction is a ConcurrencyError on
        its stream, which callers retry."""
        events, created, messages = self.events, self.created, self.messages
        self.events, self.created, self.messages = [], [], []
        new = {
            s for c in created for s in (records.record_stream(c.id), records.timeline_stream(c.id))
        }
        await store.append_many(conn, events, now=self.now, new_streams=new)
        await records.save(conn, created, created=True)
        await outbox.add(conn, messages, self.now)


@dataclass(frozen=True)
class Change:
    contact_id: str
    data: EventData


class ContactService:
    def __init__(
        self,
        db: Database,
        store: EventStore,
        outbox: Outbox,
        registry: EventRegistry,
        clock: Callable[[], datetime],
        *,
        new_id: Callable[[], str] | None = None,
        wake: Callable[[], None] = lambda: None,
        vault: Vault,
    ) -> None:
        self.db, self.store, self.outbox, self.registry = db, store, outbox, registry
        self.vault = vault
        self.clock = clock
        self.new_id = new_id or ids.new_id
        self.wake = wake

    async def get(self, contact_id: str, *, as_of: datetime | None = None) -> Contact:
        if as_of is None:
            state = await records.lookup(self.db, contact_id)
        else:
            async with self.db.read() as conn:
                state = await records.load(conn, self.store, self.registry, contact_id, as_of=as_of)
        if state is None:
            raise NotFound(contact_id)
        return state

    async def create(
        self,
        conn: AsyncConnection,
        profile: dict[str, Any],
        *,
        external_ids: list[str],
        origin: str = "api",
        actor: str | None = None,
        contact_id: str | None = None,
    ) -> Contact:
        """Create a contact inside the caller's transaction."""
        item = NewContact(contact_id or self.new_id(), profile, external_ids)
        return (await self.create_many(conn, [item], origin=origin, actor=actor))[0]

    async def create_many(
        self,
        conn: AsyncConnection,
        items: Sequence[NewContact],
        *,
        origin: str,
        actor: str | None,
        unwritten: Unwritten | None = None,
    ) -> list[Contact]:
        """Create contacts in a few statements, whatever their number (ingestion, imports).
        With `unwritten`, their events and messages are added to it, for the caller to
        write with its own (`Unwritten.write`), rather than written here."""
        if not items:
            return []
        now = unwritten.now if unwritten is not None else self.clock()
        events = [
            domain.create(
                i.contact_id, i.profile, origin=origin, external_ids=i.external_ids, actor=actor
            )
            for i in items
        ]
        envelopes = [
            self._envelope(e, e.contact_id, min(i.known_since or now, now))
            for i, e in zip(items, events, strict=True)
        ]
        self.vault.created(conn, [i.contact_id for i in items])
        collect = unwritten if unwritten is not None else Unwritten(now)
        for e, env in zip(events, envelopes, strict=True):
            collect.events.append((records.record_stream(e.contact_id), env))
            collect.messages.append(OutgoingMessage(CUSTOMER_EVENTS, e.contact_id, env))
        states = [domain.fold(None, e, now, e.contact_id) for e in events]
        collect.created += states
        if unwritten is None:
            await collect.write(conn, self.store, self.outbox)
        return states

    async def update(
        self, contact_id: str, patch: dict[str, Any], *, if_match: str | None, actor: str | None
    ) -> Contact:
        async with self.db.transaction() as conn:
            state = await self._current(conn, contact_id, if_match)
            state = await self.update_in(conn, state, patch, actor=actor)
        self.wake()
        return state

    async def update_in(
        self, conn: AsyncConnection, state: Contact, patch: dict[str, Any], *, actor: str | None
    ) -> Contact:
        """Apply a merge patch to `state`, as read in the caller's transaction; the new state.
        Appending at the version read makes a change made meanwhile a ConcurrencyError."""
        events = domain.update(state, patch, actor=actor)
        result = await self.apply(
            conn, [Change(state.id, e) for e in events], {state.id: state}, key=state.id
        )
        return result.get(state.id, state)

    async def change_consent(
        self,
        contact_id: str,
        channel: str,
        status: str,
        *,
        source: str,
        at: datetime | None,
        if_match: str | None,
    ) -> Contact:
        async with self.db.transaction() as conn:
            state = await self._current(conn, contact_id, if_match)
            result = await self.change_consent_in(
                conn, state, channel, status, source=source, at=at
            )
        self.wake()
        return result.get(contact_id, state)

    async def change_consent_in(
        self,
        conn: AsyncConnection,
        state: Contact,
        channel: str,
        status: str,
        *,
        source: str,
        at: datetime | None,
    ) -> dict[str, Contact]:
        """Record a consent change inside the caller's transaction."""
        event = domain.change_consent(state, channel, status, source=source, at=at or self.clock())
        changes = [Change(state.id, event)] if event else []
        return await self.apply(conn, changes, {state.id: state}, key=state.id)

    async def merge(
        self,
        survivor_id: str,
        other_ids: Sequence[str],
        choices: dict[str, str],
        *,
        if_match: str | None,
        actor: str | None,
    ) -> Contact:
        async with self.db.transaction() as conn:
            survivor = await self._current(conn, survivor_id, if_match)
            others = [await self._current(conn, i, None) for i in dict.fromkeys(other_ids)]
            event = domain.merge(survivor, others, choices, actor=actor)
            known = {c.id: c for c in [survivor, *others]}
            changes = [Change(i, event) for i in known]
            result = await self.apply(conn, changes, known, key=survivor_id)
        self.wake()
        return result[survivor_id]

    async def unmerge(self, survivor_id: str, restored_id: str, *, actor: str | None) -> Contact:
        async with self.db.transaction() as conn:
            survivor = await self._current(conn, survivor_id, None)
            restored = await self._current(conn, restored_id, None)
            merge_event = await self._merge_of(conn, restored_id)
            before = await self._before_merge(conn, survivor_id, restored_id)
            event = domain.unmerge(
                survivor, restored, merge_event, actor=actor, survivor_before=before
            )
            known = {survivor_id: survivor, restored_id: restored}
            result = await self.apply(
                conn, [Change(i, event) for i in known], known, key=survivor_id
            )
        self.wake()
        return result[survivor_id]

    async def erase(self, contact_id: str, *, actor: str | None) -> Erasure:
        """Crypto-shred the contact and the contacts merged into it: publish the erasure,
        destroy their keys, empty their read-model rows. Repeating it changes nothing."""
        async with self.db.transaction() as conn:
            state = await self._current(conn, contact_id, None)
            if state.status == "erased":
                erased = await records.erasure_of(conn, contact_id)
                if erased is not None:
                    return erased
            ids = await records.absorbed(conn, contact_id)
            event = domain.erase(state, ids, actor=actor)
            known = {i: await self._current(conn, i, None) for i in ids}
            await self.apply(conn, [Change(i, event) for i in ids], known, key=contact_id)
            identifiers = {i: state.identifiers for i, state in known.items()}
            await self.vault.destroy(conn, ids, erased_with=contact_id, identifiers=identifiers)
            await records.forget(conn, ids)
            erased = await records.erasure_of(conn, contact_id)
        self.wake()
        assert erased is not None
        return erased

    async def apply(
        self,
        conn: AsyncConnection,
        changes: Sequence[Change],
        states: dict[str, Contact],
        *,
        key: str,
    ) -> dict[str, Contact]:
        """Append each change to its contact's stream at the version read, fold it into the
        read model, and publish each distinct event once, keyed by `key`."""
        if not changes:
            return {}
        now = self.clock()
        published: dict[int, str] = {}
        result: dict[str, Contact] = {}
        for change in changes:
            state = result.get(change.contact_id, states.get(change.contact_id))
            envelope = self._envelope(change.data, change.contact_id, now)
            expected = state.version if state else 0
            await self.store.append(
                conn,
                records.record_stream(change.contact_id),
                [envelope],
                expected_version=expected,
                now=now,
            )
            result[change.contact_id] = domain.fold(state, change.data, now, change.contact_id)
            if id(change.data) not in published:
                published[id(change.data)] = envelope.id
                await self.outbox.add(conn, [OutgoingMessage(CUSTOMER_EVENTS, key, envelope)], now)
        await records.save(conn, list(result.values()))
        return result

    def _envelope(self, data: EventData, contact_id: str, now: datetime) -> CloudEvent:
        return new_event(
            type=type_name_of(type(data)),
            source=SOURCE,
            subject=contact_id,
            time=now,
            data=data.model_dump(mode="json"),
        )

    async def _current(
        self, conn: AsyncConnection, contact_id: str, if_match: str | None
    ) -> Contact:
        state = await records.current(conn, contact_id)
        if state is None:
            raise NotFound(contact_id)
        if if_match is not None and if_match not in {etag(state), "*"}:
            raise PreconditionFailed(contact_id, if_match, state.version)
        return state

    async def _before_merge(
        self, conn: AsyncConnection, survivor_id: str, merged_id: str
    ) -> Contact | None:
        """The survivor as it was just before its last merge of `merged_id`."""
        stream = await self.store.read_stream(conn, records.record_stream(survivor_id))
        folded = [records.payload(self.registry, r) for r in stream]
        last = max(
            (
                i
                for i, data in enumerate(folded)
                if isinstance(data, ContactMerged) and merged_id in data.merged_ids
            ),
            default=None,
        )
        if last is None:
            return None
        state = None
        for recorded, data in zip(stream[:last], folded[:last], strict=True):
            state = domain.fold(state, data, recorded.recorded_at, survivor_id)
        return state

    async def _merge_of(self, conn: AsyncConnection, contact_id: str) -> ContactMerged:
        stream = await self.store.read_stream(conn, records.record_stream(contact_id))
        for recorded in reversed(stream):
            data = records.payload(self.registry, recorded)
            if isinstance(data, ContactMerged) and contact_id in data.merged_ids:
                return data
        raise DomainError(f"contact {contact_id} has not been merged", field="contact_id")


def etag(state: Contact) -> str:
    """The entity tag of a contact: its record stream's version."""
    return f'"{state.version}"'


async def history(service: ContactService, contact_id: str) -> list[dict[str, Any]]:
    """Every change of the record: when, what event, who, and each field's old and new value."""
    async with service.db.read() as conn:
        stream = await service.store.read_stream(conn, records.record_stream(contact_id))
    if not stream:
        raise NotFound(contact_id)
    entries, state = [], None
    for recorded in stream:
        data = records.payload(service.registry, recorded)
        after = domain.fold(state, data, recorded.recorded_at, contact_id)
        entries.append(
            {
                "version": after.version,
                "at": recorded.recorded_at,
                "type": recorded.envelope.type,
                "event_id": recorded.envelope.id,
                "actor": getattr(data, "actor", None),
                "changes": _diff(state, after),
            }
        )
        state = after
    return entries


def _diff(before: Contact | None, after: Contact) -> list[dict[str, Any]]:
    old = _flat(before) if before else {}
    new = _flat(after)
    return [
        {"field": k, "from": old.get(k), "to": new.get(k)}
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def _flat(state: Contact) -> dict[str, Any]:
    flat: dict[str, Any] = {k: v for k, v in state.profile.items() if v not in (None, [], {})}
    flat.update({f"consent.{ch}": c["status"] for ch, c in state.consent.items()})
    flat.update(
        status=state.status,
        merged_into=state.merged_into,
        external_ids=list(state.external_ids) or None,
    )
    return {k: v for k, v in flat.items() if v is not None}
