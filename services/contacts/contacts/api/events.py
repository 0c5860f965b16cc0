"""`POST /v1/events`: one CloudEvent, or a batch as a JSON array."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from contacts.handlers.ingest import Ingestor, Outcome
from contacts.settings import ContactsSettings
from crm_shared.app.auth import requires
from crm_shared.app.problems import Problem
from crm_shared.events import CATALOG
from crm_shared.events.envelope import BATCH_CONTENT_TYPE, CloudEvent
from crm_shared.events.registry import OPEN_NAME
from crm_shared.store import jsontext

router = APIRouter(prefix="/v1", tags=["events"])


async def get_ingestor(request: Request) -> Ingestor:
    ingestor: Ingestor = request.app.state.ingestor
    return ingestor


async def get_settings(request: Request) -> ContactsSettings:
    settings: ContactsSettings = request.app.state.runtime.settings
    return settings


IngestorDep = Annotated[Ingestor, Depends(get_ingestor)]
SettingsDep = Annotated[ContactsSettings, Depends(get_settings)]


class EventOutcome(BaseModel):
    id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    field: str | None = None
    contact_id: str | None = None


class BatchOutcome(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventOutcome]


EXAMPLE_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "order-1001",
    "source": "shop",
    "type": "crm.purchase.completed.v1",
    "subject": "email:ada@example.com",
    "time": "2026-11-01T10:00:00Z",
    "data": {"order_id": "1001", "amount": "49.90", "currency": "EUR", "item_count": 2},
}
EXAMPLE_LOGIN: dict[str, Any] = {
    "specversion": "1.0",
    "id": "login-77",
    "source": "app",
    "type": "crm.session.started.v1",
    "subject": "ext:app:u-77",
    "time": "2026-11-02T08:30:00+01:00",
    "data": {"kind": "login", "channel": "ios"},
}


def _incoming_event() -> dict[str, Any]:
    """The envelope as this endpoint takes it: a type the catalog knows, and subject, time
    and an object `data` required (its fields depend on the type: GET /v1/schemas)."""
    schema = CloudEvent.model_json_schema()
    fields = schema["properties"]
    names = list(CATALOG.json_schemas())
    known = [{"enum": [n for n in names if not n.endswith("*")]}]
    open_types = [
        {"pattern": f"^{re.escape(n[:-1])}{OPEN_NAME.pattern[1:]}"} for n in names if n[-1] == "*"
    ]
    fields["specversion"] = {**fields["specversion"], "enum": ["1.0"]}
    fields["type"] = {**fields["type"], "anyOf": known + open_types}
    fields["subject"] = fields["subject"]["anyOf"][0]
    fields["time"] = fields["time"]["anyOf"][0]
    fields["data"] = {"type": "object", "description": "the payload its type describes"}
    schema["required"] = [*schema["required"], "subject", "time", "data"]
    return schema


EVENT = _incoming_event()
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/cloudevents+json": {
                "schema": EVENT,
                "example": EXAMPLE_EVENT,
            },
            "application/json": {
                "schema": {
                    "oneOf": [
                        EVENT,
                        {"type": "array", "items": EVENT, "minItems": 1},
                    ]
                },
                "example": EXAMPLE_EVENT,
            },
            BATCH_CONTENT_TYPE: {
                "schema": {"type": "array", "items": EVENT, "minItems": 1},
                "example": [EXAMPLE_EVENT, EXAMPLE_LOGIN],
            },
        },
    }
}


@router.post(
    "/events",
    dependencies=[requires("events:write")],
    openapi_extra=_BODY,
    response_model=BatchOutcome | EventOutcome,
    status_code=202,
    responses={
        200: {
            "description": "a duplicate of an accepted event, or a batch's outcomes",
            "model": BatchOutcome | EventOutcome,
        },
        202: {"description": "the single event was accepted", "model": EventOutcome},
        400: {"description": "the body is not JSON"},
        413: {"description": "too many events or too many bytes"},
        415: {"description": "unsupported content type"},
        422: {"description": "the single event was rejected; the reason names the field"},
    },
)
async def post_events(
    request: Request, ingestor: IngestorDep, settings: SettingsDep
) -> JSONResponse:
    """Ingest one CloudEvent (structured JSON) or a batch (JSON array).

    A batch answers 200 with an outcome per event: accepted, duplicate (the id was accepted
    before) or rejected (with the reason). A single event answers 202 when accepted, 200
    when it is a duplicate and 422 when rejected.
    """
    media = _media_type(request)
    body, size = await _read_body(request, settings.ingest_max_bytes)
    batch = _is_batch(media, body)
    items = body if isinstance(body, list) else [body]
    if batch and not items:
        raise Problem(422, "the batch is empty")
    if len(items) > settings.ingest_max_events:
        raise Problem(
            413,
            f"a batch holds at most {settings.ingest_max_events} events; this one has {len(items)}",
        )
    outcomes = await ingestor.ingest(items, body_bytes=size)
    request.app.state.runtime.wake_relay()
    if batch:
        return JSONResponse(_batch(outcomes).model_dump(), status_code=200)
    return _single(outcomes[0])


async def _read_body(request: Request, limit: int) -> tuple[Any, int]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"the body exceeds {limit} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise Problem(413, f"the body exceeds {limit} bytes")
    try:
        return jsontext.loads(raw), len(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None


def _media_type(request: Request) -> str:
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media not in {"application/json", "application/cloudevents+json", BATCH_CONTENT_TYPE}:
        raise Problem(
            415,
            f"unsupported content type {media!r}; use application/cloudevents+json "
            f"or {BATCH_CONTENT_TYPE}",
        )
    return media


def _is_batch(media: str, body: Any) -> bool:
    if media == BATCH_CONTENT_TYPE and not isinstance(body, list):
        raise Problem(422, f"{BATCH_CONTENT_TYPE} must be a JSON array of events")
    if media == "application/cloudevents+json" and not isinstance(body, dict):
        raise Problem(422, "application/cloudevents+json must be one JSON object")
    if not isinstance(body, (list, dict)):
        raise Problem(422, "the body must be an event object or an array of events")
    return isinstance(body, list)


def _batch(outcomes: list[Outcome]) -> BatchOutcome:
    return BatchOutcome(
        accepted=sum(o.status == "accepted" for o in outcomes),
        duplicates=sum(o.status == "duplicate" for o in outcomes),
        rejected=sum(o.status == "rejected" for o in outcomes),
        results=[
            EventOutcome(
                id=o.id, status=o.status, reason=o.reason, field=o.field, contact_id=o.contact_id
            )
            for o in outcomes
        ],
    )


def _single(outcome: Outcome) -> JSONResponse:
    if outcome.status == "rejected":
        raise Problem(
            422,
            outcome.reason or "invalid event",
            title="Event rejected",
            field=outcome.field,
            event_id=outcome.id,
        )
    view = EventOutcome(id=outcome.id, status=outcome.status, contact_id=outcome.contact_id)
    return JSONResponse(
        view.model_dump(exclude_none=True), status_code=202 if outcome.status == "accepted" else 200
    )
