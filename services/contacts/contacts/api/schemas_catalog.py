"""`GET /v1/schemas`: the JSON Schema of every event type the platform accepts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from crm_shared.app.auth import requires
from crm_shared.app.deps import RuntimeDep
from crm_shared.app.problems import Problem

router = APIRouter(prefix="/v1/schemas", tags=["events"])


@router.get("", dependencies=[requires("events:read")])
async def list_schemas(runtime: RuntimeDep) -> dict[str, Any]:
    """Every event type with the JSON Schema of its `data`."""
    schemas = runtime.registry.json_schemas()
    return {"types": [{"type": name, "schema": schema} for name, schema in schemas.items()]}


@router.get(
    "/{event_type}",
    dependencies=[requires("events:read")],
    responses={404: {"description": "unknown event type"}},
)
async def get_schema(event_type: str, runtime: RuntimeDep) -> dict[str, Any]:
    """The JSON Schema of one event type's `data`."""
    schema = runtime.registry.json_schemas().get(event_type)
    if schema is None:
        raise Problem(404, f"unknown event type {event_type!r}")
    return {"type": event_type, "schema": schema}
