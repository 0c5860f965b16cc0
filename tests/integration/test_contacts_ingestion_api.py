"""`POST /v1/events` on contacts: outcomes per event, limits, and what reaches the outbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from unittest.mock import ANY

import httpx
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from contacts.bootstrap import create_app
from contacts.settings import ContactsSettings
from contacts.store.tables import identifiers
from crm_shared.app.runtime import Runtime
from crm_shared.events import BATCH_CONTENT_TYPE
from crm_shared.messaging.topics import CUSTOMER_EVENTS
from tests.support.apps import api_client
from tests.support.db import statements_of
from tests.support.events import login_json, purchase, purchase_json

BATCH = {"content-type": BATCH_CONTENT_TYPE}
CREATED = "crm.contact.created.v1"


@pytest_asyncio.fixture(loop_scope="session")
async def app(database_url: str) -> FastAPI:
    return create_app(
        ContactsSettings(database_url=database_url, ingest_max_events=5, ingest_max_bytes=20_000)
    )


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app) as client:
        yield client


async def outbox_of(app: FastAPI) -> list[tuple[str, str, str, str]]:
    """What contacts will publish: (topic, key, event type, event id)."""
    runtime: Runtime = app.state.runtime
    async with runtime.db.read() as conn:
        pending = await runtime.outbox.pending(conn, limit=100)
    return [
        (m.topic, m.key, json.loads(m.payload)["type"], json.loads(m.payload)["id"])
        for m in pending
    ]


async def published_of(app: FastAPI) -> list[tuple[str, str, datetime]]:
    """What contacts will publish: (key, event type, event time)."""
    runtime: Runtime = app.state.runtime
    async with runtime.db.read() as conn:
        pending = await runtime.outbox.pending(conn, limit=100)
    payloads = [(m.key, json.loads(m.payload)) for m in pending]
    return [(key, e["type"], datetime.fromisoformat(e["time"])) for key, e in payloads]


async def activity_of(app: FastAPI) -> list[tuple[str, str]]:
    """Published customer activity (not contact records): (key, event id)."""
    return [(key, i) for _, key, t, i in await outbox_of(app) if not t.startswith("crm.contact.")]


async def test_one_accepted_event_answers_202_and_is_published_keyed_by_customer(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    event = purchase_json("c1")
    response = await client.post("/v1/events", json=event)
    assert response.status_code == 202
    assert response.json() == {"id": event["id"], "status": "accepted", "contact_id": "c1"}
    assert await outbox_of(app) == [
        (CUSTOMER_EVENTS, "c1", "crm.contact.created.v1", ANY),
        (CUSTOMER_EVENTS, "c1", "crm.purchase.completed.v1", event["id"]),
    ]


async def test_a_customer_first_named_by_last_years_events_is_created_as_of_the_first(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    # Event-time clocks downstream take the highest time they see: a contact dated today
    # would move a replay of last year's purchases to today.
    last_year = datetime(2025, 3, 1, tzinfo=UTC)
    body = [purchase_json("c1", start=last_year, day=d) for d in (5, 2)] + [
        purchase_json("c2", start=datetime.now(UTC) + timedelta(days=30))
    ]
    response = await client.post("/v1/events", content=json.dumps(body), headers=BATCH)
    assert response.json()["accepted"] == 3
    created = {key: time for key, type_, time in await published_of(app) if type_ == CREATED}
    assert created["c1"] == last_year + timedelta(days=2)
    # Never after now: an event from the future does not date its contact there.
    assert created["c2"] <= datetime.now(UTC)


async def test_sending_an_accepted_event_again_is_a_duplicate_not_a_second_event(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    event = purchase_json("c1")
    await client.post("/v1/events", json=event)
    again = await client.post("/v1/events", json=event)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(await activity_of(app)) == 1
    timeline = (await client.get("/v1/contacts/c1/timeline")).json()
    assert [e["event"]["id"] for e in timeline["items"]] == [event["id"]]


async def test_a_rejected_event_answers_422_problem_naming_the_field(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    event = {**purchase_json("c1"), "data": {"order_id": "o1", "currency": "EUR"}}
    response = await client.post("/v1/events", json=event)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["detail"] == "data.amount: Field required" and body["field"] == "data.amount"
    assert await outbox_of(app) == []


async def test_a_contact_id_too_long_for_its_streams_is_refused_and_others_go_on(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    longest, too_long = "c" * 190, "c" * 191
    refused, accepted, good = await asyncio.gather(  # posted together: one shared transaction
        client.post("/v1/events", json=purchase_json(too_long)),
        client.post("/v1/events", json=purchase_json(longest)),
        client.post("/v1/events", json=purchase_json("c1")),
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == "subject: a contact id has at most 190 characters"
    assert (accepted.status_code, good.status_code) == (202, 202)
    assert {key for key, _ in await activity_of(app)} == {longest, "c1"}


async def test_one_new_customer_named_on_two_paths_at_once_becomes_one_prospect(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ingestor, runtime = app.state.ingestor, app.state.runtime

    async def inbound(n: int) -> None:  # the crm.inbound consumer's transaction
        async with runtime.db.transaction() as conn:
            await ingestor.on_inbound(conn, [purchase(f"email:twice{n}@example.com", day=1)])

    async def posted(n: int) -> None:  # a POST /v1/events at the same moment
        [outcome] = await ingestor.ingest([purchase_json(f"email:twice{n}@example.com", day=2)])
        assert outcome.status == "accepted"

    for n in range(5):
        await asyncio.gather(inbound(n), posted(n))
    async with runtime.db.read() as conn:
        owners = (
            await conn.execute(select(identifiers.c.identifier, identifiers.c.contact_id))
        ).all()
    for n in range(5):
        assert len([o for o in owners if o.identifier == f"email:twice{n}@example.com"]) == 1


async def test_an_event_time_outside_the_calendar_in_utc_answers_422(
    client: httpx.AsyncClient,
) -> None:
    event = {**purchase_json("c1"), "time": "0001-01-01T00:00:00+01:00"}  # the year 0 in UTC
    response = await client.post("/v1/events", json=event)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "time: time is out of range (years 1 to 9999 in UTC)"


async def test_a_batch_answers_with_an_outcome_per_event_in_order(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    first, login = purchase_json("c1"), login_json("c2")
    await client.post("/v1/events", json=first)
    bad = {**purchase_json("c3"), "type": "crm.unknown.v1"}
    body = [first, login, bad, login]
    response = await client.post("/v1/events", content=json.dumps(body), headers=BATCH)
    assert response.status_code == 200
    result = response.json()
    assert [r["status"] for r in result["results"]] == [
        "duplicate",
        "accepted",
        "rejected",
        "duplicate",
    ]
    assert result["results"][2]["reason"] == "type: unknown event type 'crm.unknown.v1'"
    assert (result["accepted"], result["duplicates"], result["rejected"]) == (1, 2, 1)
    assert [key for key, _ in await activity_of(app)] == ["c1", "c2"]


async def test_limits_and_malformed_bodies_get_clear_problems(client: httpx.AsyncClient) -> None:
    too_many = [purchase_json("c1") for _ in range(6)]
    cases = [
        (json.dumps(too_many), BATCH, 413, "at most 5 events"),
        (
            json.dumps([purchase_json("c1", amount="1" * 10)] * 2 + ["x" * 20_000]),
            BATCH,
            413,
            "exceeds 20000 bytes",
        ),
        ("{not json", {"content-type": "application/json"}, 400, "not valid JSON"),
        (json.dumps(purchase_json("c1")), BATCH, 422, "must be a JSON array"),
        ("[]", BATCH, 422, "the batch is empty"),
        ("42", {"content-type": "application/json"}, 422, "an event object or an array"),
        ("<a/>", {"content-type": "application/xml"}, 415, "unsupported content type"),
    ]
    for body, headers, status, detail in cases:
        response = await client.post("/v1/events", content=body, headers=headers)
        assert response.status_code == status, (body[:40], response.text)
        assert detail in response.json()["detail"]
        assert response.headers["content-type"] == "application/problem+json"


async def test_unknown_routes_and_bad_parameters_are_problems_too(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/v1/nowhere")
    assert missing.status_code == 404 and missing.json()["title"] == "Not Found"
    bad = await client.get("/v1/contacts/c1/timeline", params={"limit": 0})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "query.limit"


async def test_the_event_store_and_the_outbox_keep_one_sealing_of_a_new_contact(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    # Sealed once per transaction: the same ciphertext in both tables (two sealings would
    # differ in their random nonces).
    response = await client.post("/v1/events", json=purchase_json("email:ann@shop.com"))
    assert response.status_code == 202
    runtime: Runtime = app.state.runtime
    events, outbox = runtime.tables.events, runtime.tables.outbox
    async with runtime.db.read() as conn:
        stored = (
            await conn.execute(select(events.c.envelope).where(events.c.type == CREATED))
        ).scalar_one()
        queued = (
            await conn.execute(select(outbox.c.payload).where(outbox.c.event_id == stored["id"]))
        ).scalar_one()
    profile = stored["data"]["profile"]
    assert isinstance(profile, str) and profile.startswith("crm-sealed:")
    assert json.loads(queued)["data"]["profile"] == profile


async def test_a_custom_events_numbers_and_text_come_back_exactly_as_sent(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Bodies are read with orjson, which would read integers beyond 64 bits as floats:
    such a body keeps the json module's exact reading."""
    data = {
        "account": 123456789012345678901234567890,
        "limits": [2**63 - 1, -(2**63), 2**64, 0.1, 1e300],
        "label": "Zoë 東京",
        "nested": {"empty": {}, "none": None, "list": []},
    }
    event = {**login_json("c-json"), "type": "custom.account.linked", "data": data}
    sent = await client.post(
        "/v1/events", content=json.dumps(event), headers={"content-type": "application/json"}
    )
    assert sent.status_code == 202, sent.text
    timeline = (await client.get("/v1/contacts/c-json/timeline")).json()
    [stored] = [e["event"] for e in timeline["items"] if e["event"]["id"] == event["id"]]
    assert stored["data"] == data


async def test_a_new_customers_first_event_reads_no_stream_ends_and_no_keys(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """The prospect made for an unknown customer is new: its streams are empty and it has
    no key, so neither is looked up; its next event appends after what the first wrote."""
    runtime: Runtime = app.state.runtime
    with statements_of(runtime.db) as statements:
        first = await client.post("/v1/events", json=purchase_json("c-new"))
        on_first = list(statements)
        second = await client.post("/v1/events", json=purchase_json("c-new", day=1))
    assert first.status_code == second.status_code == 202
    assert not [s for s in on_first if "MAX(EVENTS.VERSION)" in s or "FROM CONTACT_KEYS" in s]
    assert any("MAX(EVENTS.VERSION)" in s for s in statements[len(on_first) :])
    contact = first.json()["contact_id"]
    async with runtime.db.read() as conn:
        rows = await conn.execute(
            select(runtime.tables.events.c.stream_id, runtime.tables.events.c.version)
            .where(runtime.tables.events.c.stream_id.contains(contact))
            .order_by(runtime.tables.events.c.position)
        )
        versions = [(stream.split("-")[0], version) for stream, version in rows]
    assert versions == [("contact", 1), ("timeline", 1), ("timeline", 2)]
