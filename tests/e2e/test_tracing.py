"""End to end: the trace of an HTTP request follows its event through Kafka into the stage
change lifecycle publishes and into the log lines of the services downstream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from crm_shared import tracecontext
from crm_shared.messaging.kafka import decode_headers
from crm_shared.messaging.topics import LIFECYCLE, MAIN_TOPICS, ensure_topics, with_dlq
from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import SERVICES, Stack
from tests.support.events import purchase_json
from tests.support.kafka import eventually

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    await ensure_topics(broker.bootstrap, with_dlq(MAIN_TOPICS), partitions=4)
    data_dir: Path = tmp_path_factory.mktemp("traced-stack")
    # Debug level: consumers write a line per applied event, in the event's trace.
    env = {"CRM_FETCH_MAX_WAIT_MS": "10", "CRM_LOG_LEVEL": "DEBUG"}
    stack = Stack(SERVICES, bootstrap=broker.bootstrap, data_dir=data_dir, env=env)
    await stack.start_async()
    try:
        yield stack
    finally:
        await stack.stop_async()


async def stage_change(
    bootstrap: str, customer: str, to_stage: str, *, within: float = 30.0
) -> ConsumerRecord[bytes, bytes]:
    """The record of the customer's move to `to_stage` on crm.lifecycle."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(LIFECYCLE) or set()
        consumer.assign([TopicPartition(LIFECYCLE, p) for p in partitions])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                for record in batch:
                    event = json.loads(record.value) if record.key == customer.encode() else {}
                    if event.get("data", {}).get("to_stage") == to_stage:
                        return record
    finally:
        await consumer.stop()
    raise AssertionError(f"{customer} did not move to {to_stage} within {within}s")


def log_lines(stack: Stack, service: str) -> list[dict[str, Any]]:
    lines = []
    for line in stack[service].log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_a_requests_trace_reaches_the_stage_change_and_the_downstream_logs(
    stack: Stack, broker: Broker
) -> None:
    customer = f"t-{uuid.uuid4().hex[:8]}"
    caller = tracecontext.new_trace()
    purchase = purchase_json(customer, start=datetime.now(UTC) - timedelta(days=1))
    async with stack.client("contacts") as client:
        response = await client.post(
            "/v1/events", json=purchase, headers={"traceparent": caller.traceparent}
        )
    assert response.status_code == 202, response.text
    served = tracecontext.parse(response.headers["traceparent"])
    assert served is not None and served.trace_id == caller.trace_id

    stage_changed = await stage_change(broker.bootstrap, customer, "new")
    event = json.loads(stage_changed.value)
    assert event["type"] == "crm.lifecycle.stage_changed.v1" and event["data"]["to_stage"] == "new"
    assert event["data"]["caused_by"] == purchase["id"]
    in_header = tracecontext.parse(decode_headers(stage_changed.headers)["traceparent"])
    assert in_header is not None and in_header.trace_id == caller.trace_id
    assert event["traceparent"] == in_header.traceparent

    def traced_lines(service: str) -> list[dict[str, Any]]:
        return [
            line for line in log_lines(stack, service) if line.get("trace_id") == caller.trace_id
        ]

    for service in ("lifecycle", "scoring", "notifications"):
        lines = await eventually(lambda s=service: _async(traced_lines(s)), within=30)
        assert {line["service"] for line in lines} == {service}
    # Notifications consumed the stage change itself: the trace crossed two topics.
    applied = await eventually(
        lambda: _async(
            [
                line
                for line in log_lines(stack, "notifications")
                if line.get("event_id") == event["id"]
            ]
        ),
        within=30,
    )
    assert applied[0]["trace_id"] == caller.trace_id and applied[0]["topic"] == LIFECYCLE


async def _async(value: Any) -> Any:
    return value
