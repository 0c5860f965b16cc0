"""`POST /v1/imports`: upsert contacts from a CSV file."""

from __future__ import annotations

import io
from email import policy
from email.parser import BytesParser
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, Field

from contacts.api.contacts import ServiceDep
from contacts.api.events import SettingsDep
from contacts.handlers.imports import Importer, ImportFileError, decode
from crm_shared.app.auth import requires
from crm_shared.app.problems import Problem

router = APIRouter(prefix="/v1/imports", tags=["imports"])
CSV = "text/csv"
MULTIPART = "multipart/form-data"
EXAMPLE_CSV = (
    "first_name,last_name,email,phone,country,tags,external_id,attr.plan,attr.seats\n"
    "Ada,Lovelace,ada@example.com,+44 20 7946 0958,GB,vip;webinar,shop:42,gold,5\n"
    "Charles,Babbage,charles@example.com;cb@example.org,,GB,,,silver,\n"
)
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            CSV: {"schema": {"type": "string"}, "example": EXAMPLE_CSV},
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


class ImportRowError(BaseModel):
    row: int = Field(description="1-based data row (the header is not counted)")
    status: Literal["error"]
    error: str = Field(description="`<field>: <reason>`")


class ImportResult(BaseModel):
    dry_run: bool
    rows: int
    created: int
    updated: int
    unchanged: int
    failed: int
    errors: list[ImportRowError] = Field(description="the failed rows, at most 1000")
    more_errors: int = Field(description="failed rows beyond those listed")


@router.post(
    "",
    dependencies=[requires("contacts:write")],
    response_model=ImportResult,
    openapi_extra=_BODY,
    responses={
        413: {"description": "the file is larger than CRM_IMPORT_MAX_BYTES"},
        415: {"description": "not text/csv (or multipart/form-data with a `file` field)"},
        422: {"description": "not UTF-8 CSV, or a column is unknown; nothing was imported"},
    },
)
async def import_contacts(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    dry_run: Annotated[bool, Query(description="validate and count; write nothing")] = False,
    actor: Annotated[str | None, Header(alias="X-Actor", description="who imports")] = None,
) -> ImportResult:
    """Upsert contacts from CSV (`text/csv`, or `multipart/form-data` with a `file` field).

    The header names the columns: `first_name`, `last_name`, `email`, `phone`, `birthday`,
    `time_zone`, `locale`, `country`, `region`, `city`, `age_band`, `gender`, `company`,
    `source`, `channel`, `tags`, `external_id` (`system:id`) and `attr.<name>`; `email`,
    `phone`, `tags` and `external_id` take several values separated by `;`. A row updates
    the contact holding one of its emails, phones or external ids (the columns given; lists
    are added to; empty cells change nothing), else creates one. Rows that fail are listed
    by number; the others are imported, 500 rows per transaction."""
    content_type = request.headers.get("content-type", "")
    text = _decode_body(content_type, await _body(request, settings.import_max_bytes))
    importer = Importer(service)
    try:
        summary = await importer.run(lambda: io.StringIO(text), dry_run=dry_run, actor=actor)
    except ImportFileError as exc:
        problem = Problem(422, exc.reason, title="File not importable", field="file")
        if exc.unknown_columns:
            problem.extensions["unknown_columns"] = exc.unknown_columns
        raise problem from None
    return ImportResult.model_validate(summary.as_json())


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (not after reading it all)."""
    declared = request.headers.get("content-length", "")
    too_large = Problem(413, f"the file is larger than {limit} bytes; split it")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _decode_body(content_type: str, body: bytes) -> str:
    """The CSV text of a `text/csv` body or of a form's `file` field."""
    media, *params = (p.strip().lower() for p in content_type.split(";"))
    if media not in (CSV, MULTIPART):
        raise Problem(415, f"send {CSV} (or {MULTIPART} with a `file` field)")
    charset = dict(p.partition("=")[::2] for p in params).get("charset", "utf-8").strip('"')
    if charset not in ("utf-8", "utf8", "us-ascii"):
        raise Problem(415, f"send the file as UTF-8, not {charset}")
    data = _form_file(content_type, body) if media == MULTIPART else body
    try:
        return decode(data)
    except ImportFileError as exc:
        raise Problem(422, exc.reason, title="File not importable", field="file") from None


def _form_file(content_type: str, body: bytes) -> bytes:
    # The stdlib MIME parser reads form data well enough for one file, and needs no
    # new dependency (FastAPI's own form parsing wants python-multipart).
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    for part in message.iter_parts() if message.is_multipart() else ():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    raise Problem(422, "the form has no `file` field", field="file")
