"""Read-side queries of the contact read model: filtered, cursor-paged listing; duplicates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from difflib import SequenceMatcher
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contacts.store import records
from contacts.store.tables import contact_attributes, contact_tags, contacts, identifiers
from crm_shared.store import cursor
from crm_shared.store.cursor import BadCursor

SIMILAR_NAME = 0.85


@dataclass(frozen=True)
class ContactFilter:
    tags: list[str] = field(default_factory=list)
    country: str | None = None
    region: str | None = None
    source: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    contact_ids: list[str] | None = None  # from an identifier lookup
    include_merged: bool = False


async def list_contacts(
    conn: AsyncConnection, where: ContactFilter, *, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of contacts ordered by (created_at, id), and the cursor of the next page."""
    query = _filtered(select(contacts), where).order_by(contacts.c.created_at, contacts.c.id)
    if cursor:
        created, last_id = decode_cursor(cursor)
        query = query.where(
            or_(
                contacts.c.created_at > created,
                and_(contacts.c.created_at == created, contacts.c.id > last_id),
            )
        )
    rows = [dict(r._mapping) for r in await conn.execute(query.limit(limit + 1))]
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last["created_at"], last["id"])


def _filtered(query: Select[Any], where: ContactFilter) -> Select[Any]:
    c = contacts.c
    if not where.include_merged:
        query = query.where(c.status == "active")
    else:  # an erased contact is gone from lists (it answers 410 by id)
        query = query.where(c.status.in_(("active", "merged")))
    for column, value in (
        (c.country, where.country and where.country.upper()),
        (c.region, where.region),
        (c.source, where.source),
    ):
        if value:
            query = query.where(column == value)
    if where.created_after:
        query = query.where(c.created_at >= where.created_after)
    if where.created_before:
        query = query.where(c.created_at < where.created_before)
    for tag in where.tags:
        query = query.where(
            c.id.in_(select(contact_tags.c.contact_id).where(contact_tags.c.tag == tag))
        )
    for name, value in where.attributes.items():
        query = query.where(
            c.id.in_(
                select(contact_attributes.c.contact_id).where(
                    contact_attributes.c.name == name, contact_attributes.c.value == value
                )
            )
        )
    if where.text:
        pattern = (
            "%"
            + where.text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            + "%"
        )
        query = query.where(c.search.like(pattern, escape="\\"))
    if where.contact_ids is not None:
        query = query.where(c.id.in_(where.contact_ids))
    return query


def encode_cursor(created_at: datetime, contact_id: str) -> str:
    return cursor.encode(created_at.isoformat(), contact_id)


def decode_cursor(text: str) -> tuple[datetime, str]:
    created, contact_id = cursor.decode(text, 2)
    try:
        moment = datetime.fromisoformat(created)
    except (ValueError, TypeError) as exc:
        raise BadCursor("cursor: not a cursor this API returned") from exc
    if moment.tzinfo is None:  # the API's cursors carry the offset
        raise BadCursor("cursor: not a cursor this API returned")
    return moment, str(contact_id)


async def duplicates_of(conn: AsyncConnection, contact: dict[str, Any]) -> list[dict[str, Any]]:
    """Likely duplicates: contacts sharing an email or phone, or with a similar name at the
    same company. Each candidate lists its reasons; the strongest come first."""
    found: dict[str, list[str]] = {}
    own = [f"email:{e}" for e in contact["profile"].get("emails", [])] + [
        f"phone:{p}" for p in contact["profile"].get("phones", [])
    ]
    if own:
        query = select(identifiers).where(
            identifiers.c.identifier.in_(own), identifiers.c.contact_id != contact["id"]
        )
        for row in await conn.execute(query):
            kind, _, value = row.identifier.partition(":")
            found.setdefault(row.contact_id, []).append(f"same {kind} {value}")
    for other_id, ratio in await _similar_names(conn, contact):
        found.setdefault(other_id, []).append(f"similar name at the same company ({ratio:.2f})")
    return sorted(
        ({"contact_id": k, "reasons": v} for k, v in found.items()),
        key=lambda d: (-len(d["reasons"]), d["contact_id"]),
    )


async def _similar_names(conn: AsyncConnection, contact: dict[str, Any]) -> list[tuple[str, float]]:
    company, name = contact["profile"].get("company"), _full_name(contact["profile"])
    if not company or not name:
        return []
    query = (
        select(contacts.c.id, contacts.c.first_name, contacts.c.last_name)
        .where(
            func.lower(contacts.c.company) == company.lower(),
            contacts.c.id != contact["id"],
            contacts.c.status == "active",
        )
        .limit(1000)
    )
    out = []
    for row in await conn.execute(query):
        other = _full_name({"first_name": row.first_name, "last_name": row.last_name})
        ratio = SequenceMatcher(None, name, other).ratio() if other else 0.0
        if ratio >= SIMILAR_NAME:
            out.append((row.id, ratio))
    return out


def _full_name(profile: dict[str, Any]) -> str:
    return " ".join(p for p in (profile.get("first_name"), profile.get("last_name")) if p).lower()


__all__ = ["BadCursor", "ContactFilter", "duplicates_of", "list_contacts", "records"]
