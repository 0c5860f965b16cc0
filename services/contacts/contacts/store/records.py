"""Loading contacts from their record streams, and keeping the read model in step."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, cast, delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from contacts.domain.contact import Contact, fold
from contacts.store.tables import (
    contact_attributes,
    contact_tags,
    contacts,
    erasures,
    idempotency_keys,
    identifiers,
)
from crm_shared.events import EventData, EventRegistry
from crm_shared.store.bulk import insert_rows
from crm_shared.store.db import Database
from crm_shared.store.eventstore import EventStore, RecordedEvent
from crm_shared.store.sql import upsert


def record_stream(contact_id: str) -> str:
    return f"contact-{contact_id}"


def timeline_stream(contact_id: str) -> str:
    return f"timeline-{contact_id}"


def payload(registry: EventRegistry, recorded: RecordedEvent) -> EventData:
    return registry.model_for(recorded.envelope.type).model_validate(recorded.envelope.data)


async def load(
    conn: AsyncConnection,
    store: EventStore,
    registry: EventRegistry,
    contact_id: str,
    *,
    as_of: datetime | None = None,
) -> Contact | None:
    """The contact as its record stream says (as it was at `as_of`, if given)."""
    state = None
    for recorded in await store.read_stream(conn, record_stream(contact_id)):
        if as_of is not None and recorded.recorded_at > as_of:
            break
        state = fold(state, payload(registry, recorded), recorded.recorded_at, contact_id)
    return state


# Built once: building a select and its cache key cost more than running it.
_BY_ID = select(contacts).where(contacts.c.id == bindparam("contact_id"))


async def current(conn: AsyncConnection, contact_id: str) -> Contact | None:
    """The contact as its read-model row holds it: written in the transaction of every
    change to the stream, so equal to `load` without `as_of`, in one by-key read instead
    of reading, opening and folding every event of the stream."""
    row = (await conn.execute(_BY_ID, {"contact_id": contact_id})).first()
    return None if row is None else contact_of(row._mapping)


async def lookup(db: Database, contact_id: str) -> Contact | None:
    """`current` in one statement of its own (a read outside any transaction)."""
    row = await db.fetch_one(_BY_ID, {"contact_id": contact_id})
    return None if row is None else contact_of(row)


def contact_of(row: Mapping[Any, Any]) -> Contact:
    """A contact from its read-model row."""
    return Contact(
        id=row["id"],
        version=row["version"],
        profile=row["profile"],
        origin=row["origin"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        external_ids=tuple(row["external_ids"]),
        consent=row["consent"],
        status=row["status"],
        merged_into=row["merged_into"],
    )


async def save(conn: AsyncConnection, states: Sequence[Contact], *, created: bool = False) -> None:
    """Write the read-model rows of these contacts (row, tags, attributes, identifiers);
    `created`: they are new in this transaction, so there are no old rows to replace."""
    if not states:
        return
    ids = [s.id for s in states]
    await upsert(conn, contacts, [_row(s) for s in states], key=["id"])
    if not created:
        for table in (contact_tags, contact_attributes, identifiers):
            await conn.execute(delete(table).where(table.c.contact_id.in_(ids)))
    tags = [{"tag": t, "contact_id": s.id} for s in states for t in s.profile.get("tags", [])]
    attrs = [
        {"contact_id": s.id, "name": k, "value": attribute_text(v)}
        for s in states
        for k, v in s.profile.get("attributes", {}).items()
    ]
    refs = [
        {"identifier": i, "contact_id": s.id, "created_at": s.created_at}
        for s in states
        if s.status == "active"
        for i in dict.fromkeys(s.identifiers)
    ]
    for table, rows in ((contact_tags, tags), (contact_attributes, attrs), (identifiers, refs)):
        await insert_rows(conn, table, rows)


# Built once (every consumed batch runs them): building a statement costs more than a
# small batch's lookup.
_RESOLVE = (
    select(identifiers.c.identifier, identifiers.c.contact_id)
    .where(identifiers.c.identifier.in_(bindparam("refs", expanding=True)))
    .order_by(identifiers.c.created_at.desc(), identifiers.c.contact_id.desc())
)
_STATUSES = select(contacts.c.id, contacts.c.merged_into).where(
    contacts.c.id.in_(bindparam("ids", expanding=True))
)


async def resolve(conn: AsyncConnection, refs: Iterable[str]) -> dict[str, str]:
    """Identifier -> contact id; where several contacts hold one, the oldest wins."""
    wanted = list(set(refs))
    if not wanted:
        return {}
    return {
        row.identifier: row.contact_id for row in await conn.execute(_RESOLVE, {"refs": wanted})
    }


async def statuses(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, str | None]:
    """Contact id -> the id it was merged into (None when active), for existing contacts."""
    wanted = list(set(ids))
    if not wanted:
        return {}
    return {row.id: row.merged_into for row in await conn.execute(_STATUSES, {"ids": wanted})}


async def survivor_of(conn: AsyncConnection, contact_id: str) -> str | None:
    """Follow merges to the contact that stands for this one today (None if unknown)."""
    current, seen = contact_id, set()
    while current not in seen:
        seen.add(current)
        merged_into = (await statuses(conn, [current])).get(current, "missing")
        if merged_into == "missing":
            return None
        if merged_into is None:
            return current
        current = merged_into
    return current


# Advisory locks on identifiers (PostgreSQL): a namespace of their own (the two-key form),
# then 32 bits of the identifier's hash.
_IDENTIFIER_LOCKS = 0x43524D49  # "CRMI"
_LOCK_IDENTIFIERS = text(
    "SELECT pg_advisory_xact_lock(:namespace, k) "
    "FROM (SELECT DISTINCT unnest(CAST(:keys AS integer[])) AS k ORDER BY k) AS keys"
)


async def lock_identifiers(conn: AsyncConnection, identifiers: Sequence[str]) -> None:
    """Hold, until the transaction ends, a lock on each of these identifiers (taken in one
    order, so two transactions cannot wait for each other)."""
    keys = [
        int.from_bytes(hashlib.sha256(i.encode()).digest()[:4], "big", signed=True)
        for i in identifiers
    ]
    await conn.execute(_LOCK_IDENTIFIERS, {"namespace": _IDENTIFIER_LOCKS, "keys": keys})


async def absorbed(conn: AsyncConnection, contact_id: str) -> list[str]:
    """This contact and every contact merged into it, directly or through others."""
    found, frontier = [contact_id], [contact_id]
    while frontier:
        query = select(contacts.c.id).where(contacts.c.merged_into.in_(frontier))
        frontier = [i for i in (await conn.execute(query)).scalars() if i not in found]
        found += frontier
    return found


@dataclass(frozen=True)
class Erasure:
    contact_id: str
    erased_ids: list[str]
    erased_at: datetime


async def erasure_of(conn: AsyncConnection, contact_id: str) -> Erasure | None:
    """When the contact was erased, with the contacts erased along with it."""
    query = select(erasures.c.contact_id, erasures.c.erased_at).where(
        erasures.c.erased_with == contact_id
    )
    rows = list(await conn.execute(query.order_by(erasures.c.contact_id)))
    if not rows:
        return None
    ids = sorted((r.contact_id for r in rows), key=lambda i: (i != contact_id, i))
    return Erasure(contact_id, ids, rows[0].erased_at)


async def forget(conn: AsyncConnection, ids: Sequence[str]) -> None:
    """Drop what the read model kept beside the contact rows: stored answers to idempotent
    requests that name these contacts (they hold the request's personal data)."""
    for contact_id in ids:
        await conn.execute(
            delete(idempotency_keys).where(
                cast(idempotency_keys.c.body, Text).contains(contact_id, autoescape=True)
            )
        )


def attribute_text(value: Any) -> str:
    """How an attribute is compared in filters: its JSON text (`5`, `true`, `"gold"` -> gold)."""
    return value if isinstance(value, str) else json.dumps(value)


def _row(state: Contact) -> dict[str, Any]:
    p = state.profile
    text = " ".join(
        str(x)
        for x in (p.get("first_name"), p.get("last_name"), p.get("company"), *p.get("emails", []))
        if x
    )
    return {
        "id": state.id,
        "version": state.version,
        "status": state.status,
        "merged_into": state.merged_into,
        "origin": state.origin,
        "first_name": p.get("first_name"),
        "last_name": p.get("last_name"),
        "company": p.get("company"),
        "country": p.get("country"),
        "region": p.get("region"),
        "city": p.get("city"),
        "source": p.get("source"),
        "channel": p.get("channel"),
        "search": text.lower(),
        "profile": p,
        "consent": state.consent,
        "external_ids": list(state.external_ids),
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }
