"""Every service's AsyncAPI document: every topic and event type, the registry's schemas,
what the service sends and receives, and `GET /asyncapi.json` next to `/openapi.json`."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from crm_shared.app.asyncapi import service_asyncapi
from crm_shared.events import CATALOG
from crm_shared.events.asyncapi import ServiceTopics, document, message_key
from crm_shared.events.registry import EventData, EventRegistry
from crm_shared.messaging.topics import (
    ALL_TOPICS,
    CUSTOMER_EVENTS,
    HEARTBEAT,
    INBOUND,
    LIFECYCLE,
    OUTREACH,
    SCORES,
    dlq_topic,
)

# Who consumes and publishes what (DESIGN.md's table, plus contacts taking outreach into
# the timeline and notifications sending consent changes to crm.inbound).
EXPECTED = {
    "contacts": ({INBOUND, OUTREACH}, {CUSTOMER_EVENTS}),
    "lifecycle": ({CUSTOMER_EVENTS}, {LIFECYCLE}),
    "scoring": ({CUSTOMER_EVENTS, LIFECYCLE}, {SCORES}),
    "notifications": ({LIFECYCLE, SCORES, CUSTOMER_EVENTS}, {OUTREACH, INBOUND}),
}
KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")  # what AsyncAPI 3 allows as a component key


def app_of(service: str, **settings: Any) -> FastAPI:
    module = importlib.import_module(f"{service}.bootstrap")
    if not settings:
        app: FastAPI = module.create_app()
        return app
    settings_module = importlib.import_module(f"{service}.settings")
    settings_type = getattr(settings_module, f"{service.capitalize()}Settings")
    app = module.create_app(settings_type(**settings))
    return app


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def service_doc(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, service_asyncapi(app_of(request.param))


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def channel_of(operation: dict[str, Any]) -> str:
    ref: str = operation["channel"]["$ref"]
    return ref.removeprefix("#/channels/")


def test_every_registered_event_type_is_a_message_whose_data_is_its_json_schema(
    service_doc: tuple[str, dict[str, Any]],
) -> None:
    _, doc = service_doc
    messages = doc["components"]["messages"]
    schemas = CATALOG.json_schemas()
    assert {m["name"] for m in messages.values()} >= set(schemas)
    for type_name, schema in schemas.items():
        message = messages[message_key(type_name)]
        envelope, event = message["payload"]["allOf"]
        assert resolve(doc, envelope["$ref"])["title"] == "CloudEvent"
        assert resolve(doc, event["properties"]["data"]["$ref"]) == schema
        assert schema["type"] == "object" and isinstance(schema.get("properties", {}), dict)
    assert "traceparent" in doc["components"]["schemas"]["CloudEvent"]["properties"]


def test_every_reference_resolves_and_every_key_is_a_valid_asyncapi_key(
    service_doc: tuple[str, dict[str, Any]],
) -> None:
    _, doc = service_doc
    assert doc["asyncapi"] == "3.0.0"
    for ref in refs(doc):
        resolve(doc, ref)
    for section in (doc["channels"], doc["operations"], *doc["components"].values()):
        assert all(KEY.match(key) for key in section), sorted(section)


def test_every_message_travels_on_a_channel_and_every_topic_is_a_channel(
    service_doc: tuple[str, dict[str, Any]],
) -> None:
    _, doc = service_doc
    carried = {key for channel in doc["channels"].values() for key in channel["messages"]}
    assert carried == set(doc["components"]["messages"])
    assert set(doc["channels"]) == {*ALL_TOPICS, HEARTBEAT}
    on = {name: set(channel["messages"]) for name, channel in doc["channels"].items()}
    assert on[LIFECYCLE] == {"crm.lifecycle.stage_changed.v1"}
    assert on[SCORES] == {"crm.score.changed.v1"}
    assert "crm.purchase.completed.v1" in on[INBOUND] & on[CUSTOMER_EVENTS]
    assert "custom" in on[INBOUND] and "crm.outreach.sent.v1" in on[OUTREACH]
    assert on[dlq_topic(INBOUND)] == {"DeadLetter"}


def test_each_service_lists_the_topics_it_consumes_and_publishes(
    service_doc: tuple[str, dict[str, Any]],
) -> None:
    service, doc = service_doc
    consumes, publishes = EXPECTED[service]
    operations = doc["operations"].values()
    received = {channel_of(o) for o in operations if o["action"] == "receive"}
    sent = {channel_of(o) for o in operations if o["action"] == "send"}
    assert received == consumes
    assert sent == publishes | {dlq_topic(t) for t in consumes} | {HEARTBEAT}
    for operation in operations:
        channel = f"#/channels/{channel_of(operation)}/messages/"
        assert operation["messages"], operation
        assert all(m["$ref"].startswith(channel) for m in operation["messages"])
    groups = [o["bindings"]["kafka"]["groupId"]["enum"][0] for o in operations if "bindings" in o]
    assert groups and all(g.startswith(f"crm-{service}.") for g in groups)


def test_addresses_and_servers_follow_the_settings() -> None:
    app = app_of(
        "lifecycle", topic_prefix="staging.", kafka_bootstrap="k1:9092,k2:9092", topic_partitions=12
    )
    doc = service_asyncapi(app)
    channel = doc["channels"][LIFECYCLE]
    assert channel["address"] == channel["bindings"]["kafka"]["topic"] == "staging.crm.lifecycle"
    assert channel["bindings"]["kafka"]["partitions"] == 12
    assert doc["channels"]["crm.lifecycle.dlq"]["address"] == "staging.crm.lifecycle.dlq"
    assert [s["host"] for s in doc["servers"].values()] == ["k1:9092", "k2:9092"]
    assert doc["info"]["title"] == "CRM lifecycle"


def test_nested_models_are_referenced_from_the_components_not_the_documents_root() -> None:
    registry = EventRegistry()

    class Line(BaseModel):
        sku: str

    @registry.register("test.order.placed.v1")
    class OrderPlaced(EventData):
        lines: list[Line]

    doc = document(
        ServiceTopics("t", publishes=[CUSTOMER_EVENTS]), registry, title="t", version="1"
    )
    for ref in refs(doc):
        resolve(doc, ref)
    assert doc["components"]["schemas"]["test.order.placed.v1.Line"]["properties"]["sku"]


async def test_the_document_is_served_without_a_token_and_kept_out_of_the_openapi_schema() -> None:
    app = app_of("scoring")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/asyncapi.json")
        assert (await client.get("/v1/models")).status_code == 401  # the API does want one
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "CRM scoring"
    assert "receive.lifecycle.crm.lifecycle" in response.json()["operations"]
    assert not any("asyncapi" in path for path in app.openapi()["paths"])


async def test_with_private_docs_there_is_no_asyncapi_document_either() -> None:
    app = app_of("scoring", docs_public=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/asyncapi.json")).status_code == 404
        assert (await client.get("/openapi.json")).status_code == 404
