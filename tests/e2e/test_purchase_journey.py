"""End to end: every service as a process, the real broker, journeys through HTTP and Kafka."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from crm_shared.events import BATCH_CONTENT_TYPE
from crm_shared.messaging.kafka import decode_headers
from crm_shared.messaging.topics import INBOUND, ensure_topics, with_dlq
from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import SERVICES, Stack
from tests.support.events import purchase_json
from tests.support.kafka import eventually, produce, read_topic

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # Topics exist, with their partitions, before any service asks for their metadata.
    await ensure_topics(
        broker.bootstrap,
        with_dlq(
            ["crm.inbound", "crm.customer-events", "crm.lifecycle", "crm.scores", "crm.outreach"]
        ),
        partitions=4,
    )
    data_dir: Path = tmp_path_factory.mktemp("stack")
    stack = Stack(
        SERVICES, bootstrap=broker.bootstrap, data_dir=data_dir, env={"CRM_FETCH_MAX_WAIT_MS": "10"}
    )
    await stack.start_async()
    try:
        yield stack
    finally:
        await stack.stop_async()


async def stage_of(stack: Stack, customer: str) -> str | None:
    async with stack.client("lifecycle") as client:
        response = await client.get(f"/v1/customers/{customer}/stage")
    return response.json()["stage"] if response.status_code == 200 else None


async def test_purchases_posted_over_http_make_an_active_customer_in_lifecycle(
    stack: Stack,
) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    # Recent purchases: the services run on the wall clock, and old ones would be dormant.
    start = datetime.now(UTC) - timedelta(days=10)
    async with stack.client("contacts") as client:
        first = await client.post("/v1/events", json=purchase_json(customer, start=start))
        assert first.status_code == 202
        await eventually(lambda: _is(stage_of(stack, customer), "new"), within=30)
        batch = [
            purchase_json(customer, day=7, start=start),
            purchase_json(customer, day=9, start=start),
        ]
        response = await client.post(
            "/v1/events", content=json.dumps(batch), headers={"content-type": BATCH_CONTENT_TYPE}
        )
        assert response.json()["accepted"] == 2
    await eventually(lambda: _is(stage_of(stack, customer), "active"), within=30)
    async with stack.client("lifecycle") as client:
        stage = (await client.get(f"/v1/customers/{customer}/stage")).json()
    assert stage["purchases"] == 3


async def test_events_published_to_the_inbound_topic_reach_lifecycle_and_poison_is_set_aside(
    stack: Stack, broker: Broker
) -> None:
    customer = f"k-{uuid.uuid4().hex[:8]}"
    good = json.dumps(purchase_json(customer, start=datetime.now(UTC))).encode()
    poison_id = uuid.uuid4().hex
    poison = json.dumps({"id": poison_id, "specversion": "1.0", "type": "nonsense"}).encode()
    await produce(
        broker.bootstrap, INBOUND, [(customer.encode(), poison), (customer.encode(), good)]
    )
    await eventually(lambda: _is(stage_of(stack, customer), "new"), within=30)
    dead = await read_topic(broker.bootstrap, f"{INBOUND}.dlq", count=1)
    mine = [r for r in dead if r.value == poison]
    assert mine, "the poison message was not dead-lettered"
    assert decode_headers(mine[0].headers)["crm-dlq-reason"] == "source: Field required"


async def test_every_service_reports_ready_and_serves_its_openapi_and_metrics(
    stack: Stack,
) -> None:
    for name in SERVICES:
        async with stack.client(name) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200, (name, ready.text)
            assert ready.json()["service"] == name
            assert (await client.get("/openapi.json")).json()["info"]["title"] == f"CRM {name}"
            metrics = (await client.get("/metrics")).text
            assert "crm_http_requests_total" in metrics and "crm_outbox_backlog" in metrics


async def _is(value: Awaitable[str | None], expected: str) -> bool:
    return (await value) == expected
