"""Idempotency keys: a retried create returns the first answer instead of a second contact."""

from __future__ import annotations

import json
from datetime import datetime

from fastapi.responses import JSONResponse
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contacts.store.tables import idempotency_keys
from crm_shared.app.problems import Problem

REPLAYED = "Idempotent-Replayed"


async def recall(conn: AsyncConnection, key: str, fingerprint: str) -> JSONResponse | None:
    """The response first given for this key, or None; 422 if the body differs."""
    row = (
        await conn.execute(select(idempotency_keys).where(idempotency_keys.c.key == key))
    ).first()
    if row is None:
        return None
    if row.fingerprint != fingerprint:
        raise Problem(
            422, "Idempotency-Key was used before with a different body", field="Idempotency-Key"
        )
    return JSONResponse(row.body, status_code=row.status, headers={**row.headers, REPLAYED: "true"})


async def remember(
    conn: AsyncConnection, key: str, fingerprint: str, response: JSONResponse, now: datetime
) -> None:
    headers = {k: v for k, v in response.headers.items() if k.lower() in {"etag", "location"}}
    await conn.execute(
        insert(idempotency_keys).values(
            key=key,
            fingerprint=fingerprint,
            status=response.status_code,
            body=json.loads(bytes(response.body)),
            headers=headers,
            created_at=now,
        )
    )
