"""`GET /v1/contacts/{contact_id}/timeline`: every accepted event about a contact."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from contacts.store import records
from contacts.store.timeline import TimelineQuery, timeline
from crm_shared.app.auth import requires
from crm_shared.app.deps import RuntimeDep
from crm_shared.app.problems import Problem, utc_parameter

router = APIRouter(prefix="/v1", tags=["contacts"])


class TimelineEntry(BaseModel):
    time: datetime
    recorded_at: datetime
    event: dict[str, Any]


class TimelinePage(BaseModel):
    contact_id: str
    items: list[TimelineEntry]
    next_cursor: str | None


@router.get(
    "/contacts/{contact_id}/timeline",
    dependencies=[requires("contacts:read")],
    response_model=TimelinePage,
    responses={404: {"description": "no such contact"}},
)
async def get_timeline(
    contact_id: str,
    runtime: RuntimeDep,
    request: Request,
    type: Annotated[
        list[str],
        Query(description="event types; a trailing * matches a prefix, e.g. crm.purchase.*"),
    ] = [],  # noqa: B006
    after: Annotated[datetime | None, Query(description="events that happened at or after")] = None,
    before: Annotated[datetime | None, Query(description="events that happened before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> TimelinePage:
    """The contact's events in the order they happened, including those of contacts merged
    into it; paged with `cursor`."""
    after, before = utc_parameter("after", after), utc_parameter("before", before)
    query = TimelineQuery(types=type, after=after, before=before, limit=limit, cursor=cursor)
    async with runtime.db.read() as conn:
        if await records.survivor_of(conn, contact_id) is None:
            raise Problem(404, f"no contact {contact_id!r}")
        try:
            items, next_cursor = await timeline(conn, contact_id, query, request.app.state.vault)
        except ValueError as exc:
            raise Problem(422, str(exc), field="cursor") from None
    return TimelinePage(
        contact_id=contact_id, items=[TimelineEntry(**i) for i in items], next_cursor=next_cursor
    )
