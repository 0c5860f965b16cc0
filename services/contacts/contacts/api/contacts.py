"""Contact records: create, read (also as of a time), change with optimistic concurrency,
list and search, history, consent, duplicates, merge and unmerge."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StringConstraints
from pydantic import Field as PydField

from contacts.api.schemas import (
    ConsentChange,
    ContactCreate,
    ContactPage,
    ContactView,
    DuplicateCandidate,
    HistoryEntry,
    MergeRequest,
    UnmergeRequest,
)
from contacts.domain.identity import external_id, parse_identifier
from contacts.handlers import idempotency
from contacts.handlers.records import ContactService, NotFound, etag, history
from contacts.store import queries, records
from crm_shared.app.auth import requires
from crm_shared.app.problems import Problem, utc_parameter

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])
READ = requires("contacts:read")
WRITE = requires("contacts:write")


async def get_service(request: Request) -> ContactService:
    service: ContactService = request.app.state.contacts
    return service


ServiceDep = Annotated[ContactService, Depends(get_service)]
IfMatch = Annotated[str | None, Header(description="the ETag read; a stale one gets 412")]
Actor = Annotated[str | None, Header(alias="X-Actor", description="who makes the change")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such contact"}}


def _view(response: Response, view: ContactView) -> ContactView:
    response.headers["ETag"] = f'"{view.version}"'
    return view


@router.post(
    "",
    dependencies=[WRITE],
    status_code=201,
    response_model=ContactView,
    responses={
        409: {"description": "a contact with that email, phone or id exists"},
        422: {"description": "a field is invalid; the problem names it"},
    },
)
async def create_contact(
    body: ContactCreate,
    request: Request,
    service: ServiceDep,
    actor: Actor = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    allow_duplicate: Annotated[
        bool, Query(description="create even if an email, phone or external id is known")
    ] = False,
) -> JSONResponse:
    """Create a contact. `Idempotency-Key` makes a retried request return the first answer."""
    payload = body.model_dump(mode="json", exclude_unset=True)
    fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    async with service.db.transaction() as conn:
        if idempotency_key:
            if conn.dialect.name == "postgresql":  # the same key at once: one waits, then recalls
                await records.lock_identifiers(conn, [f"idempotency-key:{idempotency_key}"])
            earlier = await idempotency.recall(conn, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier
        external = payload.pop("external_ids", [])
        if not allow_duplicate:
            await _refuse_known(conn, body, external)
        state = await service.create(conn, payload, external_ids=external, actor=actor)
        response = JSONResponse(
            ContactView.of(state).model_dump(mode="json"),
            status_code=201,
            headers={"ETag": etag(state), "Location": f"/v1/contacts/{state.id}"},
        )
        if idempotency_key:
            await idempotency.remember(
                conn, idempotency_key, fingerprint, response, service.clock()
            )
    service.wake()
    return response


async def _refuse_known(conn: Any, body: ContactCreate, external: list[str]) -> None:
    try:
        ext = [f"ext:{external_id(x)}" for x in external]
    except ValueError as exc:
        raise Problem(422, f"external_ids: {exc}", field="external_ids") from None
    refs = [f"email:{e}" for e in body.emails] + [f"phone:{p}" for p in body.phones] + ext
    known = await records.resolve(conn, refs)
    if known:
        ref, contact_id = next(iter(sorted(known.items())))
        raise Problem(
            409,
            f"{ref} already belongs to contact {contact_id}; merge, update it, "
            "or pass allow_duplicate=true",
            title="Contact exists",
            existing_contact_id=contact_id,
        )


@router.get("", dependencies=[READ], response_model=ContactPage)
async def list_contacts(
    service: ServiceDep,
    tag: Annotated[list[str], Query(description="has every tag given")] = [],  # noqa: B006
    country: Annotated[str | None, Query(min_length=2, max_length=2)] = None,
    region: str | None = None,
    source: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    attribute: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[^:]+:")]],
        Query(description="name:value, e.g. plan:gold or seats:5"),
    ] = [],  # noqa: B006
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="text in name, email or company"),
    ] = None,
    ref: Annotated[
        str | None,
        Query(description="an identifier: email:…, phone:…, ext:system:id or a contact id"),
    ] = None,
    include_merged: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> ContactPage:
    """Contacts, oldest first, filtered; stable across pages (cursor pagination)."""
    attributes = dict(_attribute(a) for a in attribute)
    created_after = utc_parameter("created_after", created_after)
    created_before = utc_parameter("created_before", created_before)
    async with service.db.read() as conn:
        ids = await _lookup(conn, ref) if ref else None
        where = queries.ContactFilter(
            tags=tag,
            country=country,
            region=region,
            source=source,
            created_after=created_after,
            created_before=created_before,
            attributes=attributes,
            text=q,
            contact_ids=ids,
            include_merged=include_merged,
        )
        try:
            rows, next_cursor = await queries.list_contacts(conn, where, limit=limit, cursor=cursor)
        except queries.BadCursor as exc:
            raise Problem(422, str(exc), field="cursor") from None
    items = [ContactView.of(records.contact_of(r)) for r in rows]
    return ContactPage(items=items, next_cursor=next_cursor)


def _attribute(raw: str) -> tuple[str, str]:
    name, _, value = raw.partition(":")  # the query's pattern made sure of both
    return name, value


async def _lookup(conn: Any, ref: str) -> list[str]:
    try:
        identifier = parse_identifier(ref)
    except ValueError as exc:
        raise Problem(422, f"ref: {exc}", field="ref") from None
    if identifier.startswith("id:"):
        return [identifier.removeprefix("id:")]
    return list((await records.resolve(conn, [identifier])).values())


@router.get("/{contact_id}", dependencies=[READ], response_model=ContactView, responses=NOT_FOUND)
async def get_contact(
    contact_id: str,
    response: Response,
    service: ServiceDep,
    as_of: Annotated[datetime | None, Query(description="the contact as it was then")] = None,
) -> ContactView:
    """A contact; with `as_of`, as its record stood at that time."""
    as_of = utc_parameter("as_of", as_of)
    try:
        state = await service.get(contact_id, as_of=as_of)
    except NotFound:
        detail = f"contact {contact_id!r} did not exist then" if as_of else None
        raise Problem(404, detail or f"no contact {contact_id!r}") from None
    if state.status == "erased":  # now, or as of a time after the erasure
        raise Problem(410, f"contact {contact_id!r} was erased", title="Erased")
    return _view(response, ContactView.of(state))


@router.patch(
    "/{contact_id}",
    dependencies=[WRITE],
    response_model=ContactView,
    responses={**NOT_FOUND, 412: {"description": "If-Match is stale"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/merge-patch+json": {
                    "schema": {"type": "object"},
                    "example": {"city": "Paris", "tags": ["vip"], "company": None},
                },
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def patch_contact(
    contact_id: str,
    request: Request,
    response: Response,
    service: ServiceDep,
    if_match: IfMatch = None,
    actor: Actor = None,
) -> ContactView:
    """Change fields with a JSON merge patch (RFC 7396): `null` clears a field.
    `external_ids` listed are added. Send `If-Match` with the ETag you read."""
    patch = await _json_object(request)
    state = await service.update(contact_id, patch, if_match=if_match, actor=actor)
    return _view(response, ContactView.of(state))


async def _json_object(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media not in {"application/json", "application/merge-patch+json"}:
        raise Problem(415, "send application/merge-patch+json")
    try:
        body = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Problem(422, "a merge patch is a JSON object")
    return body


@router.get(
    "/{contact_id}/history",
    dependencies=[READ],
    response_model=list[HistoryEntry],
    responses=NOT_FOUND,
)
async def get_history(contact_id: str, service: ServiceDep) -> list[dict[str, Any]]:
    """Every change of the record, oldest first: when, which event, who, field by field."""
    return await history(service, contact_id)


@router.put(
    "/{contact_id}/consent/{channel}",
    dependencies=[WRITE],
    response_model=ContactView,
    responses={**NOT_FOUND, 412: {"description": "If-Match is stale"}},
)
async def put_consent(
    contact_id: str,
    channel: str,
    body: ConsentChange,
    response: Response,
    service: ServiceDep,
    if_match: IfMatch = None,
) -> ContactView:
    """Record consent on a channel (email, sms, push, phone): granted, denied or revoked."""
    state = await service.change_consent(
        contact_id, channel, body.status, source=body.source, at=body.at, if_match=if_match
    )
    return _view(response, ContactView.of(state))


@router.get(
    "/{contact_id}/duplicates",
    dependencies=[READ],
    response_model=list[DuplicateCandidate],
    responses=NOT_FOUND,
)
async def get_duplicates(contact_id: str, service: ServiceDep) -> list[dict[str, Any]]:
    """Likely duplicates: same email or phone, or a similar name at the same company."""
    state = await service.get(contact_id)
    async with service.db.read() as conn:
        return await queries.duplicates_of(conn, {"id": state.id, "profile": state.profile})


@router.post(
    "/{contact_id}/merge",
    dependencies=[WRITE],
    response_model=ContactView,
    responses={
        **NOT_FOUND,
        409: {"description": "a contact is merged already"},
        412: {"description": "If-Match is stale"},
    },
)
async def merge_contacts(
    contact_id: str,
    body: MergeRequest,
    response: Response,
    service: ServiceDep,
    if_match: IfMatch = None,
    actor: Actor = None,
) -> ContactView:
    """Merge other contacts into this one (the survivor): identifiers and timelines move to
    it, `fields` choose whose value each field keeps; published as `crm.contact.merged.v1`."""
    state = await service.merge(
        contact_id, body.others, body.fields, if_match=if_match, actor=actor
    )
    return _view(response, ContactView.of(state))


@router.post(
    "/{contact_id}/unmerge", dependencies=[WRITE], response_model=ContactView, responses=NOT_FOUND
)
async def unmerge_contact(
    contact_id: str,
    body: Annotated[UnmergeRequest, Body()],
    response: Response,
    service: ServiceDep,
    actor: Actor = None,
) -> ContactView:
    """Undo the merge of one contact into this one; it becomes a customer of its own again."""
    state = await service.unmerge(contact_id, body.contact_id, actor=actor)
    return _view(response, ContactView.of(state))


class ErasureView(BaseModel):
    contact_id: str
    erased_ids: list[str] = PydField(description="the contact and every contact merged into it")
    erased_at: datetime


@router.post(
    "/{contact_id}/erase",
    dependencies=[requires("contacts:erase")],
    response_model=ErasureView,
    responses={**NOT_FOUND, 409: {"description": "the contact was merged into another"}},
)
async def erase_contact(contact_id: str, service: ServiceDep, actor: Actor = None) -> ErasureView:
    """Erase the contact's personal data for good (right to erasure): its key is destroyed,
    so its personal data is unreadable in every stored event, replay and re-publish; its
    non-personal history (purchases, stages, scores) stays. Published as
    `crm.contact.erased.v1`, on which the other services drop what they hold. Repeatable."""
    erasure = await service.erase(contact_id, actor=actor)
    return ErasureView(**vars(erasure))
