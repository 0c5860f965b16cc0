"""Operations on a service's outbox, in every service: publish again from a position, and
see the messages the relay parked (too large for the broker)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from crm_shared.app.auth import requires
from crm_shared.app.deps import RuntimeDep

router = APIRouter(prefix="/v1/admin", tags=["operations"])
# Exact in every JSON reader, and fits the database's integers.
MAX_ID = 2**53 - 1


class RepublishRequest(BaseModel):
    from_id: int = Field(
        default=1, ge=1, le=MAX_ID, description="the first outbox message id to send again"
    )


class RepublishResult(BaseModel):
    republished: int
    high_water: int = Field(description="the newest outbox message id")


class ParkedMessage(BaseModel):
    id: int = Field(description="outbox message id (republish from it to send it again)")
    topic: str
    key: str
    event_id: str
    size: int = Field(
        description="characters of the message as stored (contacts stores personal data "
        "sealed, so the reason's size, what would be sent, differs)"
    )
    created_at: datetime
    parked_at: datetime
    reason: str


class ParkedPage(BaseModel):
    items: list[ParkedMessage]
    next_after: int | None = Field(
        description="pass as `after` for the next page; null on the last page"
    )


@router.post("/republish", dependencies=[requires("admin")], response_model=RepublishResult)
async def republish(body: RepublishRequest, runtime: RuntimeDep) -> RepublishResult:
    """Publish every message again from an outbox position on (for a service downstream
    rebuilt from an empty database, or a new consumer), parked messages too (after the
    broker's or `CRM_RELAY_MAX_MESSAGE_BYTES`'s limit was raised). Messages go out as the
    relay prepares them today (contacts: empty personal data for erased contacts).
    Consumers' inboxes absorb what they already have."""
    async with runtime.db.transaction() as conn:
        count = await runtime.outbox.republish_from(conn, body.from_id)
        high_water = await runtime.outbox.high_water(conn)
    if runtime.relay is not None:
        runtime.relay.forget_sent()
    runtime.wake_relay()
    return RepublishResult(republished=count, high_water=high_water)


@router.get("/outbox/parked", dependencies=[requires("admin")], response_model=ParkedPage)
async def parked(
    runtime: RuntimeDep,
    after: int = Query(default=0, ge=0, le=MAX_ID, description="list ids above this one"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> ParkedPage:
    """The messages the relay set aside instead of sending (larger than it sends, or
    refused by the broker as too large), oldest first, with the reason; the count is
    `crm_outbox_parked` in /metrics."""
    async with runtime.db.read() as conn:
        rows = await runtime.outbox.parked_messages(conn, after=after, limit=limit + 1)
    items = [ParkedMessage(**row) for row in rows[:limit]]
    return ParkedPage(items=items, next_after=items[-1].id if len(rows) > limit else None)
