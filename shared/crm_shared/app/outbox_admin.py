"""Operations on contacts' outbox: publish again what was published before."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from crm_shared.app.auth import requires
from crm_shared.app.factory import RuntimeDep

router = APIRouter(prefix="/v1/admin", tags=["operations"])


class RepublishRequest(BaseModel):
    from_id: int = Field(
        default=1,
        ge=1,
        le=2**53 - 1,  # exact in every JSON reader, and fits the database's integers
        description="the first outbox message id to send again",
    )


class RepublishResult(BaseModel):
    republished: int
    high_water: int = Field(description="the newest outbox message id")


@router.post("/republish", dependencies=[requires("admin")], response_model=RepublishResult)
async def republish(body: RepublishRequest, runtime: RuntimeDep) -> RepublishResult:
    """Publish every canonical event again from an outbox position on (for a service
    rebuilt from an empty database, or a new consumer). Personal data goes out as it reads
    today: empty for erased contacts. Consumers' inboxes absorb what they already have."""
    async with runtime.db.transaction() as conn:
        count = await runtime.outbox.republish_from(conn, body.from_id)
        high_water = await runtime.outbox.high_water(conn)
    if runtime.relay is not None:
        runtime.relay.forget_sent()
    runtime.wake_relay()
    return RepublishResult(republished=count, high_water=high_water)
