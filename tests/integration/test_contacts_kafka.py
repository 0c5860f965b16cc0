"""Contacts with the real broker: ingestion over HTTP and `crm.inbound`, duplicates, rejects,
a merge, outreach on the timeline, and what is published on `crm.customer-events`."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import func, select

from contacts.bootstrap import create_app
from contacts.settings import ContactsSettings
from crm_shared.messaging.kafka import decode_headers
from crm_shared.testing.broker import Broker
from tests.support.apps import asgi_client, running
from tests.support.events import T0, purchase_json
from tests.support.kafka import eventually, produce, read_topic


@pytest_asyncio.fixture(loop_scope="session")
async def contacts(database_url: str, broker: Broker, unique: str) -> AsyncIterator[FastAPI]:
    settings = ContactsSettings(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"t{unique}.",
        fetch_max_wait_ms=10,
        topic_partitions=2,
    )
    async with running(create_app(settings)) as app:
        yield app


def outreach(contact_id: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "crm/notifications",
        "type": "crm.outreach.sent.v1",
        "subject": contact_id,
        "time": T0.isoformat(),
        "data": {"delivery_id": "d1", "rule_id": "welcome", "channel": "email"},
    }


async def test_ingestion_over_http_and_kafka_with_duplicates_rejects_and_a_merge(
    contacts: FastAPI, broker: Broker
) -> None:
    prefix = contacts.state.runtime.settings.topic_prefix
    ada = purchase_json("email:ada@example.com", day=1)
    bob = purchase_json("ext:shop:bob", day=2)
    async with asgi_client(contacts) as client:
        assert (await client.post("/v1/events", json=ada)).status_code == 202
        await produce(
            broker.bootstrap,
            f"{prefix}crm.inbound",
            [
                (b"k", json.dumps(ada).encode()),  # a duplicate of the HTTP one
                (b"k", b"{definitely not json"),  # poison
                (b"k", json.dumps(purchase_json("email:@@")).encode()),  # unresolvable subject
                (b"k", json.dumps(bob).encode()),
                (b"k", json.dumps(bob).encode()),  # redelivered
            ],
        )

        async def both_known() -> Any:
            page = (await client.get("/v1/contacts")).json()["items"]
            return page if len(page) == 2 else None

        known = await eventually(both_known)
        people = {(c["profile"]["emails"] or ["bob"])[0]: c["id"] for c in known}
        ada_id, bob_id = people["ada@example.com"], people["bob"]
        merged = await client.post(f"/v1/contacts/{ada_id}/merge", json={"others": [bob_id]})
        assert merged.status_code == 200
        late = purchase_json("ext:shop:bob", day=3)
        await produce(broker.bootstrap, f"{prefix}crm.inbound", [(b"k", json.dumps(late).encode())])
        await produce(
            broker.bootstrap,
            f"{prefix}crm.outreach",
            [(ada_id.encode(), json.dumps(outreach(ada_id)).encode())],
        )

        async def timeline_complete() -> Any:
            items = (await client.get(f"/v1/contacts/{ada_id}/timeline")).json()["items"]
            return items if len(items) == 4 else None

        timeline = await eventually(timeline_complete)
    assert [e["event"]["type"] for e in timeline] == [
        "crm.outreach.sent.v1",
        "crm.purchase.completed.v1",
        "crm.purchase.completed.v1",
        "crm.purchase.completed.v1",
    ]  # in event-time order: T0, day 1, 2, 3

    dead = await read_topic(broker.bootstrap, f"{prefix}crm.inbound.dlq", count=2)
    reasons = sorted(decode_headers(r.headers)["crm-dlq-reason"] for r in dead)
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1].startswith("subject: '@@' is not a valid email address")

    # Two prospects, three purchases (one per distinct id), one merge; outreach not republished.
    published = await read_topic(broker.bootstrap, f"{prefix}crm.customer-events", count=6)
    kinds = sorted(json.loads(r.value)["type"] for r in published)
    assert (
        kinds
        == ["crm.contact.created.v1"] * 2
        + ["crm.contact.merged.v1"]
        + ["crm.purchase.completed.v1"] * 3
    )
    purchases = [
        json.loads(r.value)
        for r in published
        if json.loads(r.value)["type"] == "crm.purchase.completed.v1"
    ]
    assert all(r.key.decode() == json.loads(r.value)["subject"] for r in published)
    late_copy = next(p for p in purchases if p["id"] == late["id"])
    assert (late_copy["subject"], late_copy["crmidentity"]) == (ada_id, "ext:shop:bob")


async def test_the_event_store_is_the_inbound_consumers_inbox(
    contacts: FastAPI, broker: Broker
) -> None:
    """Contacts' consumers keep no inbox rows: the event store's ids tell what they applied.
    An event delivered again in a later batch is counted as a duplicate and neither stored
    nor published twice; a refused event is refused again (it was never stored)."""
    runtime = contacts.state.runtime
    prefix = runtime.settings.topic_prefix
    cleo = purchase_json("ext:shop:cleo", day=1)
    refused = purchase_json("email:@@", day=2)
    async with asgi_client(contacts) as client:
        await produce(
            broker.bootstrap,
            f"{prefix}crm.inbound",
            [(b"k", json.dumps(cleo).encode()), (b"k", json.dumps(refused).encode())],
        )
        first = await read_topic(broker.bootstrap, f"{prefix}crm.customer-events", count=2)
        cleo_id = next(json.loads(r.value)["subject"] for r in first)
        marker = purchase_json("ext:shop:cleo", day=3)
        await produce(
            broker.bootstrap,
            f"{prefix}crm.inbound",
            [
                (b"k", json.dumps(cleo).encode()),
                (b"k", json.dumps(refused).encode()),
                (b"k", json.dumps(marker).encode()),
            ],
        )

        async def both_on_the_timeline() -> Any:
            items = (await client.get(f"/v1/contacts/{cleo_id}/timeline")).json()["items"]
            return items if len(items) == 2 else None

        timeline = await eventually(both_on_the_timeline)
    assert [e["event"]["id"] for e in timeline] == [cleo["id"], marker["id"]]
    value = runtime.metrics.registry.get_sample_value

    async def duplicates_counted() -> Any:
        # Counted just after the commit that made the timeline readable, so polled as well.
        return value("crm_events_duplicate_total", {"consumer": "inbound"})

    assert await eventually(duplicates_counted) == 1
    dead = await read_topic(broker.bootstrap, f"{prefix}crm.inbound.dlq", count=2)
    assert {json.loads(r.value)["id"] for r in dead} == {refused["id"]}
    published = await read_topic(broker.bootstrap, f"{prefix}crm.customer-events", count=3)
    assert sorted(json.loads(r.value)["type"] for r in published) == [
        "crm.contact.created.v1",
        "crm.purchase.completed.v1",
        "crm.purchase.completed.v1",
    ]
    async with runtime.db.read() as conn:
        inbox_rows = await conn.scalar(select(func.count()).select_from(runtime.tables.inbox))
    assert inbox_rows == 0
