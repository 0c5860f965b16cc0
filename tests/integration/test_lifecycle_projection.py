"""Lifecycle's projection: consumed batches become stages, transitions and stage-change events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest_asyncio
from fastapi import FastAPI

from crm_shared.app.runtime import Runtime
from crm_shared.events import CATALOG, CloudEvent
from crm_shared.messaging.topics import LIFECYCLE
from lifecycle.bootstrap import create_app
from lifecycle.handlers.customer_events import CustomerEventsHandler
from lifecycle.settings import LifecycleSettings
from tests.support.apps import api_client
from tests.support.events import login_json, purchase

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def app(database_url: str) -> FastAPI:
    return create_app(LifecycleSettings(database_url=database_url))


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app) as client:
        yield client


async def apply(app: FastAPI, events: list[object]) -> None:
    runtime: Runtime = app.state.runtime
    handler = CustomerEventsHandler(runtime.outbox, lambda: NOW)
    async with runtime.db.transaction() as conn:
        await handler(conn, events)  # type: ignore[arg-type]


async def test_batches_fold_into_stages_readable_over_http(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    login = CATALOG.validate(CloudEvent.model_validate(login_json("c2")))
    await apply(app, [purchase("c1", day=1), login, purchase("c1", day=3)])
    await apply(app, [purchase("c2", day=4), purchase("c2", day=5)])
    c1 = (await client.get("/v1/customers/c1/stage")).json()
    c2 = (await client.get("/v1/customers/c2/stage")).json()
    assert (c1["stage"], c1["purchases"]) == ("active", 2)
    assert (c2["stage"], c2["purchases"]) == ("active", 2)
    transitions = (await client.get("/v1/customers/c2/transitions")).json()
    assert [(t["from_stage"], t["to_stage"], t["reason"]) for t in transitions] == [
        (None, "prospect", "identified"),
        ("prospect", "new", "first_purchase"),
        ("new", "active", "repeat_purchase"),
    ]


async def test_every_transition_is_published_as_a_stage_change_keyed_by_customer(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    first = purchase("c9", day=1, event_id="p1")
    await apply(app, [first])
    runtime: Runtime = app.state.runtime
    async with runtime.db.read() as conn:
        pending = await runtime.outbox.pending(conn, limit=10)
    assert [(m.topic, m.key) for m in pending] == [(LIFECYCLE, "c9")] * 2
    changes = [CATALOG.validate(CloudEvent.model_validate(json.loads(m.payload))) for m in pending]
    assert [(c.data.from_stage, c.data.to_stage, c.data.caused_by) for c in changes] == [  # type: ignore[attr-defined]
        (None, "prospect", "p1"),
        ("prospect", "new", "p1"),
    ]
    assert changes[1].time == first.time


async def test_an_unknown_customer_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/customers/nobody/stage")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "nobody" in response.json()["detail"]
