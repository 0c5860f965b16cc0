"""Lifecycle replays the CDNOW sample with the event-time clock: its stage summary equals the
reference reading of the README's policy (tests/support/lifecycle_reference.py), at the end of
the data and as of a past date."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from crm_shared.messaging.topics import CUSTOMER_EVENTS, ensure_topics, with_dlq
from crm_shared.testing.broker import Broker
from lifecycle.bootstrap import create_app
from lifecycle.settings import LifecycleSettings
from tests.support.apps import asgi_client, running
from tests.support.cdnow import load_sample, purchase_events, purchase_times_by_customer
from tests.support.kafka import eventually
from tests.support.lifecycle_reference import stage_at, stage_counts

pytestmark = pytest.mark.broker

END = datetime(1998, 6, 30, tzinfo=UTC)  # the last purchase in the sample
CALIBRATION_END = datetime(1997, 9, 30, tzinfo=UTC)  # where the CLV literature splits it
CUSTOMERS = 2_357
SEND_CHUNK = 1_000


@pytest_asyncio.fixture(loop_scope="session")
async def lifecycle(database_url: str, broker: Broker, unique: str) -> AsyncIterator[FastAPI]:
    settings = LifecycleSettings(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"t{unique}.",
        fetch_max_wait_ms=10,
        clock="event-time",
    )
    # Settings ignore unknown fields, so a service without `clock` would run on the wall clock.
    assert settings.clock == "event-time"
    async with running(create_app(settings)) as app:
        yield app


async def publish(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    """Send canonical events keyed by customer, in order, awaiting acks a chunk at a time.

    One send at a time (tests/support/kafka.py `produce`) takes a round trip per event; queued
    sends to one partition still go out in order, so only the acks are gathered.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    await producer.start()
    try:
        for start in range(0, len(events), SEND_CHUNK):
            acks = [
                await producer.send(
                    topic,
                    json.dumps(event).encode(),
                    key=event["subject"].encode(),
                    headers=[("content-type", b"application/cloudevents+json")],
                )
                for event in events[start : start + SEND_CHUNK]
            ]
            await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def summary(client: httpx.AsyncClient, as_of: datetime | None = None) -> dict[str, Any]:
    params = {"as_of": as_of.strftime("%Y-%m-%dT%H:%M:%SZ")} if as_of else {}
    response = await client.get("/v1/stages/summary", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def one_customer_per_stage(history: dict[str, list[datetime]]) -> dict[str, str]:
    """The first customer (by id) in each stage the reference gives at END, with that stage."""
    first: dict[str, str] = {}
    for customer, times in sorted(history.items()):
        first.setdefault(stage_at(times, END), customer)
    return {customer: stage for stage, customer in first.items()}


async def test_a_replay_of_cdnow_gives_the_reference_stages_now_and_as_of_a_past_date(
    lifecycle: FastAPI, broker: Broker
) -> None:
    purchases = load_sample()
    history = purchase_times_by_customer(purchases)
    expected = stage_counts(history, END)
    expected_then = stage_counts(
        purchase_times_by_customer(purchases, until=CALIBRATION_END), CALIBRATION_END
    )
    settings = lifecycle.state.runtime.settings
    topic = f"{settings.topic_prefix}{CUSTOMER_EVENTS}"
    # Created here with the service's partitions: the broker would auto-create it otherwise.
    await ensure_topics(broker.bootstrap, with_dlq([topic]), partitions=settings.topic_partitions)
    await publish(broker.bootstrap, topic, purchase_events(purchases))

    async with asgi_client(lifecycle) as client:

        async def caught_up() -> dict[str, Any] | None:
            body = await summary(client)
            return body if body["counts"] == expected else None

        now = await eventually(caught_up, within=45.0, interval=0.5)
        assert sum(now["counts"].values()) == CUSTOMERS
        # The event-time clock stands at the last purchase, not at the wall clock.
        assert isinstance(now["as_of"], str), now
        assert datetime.fromisoformat(now["as_of"]) == END, now

        then = await summary(client, CALIBRATION_END)
        assert then["counts"] == expected_then
        assert sum(then["counts"].values()) == CUSTOMERS

        # One customer of each stage, read alone: counts that match could still hide swaps.
        for customer, stage in one_customer_per_stage(history).items():
            view = (await client.get(f"/v1/customers/{customer}/stage")).json()
            assert (view["stage"], view["purchases"]) == (stage, len(history[customer]))
