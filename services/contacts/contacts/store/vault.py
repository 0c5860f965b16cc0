"""The contacts' data keys: personal data in every event contacts stores (event store and
outbox) is sealed with the key of the event's subject; erasing a contact destroys its key.

The vault is the codec of contacts' event store and outbox, so nothing personal reaches
the database in clear, and the relay's `prepare` hook opens messages just before they are
published. Keys are not cached across transactions: once a key row is deleted, no replica
can open that contact's data again.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, null, select, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter

from contacts.store.tables import contact_keys, erased_identifiers, erasures
from crm_shared import privacy
from crm_shared.events.envelope import CloudEvent
from crm_shared.store import jsontext
from crm_shared.store.db import Database
from crm_shared.store.outbox import PendingMessage

# Built once (every consumed batch seals and opens events): building a statement costs
# more than a small batch's lookup.
_IDS: BindParameter[list[str]] = bindparam("ids", expanding=True)
_KEYS = select(contact_keys.c.contact_id, contact_keys.c.key).where(
    contact_keys.c.contact_id.in_(_IDS)
)
# Keys and erasures in one statement: an erased contact has no key row.
_KEYS_OR_ERASED = union_all(
    _KEYS,
    select(erasures.c.contact_id, null().label("key")).where(erasures.c.contact_id.in_(_IDS)),
)
_ERASED = select(erasures.c.contact_id).where(erasures.c.contact_id.in_(_IDS))
_ERASED_IDENTIFIERS = select(erased_identifiers.c.digest, erased_identifiers.c.contact_id).where(
    erased_identifiers.c.digest.in_(bindparam("digests", expanding=True))
)
# A concurrent writer may make the same contact's key: keep whichever came first.
_INSERT_KEYS = {
    "postgresql": postgresql.insert(contact_keys).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(contact_keys).on_conflict_do_nothing(),
}
# An identifier two erased contacts had keeps the first.
_INSERT_ERASED = {
    "postgresql": postgresql.insert(erased_identifiers).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(erased_identifiers).on_conflict_do_nothing(),
}


class ErasedContact(Exception):
    """Personal data of an erased contact cannot be recorded again."""

    def __init__(self, contact_id: str) -> None:
        super().__init__(f"contact {contact_id!r} has been erased")
        self.contact_id = contact_id


@dataclass
class _InTransaction:
    keys: dict[str, bytes] = field(default_factory=dict)
    # Contacts created in this transaction: no key to look up, no erasure to check.
    created: set[str] = field(default_factory=set)
    # id(event) -> (the event, its sealed copy); the event is kept so its id is not reused
    sealed: dict[int, tuple[CloudEvent, CloudEvent]] = field(default_factory=dict)


class Vault:
    def __init__(
        self, db: Database, clock: Callable[[], datetime], *, erasure_secret: str = ""
    ) -> None:
        self._db = db
        self._clock = clock
        self._erasure_key = erasure_secret.encode()
        # The keys read or made in the current write transaction (which the cache holds, so
        # no later transaction can be taken for it): sealing a contact's creation and then
        # its outbox message looked the same key up twice. And the events sealed in it, by
        # identity: the event store and the outbox seal the same envelopes, and the AES and
        # the JSON around it were a tenth of contacts' CPU per POST.
        self._in_transaction: tuple[object, _InTransaction] | None = None

    def _current(self, conn: AsyncConnection) -> _InTransaction:
        """What this transaction has seen (a fresh, unkept one outside a transaction)."""
        sync = conn.sync_connection
        transaction = sync.get_transaction() if sync is not None else None
        if transaction is None or not transaction.is_active:
            return _InTransaction()
        if self._in_transaction is None or self._in_transaction[0] is not transaction:
            self._in_transaction = (transaction, _InTransaction())
        return self._in_transaction[1]

    async def keys(self, conn: AsyncConnection, ids: Iterable[str]) -> dict[str, bytes]:
        """The keys that still exist among these contact ids."""
        wanted = list(set(ids))
        if not wanted:
            return {}
        found = await conn.execute(_KEYS, {"ids": wanted})
        return {row.contact_id: bytes(row.key) for row in found}

    def created(self, conn: AsyncConnection, ids: Iterable[str]) -> None:
        """Tell the vault that these contacts are being created in this transaction: their
        keys are made without looking for one or for an erasure first. A contact that
        existed after all cannot be created again (its stream and row are taken), so that
        transaction fails as a whole, the key made for it included."""
        self._current(conn).created.update(ids)

    async def keys_creating(self, conn: AsyncConnection, ids: Iterable[str]) -> dict[str, bytes]:
        """The keys of these contacts, made for those that have none; refused for an
        erased contact (its data must not come back under a new key)."""
        asked = set(ids)
        current = self._current(conn)
        known = current.keys
        unknown = asked - set(known)
        looked_up = list(unknown - current.created)  # a created one has no key, no erasure
        found: dict[str, bytes] = {}
        if looked_up:
            for row in await conn.execute(_KEYS_OR_ERASED, {"ids": looked_up}):
                if row.key is None:
                    raise ErasedContact(row.contact_id)
                found[row.contact_id] = bytes(row.key)
        missing = sorted(unknown - set(found))
        if missing:
            made = {i: privacy.new_key() for i in missing}
            now = self._clock()
            rows = [{"contact_id": i, "key": key, "created_at": now} for i, key in made.items()]
            result = await conn.execute(_INSERT_KEYS[conn.dialect.name], rows)
            if result.rowcount == len(rows):  # every one went in: these are the keys
                found.update(made)
            else:
                found.update(await self.keys(conn, missing))
        known.update(found)
        return {i: known[i] for i in asked if i in known}

    async def erased(self, conn: AsyncConnection, ids: Iterable[str]) -> set[str]:
        wanted = list(set(ids))
        if not wanted:
            return set()
        return set((await conn.execute(_ERASED, {"ids": wanted})).scalars())

    def digest(self, identifier: str) -> str:
        """The keyed hash an erased identifier is kept as."""
        return hmac.new(self._erasure_key, identifier.encode(), hashlib.sha256).hexdigest()

    async def erased_identifiers(
        self, conn: AsyncConnection, identifiers: Iterable[str]
    ) -> dict[str, str]:
        """Which of these identifiers (subject form) an erased contact had -> that contact."""
        # A bare contact id is not on the list: an erased one has its row in `erasures`.
        digests = {self.digest(i): i for i in identifiers if not i.startswith("id:")}
        if not digests:
            return {}
        rows = await conn.execute(_ERASED_IDENTIFIERS, {"digests": list(digests)})
        return {digests[row.digest]: row.contact_id for row in rows}

    async def destroy(
        self,
        conn: AsyncConnection,
        ids: Sequence[str],
        *,
        erased_with: str,
        identifiers: dict[str, list[str]] | None = None,
    ) -> None:
        """Delete the keys of these contacts and remember that they were erased, and the
        identifiers they had (contact id -> identifiers) as keyed hashes only."""
        current = self._current(conn)
        current.sealed.clear()  # sealed with keys about to go
        for contact_id in ids:
            current.keys.pop(contact_id, None)
            current.created.discard(contact_id)  # erased now: looked up (and refused) again
        await conn.execute(delete(contact_keys).where(contact_keys.c.contact_id.in_(ids)))
        already = await self.erased(conn, ids)
        rows = [
            {"contact_id": i, "erased_with": erased_with, "erased_at": self._clock()}
            for i in ids
            if i not in already
        ]
        if rows:
            await conn.execute(insert(erasures), rows)
        hashed = {
            self.digest(i): contact_id
            for contact_id, idents in (identifiers or {}).items()
            for i in idents
        }
        if hashed:
            await conn.execute(
                _INSERT_ERASED[conn.dialect.name],
                [{"digest": d, "contact_id": c} for d, c in hashed.items()],
            )

    # --- the event codec ---

    async def seal(self, conn: AsyncConnection, events: Sequence[CloudEvent]) -> list[CloudEvent]:
        """Each event with its personal data sealed with its subject's key (the same sealed
        copy for an event sealed before in this transaction)."""
        done = self._current(conn).sealed
        fresh = [e for e in events if done.get(id(e), (None,))[0] is not e]
        subjects = {e.subject for e in fresh if e.subject and _has_personal(e)}
        keys = await self.keys_creating(conn, subjects)
        for e in fresh:
            key = keys.get(e.subject or "")
            sealed = _sealed(e, key, e.subject or "") if key and _has_personal(e) else e
            done[id(e)] = (e, sealed)
        return [done[id(e)][1] for e in events]

    async def open(self, conn: AsyncConnection, events: Sequence[CloudEvent]) -> list[CloudEvent]:
        """Each event with its sealed values opened (emptied where the key is gone)."""
        documents = [e.to_dict() for e in events]
        needed = privacy.all_key_ids(documents)
        if not needed:
            return list(events)
        keys = await self.keys(conn, needed)
        return [
            CloudEvent.model_validate(privacy.open_all(d, keys)) if privacy.key_ids(d) else e
            for e, d in zip(events, documents, strict=True)
        ]

    async def open_documents(
        self, conn: AsyncConnection, documents: Sequence[dict[str, object]]
    ) -> list[object]:
        """Stored envelopes (as read from the events table) with sealed values opened."""
        keys = await self.keys(conn, privacy.all_key_ids(documents))
        return [privacy.open_all(d, keys) for d in documents]

    async def open_messages(self, pending: list[PendingMessage]) -> list[PendingMessage]:
        """The relay's hook: outbox messages as they are published (personal data in clear
        for the services downstream, empty where the contact was erased meanwhile)."""
        sealed = [m for m in pending if privacy.may_hold_sealed(m.payload)]
        if not sealed:
            return pending
        documents = {m.id: jsontext.loads(m.payload) for m in sealed}
        async with self._db.read() as conn:
            keys = await self.keys(conn, privacy.all_key_ids(documents.values()))
        return [
            _with_payload(m, privacy.open_all(documents[m.id], keys)) if m.id in documents else m
            for m in pending
        ]


def _sealed(event: CloudEvent, key: bytes, key_id: str) -> CloudEvent:
    """The event with its personal values sealed: a copy with just those attributes
    replaced (dumping and validating the whole envelope again cost as much as the AES)."""
    attributes = {"type": event.type, "data": event.data, **(event.model_extra or {})}
    changed = privacy.sealed_attributes(attributes, key, key_id)
    return event.model_copy(update=changed) if changed else event


def _has_personal(event: CloudEvent) -> bool:
    data = event.data
    fields = privacy.personal_fields(event.type, data) if isinstance(data, dict) else []
    return bool(fields) or privacy.IDENTITY_EXTENSION in (event.model_extra or {})


def _with_payload(message: PendingMessage, document: object) -> PendingMessage:
    payload = jsontext.dumps(document).encode()
    return PendingMessage(
        message.id, message.topic, message.key, message.event_id, payload, message.headers
    )
