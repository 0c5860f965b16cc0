"""One trace from an HTTP request through the outbox, Kafka headers and the consumers, into
the events each service publishes in reaction and the log lines it writes meanwhile."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from contacts.bootstrap import create_app as contacts_app
from contacts.settings import ContactsSettings
from crm_shared import tracecontext
from crm_shared.app.logging import JsonFormatter
from crm_shared.app.metrics import Metrics
from crm_shared.app.runtime import Runtime
from crm_shared.events import CATALOG, CloudEvent, Event, EventData, parse_envelope
from crm_shared.messaging.consumer import BatchProcessor
from crm_shared.messaging.kafka import decode_headers, make_producer
from crm_shared.messaging.relay import OutboxRelay
from crm_shared.store.inbox import Inbox
from crm_shared.store.outbox import Outbox, OutgoingMessage, PendingMessage
from crm_shared.testing.broker import Broker
from crm_shared.tracecontext import TraceContext
from lifecycle.bootstrap import create_app as lifecycle_app
from lifecycle.settings import LifecycleSettings
from notifications.bootstrap import create_app as notifications_app
from notifications.bootstrap import seed
from notifications.settings import NotificationsSettings
from tests.integration.test_batch_consumer import NoDeadLetters, encoded
from tests.support.apps import api_client
from tests.support.db import CoreDb
from tests.support.events import purchase_json
from tests.support.kafka import make_topic, read_topic

NOON = datetime(2026, 6, 10, 10, 0, tzinfo=UTC)


def traced(raw: dict[str, Any], trace: TraceContext) -> Event[EventData]:
    return CATALOG.validate(parse_envelope({**raw, "traceparent": trace.traceparent}))


async def outbox_of(runtime: Runtime) -> list[PendingMessage]:
    async with runtime.db.read() as conn:
        return await runtime.outbox.pending(conn, limit=100)


def trace_of(message: PendingMessage) -> TraceContext | None:
    """The trace a published message carries, checking that headers and event agree."""
    in_event = json.loads(message.payload).get("traceparent")
    assert message.headers.get("traceparent") == in_event
    return tracecontext.parse(in_event)


class Capture:
    """A handler that notes the traces of what it is given and of the work in hand."""

    def __init__(self) -> None:
        self.traces: list[str | None] = []
        self.current: list[TraceContext | None] = []

    async def __call__(self, conn: AsyncConnection, events: list[Event[EventData]]) -> None:
        self.traces += [e.envelope.traceparent for e in events]
        self.current.append(tracecontext.current())


def record(value: bytes, offset: int, headers: list[tuple[str, bytes]]) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord("t", 0, offset, 0, 0, b"k", value, None, 1, len(value), headers)


async def consume(core: CoreDb, records: list[ConsumerRecord[Any, Any]]) -> Capture:
    handler = Capture()
    await BatchProcessor(
        name="test",
        db=core.db,
        inbox=Inbox(core.tables, "test"),
        registry=CATALOG,
        handler=handler,
        dead_letters=NoDeadLetters(),
        metrics=Metrics("t"),
    ).process(records)
    return handler


async def test_a_consumed_event_traced_in_headers_only_carries_that_trace(core: CoreDb) -> None:
    trace = tracecontext.new_trace()
    seen = await consume(core, [record(encoded(customer="c1"), 0, [("traceparent", b"")])])
    assert seen.traces == [None]
    header = [("traceparent", trace.traceparent.encode())]
    seen = await consume(core, [record(encoded(customer="c1"), 1, header)])
    assert seen.traces == [trace.traceparent]
    # A batch of one is applied in its event's trace, in a span of its own.
    work = seen.current[0]
    assert work is not None and work.trace_id == trace.trace_id
    assert work.span_id != trace.span_id


async def test_the_events_own_trace_wins_over_a_header_and_a_batch_has_no_single_trace(
    core: CoreDb,
) -> None:
    own, other = tracecontext.new_trace(), tracecontext.new_trace()
    value = json.dumps({**purchase_json("c1"), "traceparent": own.traceparent}).encode()
    header = [("traceparent", other.traceparent.encode())]
    seen = await consume(core, [record(value, 0, header), record(encoded(customer="c2"), 1, [])])
    assert seen.traces == [own.traceparent, None]
    assert seen.current == [None]


async def test_the_relay_puts_the_events_trace_in_the_kafka_headers(
    core: CoreDb, broker: Broker
) -> None:
    topic = await make_topic(broker.bootstrap, "traced")
    trace = tracecontext.parse(f"00-{'ab' * 16}-{'cd' * 8}-01", "vendor=x")
    event = CloudEvent.model_validate(purchase_json("c1")).with_trace(trace)
    async with core.db.transaction() as conn:
        await Outbox(core.tables).add(conn, [OutgoingMessage(topic, "c1", event)], NOON)
    producer = make_producer(broker.bootstrap, client_id="test-trace")
    await producer.start()
    try:
        await OutboxRelay(core.db, Outbox(core.tables), producer, Metrics("t")).publish_pending()
    finally:
        await producer.stop()
    [published] = await read_topic(broker.bootstrap, topic, count=1)
    headers = decode_headers(published.headers)
    assert headers["traceparent"] == f"00-{'ab' * 16}-{'cd' * 8}-01"
    assert headers["tracestate"] == "vendor=x"
    assert json.loads(published.value)["traceparent"] == headers["traceparent"]


@pytest.fixture
def contacts(database_url: str) -> FastAPI:
    return contacts_app(ContactsSettings(database_url=database_url))


async def test_events_posted_over_http_join_the_requests_trace(contacts: FastAPI) -> None:
    caller = tracecontext.new_trace()
    async with api_client(contacts) as client:
        response = await client.post(
            "/v1/events",
            json=purchase_json("email:ada@example.com"),
            headers={"traceparent": caller.traceparent},
        )
        assert response.status_code == 202, response.text
        served = tracecontext.parse(response.headers["traceparent"])
        published = await outbox_of(contacts.state.runtime)
    assert served is not None and served.trace_id == caller.trace_id
    # The purchase and the prospect contact it created.
    assert {json.loads(m.payload)["type"] for m in published} == {
        "crm.purchase.completed.v1",
        "crm.contact.created.v1",
    }
    traces = [trace_of(m) for m in published]
    assert None not in traces
    assert {t.trace_id for t in traces if t is not None} == {caller.trace_id}
    assert len({t.span_id for t in traces if t is not None}) == 2


async def test_an_event_sent_with_its_own_trace_keeps_it(contacts: FastAPI) -> None:
    own = tracecontext.new_trace()
    async with api_client(contacts) as client:
        response = await client.post(
            "/v1/events",
            json={**purchase_json("c1", event_id="order-1"), "traceparent": own.traceparent},
        )
        assert response.status_code == 202, response.text
        published = await outbox_of(contacts.state.runtime)
    [purchase] = [m for m in published if json.loads(m.payload)["id"] == "order-1"]
    assert trace_of(purchase) == own


@pytest.fixture
async def lifecycle(database_url: str) -> AsyncIterator[FastAPI]:
    app = lifecycle_app(LifecycleSettings(database_url=database_url, clock="event-time"))
    async with api_client(app):
        yield app


async def test_a_stage_change_joins_the_trace_of_the_event_that_caused_it(
    lifecycle: FastAPI,
) -> None:
    first, second = tracecontext.new_trace(), tracecontext.new_trace()
    events = [
        traced(purchase_json("c1"), first),
        traced(purchase_json("c2"), second),
        CATALOG.validate(parse_envelope(purchase_json("c3"))),
    ]
    runtime: Runtime = lifecycle.state.runtime
    async with runtime.db.transaction() as conn:
        await lifecycle.state.lifecycle.on_customer_events(conn, events)
    published = {m.key: trace_of(m) for m in await outbox_of(runtime)}
    assert published.keys() == {"c1", "c2", "c3"}
    assert published["c1"] is not None and published["c1"].trace_id == first.trace_id
    assert published["c1"].span_id != first.span_id
    assert published["c2"] is not None and published["c2"].trace_id == second.trace_id
    assert published["c3"] is None


@pytest.fixture
def outreach_log() -> Iterator[list[dict[str, Any]]]:
    """The JSON lines the notifications log channel writes."""
    lines: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    handler = Keep()
    handler.setFormatter(JsonFormatter("notifications"))
    logger = logging.getLogger("crm.outreach")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


async def test_a_message_goes_out_in_the_trace_of_the_stage_change_that_triggered_it(
    database_url: str, outreach_log: list[dict[str, Any]]
) -> None:
    app = notifications_app(NotificationsSettings(database_url=database_url))  # email: the log
    trace = tracecontext.new_trace()
    created = {
        **purchase_json("c1", start=NOON),
        "type": "crm.contact.created.v1",
        "data": {"contact_id": "c1", "origin": "api", "profile": {"emails": ["a@example.com"]}},
    }
    consent = {
        **purchase_json("c1", start=NOON),
        "type": "crm.contact.consent_changed.v1",
        "data": {
            "contact_id": "c1",
            "channel": "email",
            "status": "granted",
            "source": "form",
            "changed_at": NOON.isoformat(),
        },
    }
    stage = {
        **purchase_json("c1", start=NOON),
        "type": "crm.lifecycle.stage_changed.v1",
        "data": {
            "customer_id": "c1",
            "from_stage": "prospect",
            "to_stage": "new",
            "reason": "first_purchase",
            "occurred_at": NOON.isoformat(),
            "policy_version": "default-1",
        },
    }
    async with api_client(app):
        runtime: Runtime = app.state.runtime
        await seed(runtime)
        events = [
            CATALOG.validate(parse_envelope(created)),
            CATALOG.validate(parse_envelope(consent)),
        ]
        async with runtime.db.transaction() as conn:
            await app.state.triggers.on_events(conn, [*events, traced(stage, trace)])
        app.state.dispatcher.now = lambda: NOON
        outcome = await app.state.dispatcher.run_once()
        published = await outbox_of(runtime)
    assert outcome.sent == 1
    [line] = [line for line in outreach_log if line["message"] == "outreach message"]
    assert line["trace_id"] == trace.trace_id
    [sent] = [m for m in published if json.loads(m.payload)["type"] == "crm.outreach.sent.v1"]
    joined = trace_of(sent)
    assert joined is not None and joined.trace_id == trace.trace_id
