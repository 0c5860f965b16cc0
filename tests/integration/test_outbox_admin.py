"""Parked outbox messages as operators meet them, in a running service with the real broker:
contacts' relay parks a canonical event larger than it may send, goes on with the next one,
lists it under `GET /v1/admin/outbox/parked`, counts it in /metrics, and tries it again on
`POST /v1/admin/republish`. Every service serves both routes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contacts.bootstrap import create_app
from contacts.settings import ContactsSettings
from crm_shared.testing.broker import Broker
from tests.support.apps import api_client, asgi_client, running, service_app
from tests.support.events import purchase_json
from tests.support.kafka import eventually, read_topic


def metric(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


async def test_a_canonical_event_over_the_relays_limit_is_parked_listed_and_retried(
    database_url: str, broker: Broker, unique: str
) -> None:
    settings = ContactsSettings(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"t{unique}.",
        fetch_max_wait_ms=10,
        relay_max_message_bytes=2048,
    )
    big = purchase_json("ext:shop:big", day=1)
    big["type"] = "crm.feedback.submitted.v1"
    big["data"] = {"nps": 2, "comment": "x" * 3000}
    small = purchase_json("ext:shop:small", day=2)
    async with running(create_app(settings)) as app, asgi_client(app) as client:
        runtime = app.state.runtime
        for event in (big, small):
            assert (await client.post("/v1/events", json=event)).status_code == 202

        async def listed() -> Any:
            page = (await client.get("/v1/admin/outbox/parked")).json()
            return page if page["items"] else None

        page = await eventually(listed)
        published = await read_topic(
            broker.bootstrap, f"t{unique}.crm.customer-events", count=3
        )  # two contacts created and the small purchase
        assert sorted(json.loads(r.value)["type"] for r in published) == [
            "crm.contact.created.v1",
            "crm.contact.created.v1",
            "crm.purchase.completed.v1",
        ]
        [item] = page["items"]
        assert item["event_id"] == big["id"] and page["next_after"] is None
        assert item["size"] > 3000
        assert "more than the 2048 the relay sends" in item["reason"]

        async def marked() -> Any:  # the records reach the topic before the relay's commit
            await runtime.relay.refresh_gauges()
            text = (await client.get("/metrics")).text
            return text if metric(text, "crm_outbox_backlog") == 0 else None

        text = await eventually(marked)
        assert metric(text, "crm_outbox_parked") == 1
        assert metric(text, "crm_relay_parked_total") == 1

        again = await client.post("/v1/admin/republish", json={"from_id": item["id"]})
        assert again.status_code == 200
        assert again.json()["republished"] >= 1  # it, and what was published after it

        async def parked_twice() -> Any:
            text = (await client.get("/metrics")).text
            return metric(text, "crm_relay_parked_total") == 2

        await eventually(parked_twice)  # the limit still holds: parked again, listed again
        assert [i["event_id"] for i in (await listed())["items"]] == [big["id"]]
        paged = (await client.get("/v1/admin/outbox/parked", params={"after": item["id"]})).json()
        assert paged == {"items": [], "next_after": None}


@pytest.mark.parametrize("service", ["lifecycle", "scoring", "notifications"])
async def test_every_service_serves_its_outbox_operations(service: str, database_url: str) -> None:
    app = service_app(service, database_url)
    async with api_client(app) as client:
        parked = await client.get("/v1/admin/outbox/parked", params={"limit": 5})
        republished = await client.post("/v1/admin/republish", json={"from_id": 1})
        refused = await client.get("/v1/admin/outbox/parked", params={"limit": 0})
    assert parked.status_code == 200 and parked.json() == {"items": [], "next_after": None}
    assert republished.status_code == 200
    assert republished.json() == {"republished": 0, "high_water": 0}
    assert refused.status_code == 422
