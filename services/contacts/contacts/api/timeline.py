"""`GET /v1/contacts/{contact_id}/timeline`: every accepted event about a contact."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from contacts.handlers.ingest import stream_of
from crm_shared.app.factory import RuntimeDep

router = APIRouter(prefix="/v1", tags=["contacts"])


@router.get("/contacts/{contact_id}/timeline")
async def get_timeline(
    contact_id: str, runtime: RuntimeDep, from_version: int = Query(default=1, ge=1)
) -> dict[str, Any]:
    """The contact's accepted events in the order they were recorded."""
    async with runtime.db.read() as conn:
        recorded = await runtime.events.read_stream(
            conn, stream_of(contact_id), from_version=from_version
        )
    return {
        "contact_id": contact_id,
        "events": [
            {
                "version": r.version,
                "recorded_at": r.recorded_at.isoformat(),
                "event": r.envelope.to_dict(),
            }
            for r in recorded
        ],
    }
