"""Notifications on a real database, with a real SMTP server: triggers, consent, caps,
quiet hours, delays and cancellation, redelivery, a restart in the middle of sending."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from crm_shared.events import CATALOG, CloudEvent, Event, EventData
from notifications.bootstrap import create_app, seed
from notifications.channels.base import SendResult
from notifications.handlers import birthdays
from notifications.handlers.dispatch import Dispatcher
from notifications.handlers.dry_run import forget_triggers
from notifications.handlers.triggers import Triggers
from notifications.settings import NotificationsSettings
from notifications.store import outreach
from notifications.store.tables import deliveries as deliveries_table
from notifications.store.tables import trigger_log
from tests.support.apps import api_client
from tests.support.auth import auth_headers
from tests.support.mailbox import Mailbox, mailbox

NOON = datetime(2026, 6, 10, 10, 0, tzinfo=UTC)  # 12:00 in Berlin
PURCHASE = {"order_id": "o-1", "amount": "20.00", "currency": "EUR"}
DAY = timedelta(days=1)


def ev(
    type_: str, subject: str, data: dict[str, Any], at: datetime, event_id: str | None = None
) -> Event[EventData]:
    return CATALOG.validate(
        CloudEvent.model_validate(
            {
                "specversion": "1.0",
                "id": event_id or str(uuid.uuid4()),
                "source": "test",
                "type": type_,
                "subject": subject,
                "time": at.isoformat(),
                "data": data,
            }
        )
    )


def contact(customer: str, at: datetime, *, consent: bool = True) -> list[Event[EventData]]:
    created = ev(
        "crm.contact.created.v1",
        customer,
        {
            "contact_id": customer,
            "origin": "api",
            "profile": {
                "first_name": "Ada",
                "emails": [f"{customer}@example.com"],
                "time_zone": "Europe/Berlin",
            },
        },
        at,
    )
    if not consent:
        return [created]
    return [
        created,
        ev(
            "crm.contact.consent_changed.v1",
            customer,
            {
                "contact_id": customer,
                "channel": "email",
                "status": "granted",
                "source": "form",
                "changed_at": at.isoformat(),
            },
            at,
        ),
    ]


def stage(
    customer: str,
    to: str,
    at: datetime,
    *,
    correction: bool = False,
    event_id: str | None = None,
    supersedes: list[str] | None = None,
    restates: str | None = None,
    from_stage: str = "active",
) -> Event[EventData]:
    return ev(
        "crm.lifecycle.stage_changed.v1",
        customer,
        {
            "customer_id": customer,
            "from_stage": from_stage,
            "to_stage": to,
            "reason": "inactivity",
            "occurred_at": at.isoformat(),
            "policy_version": "default-1",
            "correction": correction or restates is not None,
            "supersedes": supersedes or [],
            "restates": restates,
        },
        at,
        event_id,
    )


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    with mailbox() as box:
        yield box


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest_asyncio.fixture(loop_scope="session")
async def app(database_url: str, smtp: Mailbox) -> AsyncIterator[FastAPI]:
    settings = NotificationsSettings(
        database_url=database_url, smtp_host=smtp.host, smtp_port=smtp.port
    )
    application = create_app(settings)
    async with api_client(application):
        await seed(application.state.runtime)
        yield application


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers=auth_headers()
    ) as client:
        yield client


def body_of(mail: Message) -> str:
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def feed(app: FastAPI, events: list[Event[EventData]]) -> None:
    triggers: Triggers = app.state.triggers
    async with app.state.runtime.db.transaction() as conn:
        await triggers.on_events(conn, events)


async def dispatch(app: FastAPI, at: datetime) -> Any:
    dispatcher: Dispatcher = app.state.dispatcher
    dispatcher.now = Clock(at)
    return await dispatcher.run_once()


async def deliveries(client: httpx.AsyncClient, customer: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get(f"/v1/customers/{customer}/deliveries")).json()[
        "items"
    ]
    return items


async def test_a_dormant_customer_gets_one_wake_up_mail_after_the_delay(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    dormant = stage("c1", "dormant", NOON, event_id="t1")
    await feed(app, [*contact("c1", NOON - timedelta(days=30)), dormant])
    await feed(app, [dormant])  # redelivered: still one message
    [scheduled] = await deliveries(client, "c1")
    assert (scheduled["rule_id"], scheduled["status"]) == ("wake_up", "scheduled")
    assert scheduled["context"]["stage"] == "dormant" and scheduled["rule_version"] == 1
    assert (await dispatch(app, NOON + timedelta(days=1))).sent == 0  # not due yet
    assert (await dispatch(app, NOON + timedelta(days=3))).sent == 1
    assert (await dispatch(app, NOON + timedelta(days=3, hours=1))).sent == 0
    [mail] = smtp.to("c1@example.com")
    assert "unsubscribe" in body_of(mail).lower()
    assert (await deliveries(client, "c1"))[0]["status"] == "sent"


async def test_a_purchase_before_the_delay_ends_cancels_the_message(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("c2", NOON), stage("c2", "dormant", NOON)])
    purchase = ev(
        "crm.purchase.completed.v1",
        "c2",
        {"order_id": "o", "amount": "5", "currency": "EUR"},
        NOON + timedelta(days=1),
    )
    await feed(app, [purchase])
    [cancelled] = await deliveries(client, "c2")
    assert cancelled["status"] == "suppressed"
    assert cancelled["reason"].startswith("cancelled by crm.purchase.completed.v1")
    await dispatch(app, NOON + timedelta(days=4))
    assert smtp.to("c2@example.com") == []


async def test_a_cancelled_message_is_reported_in_its_triggers_trace(app: FastAPI) -> None:
    trace_id = uuid.uuid4().hex
    traced = stage("c2t", "dormant", NOON).envelope.model_copy(
        update={"traceparent": f"00-{trace_id}-{'1' * 16}-01"}
    )
    purchase = ev("crm.purchase.completed.v1", "c2t", PURCHASE, NOON + DAY)
    await feed(app, [*contact("c2t", NOON), CATALOG.validate(traced)])
    await feed(app, [purchase])
    runtime = app.state.runtime
    async with runtime.db.read() as conn:
        pending = await runtime.outbox.pending(conn, limit=1000)
    [report] = [
        json.loads(m.payload)
        for m in pending
        if m.key == "c2t" and json.loads(m.payload)["type"] == "crm.outreach.suppressed.v1"
    ]
    assert report["data"]["reason"].startswith("cancelled by crm.purchase.completed.v1")
    assert report["traceparent"].split("-")[1] == trace_id


async def test_one_batch_cancels_each_customers_messages_by_the_first_event_that_does(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Many customers in one batch: each message is cancelled by its own customer's first
    qualifying event (not one before the trigger, not another customer's), and each
    cancellation is published once."""
    customers = [f"b{i}" for i in range(5)]
    setup = [e for c in customers for e in (*contact(c, NOON), stage(c, "dormant", NOON))]
    await feed(app, setup)

    def purchase(customer: str, at: datetime) -> Event[EventData]:
        data = {"order_id": f"o-{customer}-{at:%d}", "amount": "5", "currency": "EUR"}
        return ev("crm.purchase.completed.v1", customer, data, at)

    early = purchase("b0", NOON - timedelta(days=1))  # before the trigger: cancels nothing
    first = {c: purchase(c, NOON + timedelta(days=1)) for c in customers[:3]}
    later = purchase("b1", NOON + timedelta(days=2))
    await feed(app, [early, first["b0"], later, first["b1"], first["b2"]])
    cause = {**first, "b1": later}  # the first in the batch that qualifies

    async with app.state.runtime.db.read() as conn:
        table = app.state.runtime.outbox._t
        rows = (await conn.execute(table.select().order_by(table.c.id))).mappings().all()
    published = [r["payload"] for r in rows if "suppressed" in str(r["payload"])]
    for customer in customers:
        [delivery] = await deliveries(client, customer)
        if customer in first:
            assert delivery["status"] == "suppressed"
            assert delivery["reason"] == (
                f"cancelled by crm.purchase.completed.v1 ({cause[customer].id})"
            )
            assert sum(delivery["id"] in str(p) for p in published) == 1
        else:
            assert delivery["status"] == "scheduled"
            assert not any(delivery["id"] in str(p) for p in published)


async def test_a_message_is_cancelled_by_a_later_event_in_the_batch_that_triggers_it(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    """The customer went dormant and bought a day later, both in one consumed batch (a
    stage change and a purchase come from two topics): no wake-up mail. A rule cancelled by
    the very type of event that triggers it is not cancelled by its own trigger."""
    rule = (await client.get("/v1/rules/detractor_follow_up")).json()["rule"]
    body = {k: v for k, v in rule.items() if k not in ("id", "version")}
    feedback = "crm.feedback.submitted.v1"
    await client.put("/v1/rules/detractor_follow_up", json={**body, "cancel_on": [feedback]})
    bought = ev("crm.purchase.completed.v1", "s1", PURCHASE, NOON + DAY)
    unhappy = ev(feedback, "s1", {"nps": 2, "comment": "slow"}, NOON + 2 * DAY)
    await feed(app, [*contact("s1", NOON), bought, stage("s1", "dormant", NOON), unhappy])
    outcomes = {d["rule_id"]: (d["status"], d["reason"]) for d in await deliveries(client, "s1")}
    assert outcomes == {
        "wake_up": ("suppressed", f"cancelled by crm.purchase.completed.v1 ({bought.id})"),
        "detractor_follow_up": ("scheduled", None),
    }
    await dispatch(app, NOON + 7 * DAY)
    sent = {d["rule_id"] for d in await deliveries(client, "s1") if d["status"] == "sent"}
    assert sent == {"detractor_follow_up"} and len(smtp.to("s1@example.com")) == 1


async def test_a_message_goes_out_only_if_the_customer_still_meets_its_rules_conditions(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    """The purchase that won the customer back was taken in before the dormancy it ended
    (two topics, each at its own pace), so it cancelled nothing; the wake-up mail is still
    not sent: when it is due, the customer is active, and the rule is for dormant ones."""
    bought = ev("crm.purchase.completed.v1", "s2", PURCHASE, NOON + DAY)
    await feed(app, [*contact("s2", NOON - 30 * DAY), bought])
    await feed(app, [stage("s2", "dormant", NOON)])
    [waiting] = await deliveries(client, "s2")
    assert (waiting["rule_id"], waiting["status"]) == ("wake_up", "scheduled")
    await feed(app, [stage("s2", "active", NOON + DAY, from_stage="dormant")])
    outcome = await dispatch(app, NOON + 3 * DAY + timedelta(hours=1))
    assert (outcome.sent, outcome.suppressed) == (0, 1)
    [dropped] = await deliveries(client, "s2")
    assert dropped["reason"] == (
        "no longer meets the rule's conditions: stage is active, not dormant"
    )
    assert smtp.to("s2@example.com") == []


async def test_no_consent_no_marketing_mail(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("c3", NOON, consent=False), stage("c3", "churned", NOON)])
    await dispatch(app, NOON)
    [suppressed] = await deliveries(client, "c3")
    assert (suppressed["status"], suppressed["reason"]) == (
        "suppressed",
        "no consent on email (not given)",
    )


async def test_one_dispatch_run_suppresses_many_messages_each_with_its_outcome_published(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    customers = ["s1", "s2", "s3"]
    churned = [stage(c, "churned", NOON) for c in customers]
    await feed(app, [e for c in customers for e in contact(c, NOON, consent=False)] + churned)
    [first] = await deliveries(client, "s1")
    async with app.state.runtime.db.transaction() as conn:  # an earlier attempt failed
        await outreach.set_status(conn, first["id"], NOON, error="endpoint down")
    outcome = await dispatch(app, NOON)
    assert outcome.suppressed >= len(customers)
    async with app.state.runtime.db.read() as conn:
        table = app.state.runtime.outbox._t
        payloads = [str(p) for p in (await conn.execute(table.select())).scalars(table.c.payload)]
    for customer in customers:
        [suppressed] = await deliveries(client, customer)
        assert (suppressed["status"], suppressed["reason"]) == (
            "suppressed",
            "no consent on email (not given)",
        )
        assert suppressed.get("error") is None
        published = [p for p in payloads if suppressed["id"] in p and "suppressed" in p]
        assert len(published) == 1
    assert smtp.to("s1@example.com") == []


async def test_due_messages_come_oldest_first_across_scheduled_and_held(app: FastAPI) -> None:
    def row(n: int, status: str, hours: int) -> dict[str, Any]:
        return {
            "id": f"due-{n}",
            "idempotency_key": f"due-{n}",
            "rule_id": "wake_up",
            "rule_version": 1,
            "customer_id": f"due-c{n}",
            "channel": "email",
            "template": "wake_up",
            "transactional": False,
            "status": status,
            "due_at": NOON + timedelta(hours=hours),
            "trigger_event_id": f"due-e{n}",
            "trigger_kind": "stage",
            "trigger_time": NOON,
            "cancel_on": [],
            "context": {},
            "attempts": 0,
            "created_at": NOON,
            "updated_at": NOON,
        }

    plan = [("scheduled", 5), ("held", 1), ("sent", 0), ("scheduled", 2), ("held", 3), ("held", 9)]
    async with app.state.runtime.db.transaction() as conn:
        await conn.execute(
            deliveries_table.insert(), [row(n, s, h) for n, (s, h) in enumerate(plan)]
        )
        first = await outreach.due(conn, NOON + timedelta(hours=6), limit=3)
        rest = await outreach.due(conn, NOON + timedelta(hours=6), limit=10)
    assert [d["id"] for d in first] == ["due-1", "due-3", "due-4"]
    assert [d["id"] for d in rest] == ["due-1", "due-3", "due-4", "due-0"]


async def test_caps_count_the_customers_local_day(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    late = datetime(2026, 6, 10, 18, 0, tzinfo=UTC)  # 20:00 in Berlin, before quiet hours
    await feed(app, [*contact("c4", late), stage("c4", "churned", late, event_id="a")])
    assert (await dispatch(app, late)).sent == 1
    # A second message at 20:30 Berlin the same local day: capped (one a day).
    await feed(app, [stage("c4", "new", late, event_id="b")])
    await dispatch(app, late + timedelta(minutes=30))
    statuses = [(d["rule_id"], d["status"]) for d in await deliveries(client, "c4")]
    assert statuses == [("win_back", "sent"), ("welcome", "suppressed")]


async def test_the_cap_counts_a_message_sent_earlier_in_the_same_dispatch_run(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    late = datetime(2026, 6, 10, 18, 0, tzinfo=UTC)
    await feed(
        app,
        [
            *contact("c5", late),
            stage("c5", "dormant", late, event_id="a"),
            stage("c5", "churned", late, event_id="b"),
            stage("c5", "churned", late, event_id="c"),  # two win-backs, both due at once
        ],
    )
    outcome = await dispatch(app, late)
    assert (outcome.sent, outcome.suppressed) == (1, 1)
    reasons = sorted((d["status"], d["reason"]) for d in await deliveries(client, "c5"))
    assert reasons == [("sent", None), ("suppressed", "capped: 1 sent today on email")]
    assert len(smtp.to("c5@example.com")) == 1


async def test_quiet_hours_hold_a_message_until_morning_in_the_customers_time_zone(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    night = datetime(2026, 6, 10, 22, 30, tzinfo=UTC)  # 00:30 in Berlin
    await feed(app, [*contact("c5", night), stage("c5", "churned", night)])
    assert (await dispatch(app, night)).held == 1
    [held] = await deliveries(client, "c5")
    assert held["status"] == "held" and held["due_at"].startswith("2026-06-11T06:00")
    assert (await dispatch(app, datetime(2026, 6, 11, 6, 0, tzinfo=UTC))).sent == 1
    assert len(smtp.to("c5@example.com")) == 1


async def test_a_stage_change_that_is_a_correction_sends_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await feed(app, [*contact("c6", NOON), stage("c6", "churned", NOON, correction=True)])
    assert await deliveries(client, "c6") == []


async def logged_triggers(app: FastAPI, customer: str) -> list[str]:
    async with app.state.runtime.db.read() as conn:
        query = select(trigger_log.c.event_id).where(trigger_log.c.customer_id == customer)
        return list((await conn.execute(query)).scalars())


async def test_a_stage_change_corrected_away_has_its_waiting_message_suppressed(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    """A late purchase showed lifecycle the customer never churned: the win-back mail the
    churn scheduled is not sent, and a dry run no longer counts that trigger."""
    gone = str(uuid.uuid4())
    await feed(app, [*contact("c8", NOON), stage("c8", "churned", NOON, event_id=gone)])
    [scheduled] = await deliveries(client, "c8")
    assert scheduled["status"] == "scheduled" and gone in await logged_triggers(app, "c8")
    fixed = stage("c8", "active", NOON - DAY, correction=True, supersedes=[gone])
    await feed(app, [fixed])
    [suppressed] = await deliveries(client, "c8")
    assert suppressed["status"] == "suppressed"
    assert suppressed["reason"] == f"its trigger was corrected away (lifecycle's {fixed.id})"
    assert gone not in await logged_triggers(app, "c8")
    await dispatch(app, NOON + 7 * DAY)
    assert smtp.to("c8@example.com") == []


async def test_a_stage_change_corrected_away_in_the_same_batch_schedules_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    gone = str(uuid.uuid4())
    corrected = stage("c9", "active", NOON - DAY, correction=True, supersedes=[gone])
    await feed(app, [*contact("c9", NOON), stage("c9", "churned", NOON, event_id=gone), corrected])
    assert await deliveries(client, "c9") == []
    assert await logged_triggers(app, "c9") == []


async def test_a_restated_stage_entry_moves_its_waiting_message_to_the_new_time(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    """A late purchase put the dormancy off by ten days: the wake-up mail goes out three days
    after the new dormancy, not the old one, and only a purchase after the new dormancy
    cancels it."""
    await feed(app, [*contact("m1", NOON), stage("m1", "dormant", NOON, event_id="m1-a")])
    [scheduled] = await deliveries(client, "m1")
    assert scheduled["due_at"] == "2026-06-13T10:00:00Z"
    later = stage("m1", "dormant", NOON + 10 * DAY, event_id="m1-b", restates="m1-a")
    bought = ev("crm.purchase.completed.v1", "m1", PURCHASE, NOON + 5 * DAY)
    await feed(app, [later, bought])  # bought before the dormancy as it now stands
    [moved] = await deliveries(client, "m1")
    assert (moved["id"], moved["status"]) == (scheduled["id"], "scheduled")
    assert moved["due_at"] == "2026-06-23T10:00:00Z"
    trigger = moved["context"]["trigger"]
    assert (trigger["event_id"], trigger["time"]) == ("m1-b", later.time.isoformat())
    logged = await logged_triggers(app, "m1")
    assert "m1-a" not in logged and logged.count("m1-b") == 2  # entered, and left active
    assert (await dispatch(app, NOON + 3 * DAY + timedelta(hours=1))).sent == 0
    assert (await dispatch(app, NOON + 13 * DAY + timedelta(hours=1))).sent == 1
    assert len(smtp.to("m1@example.com")) == 1


async def test_a_purchase_after_the_restated_entry_cancels_its_moved_message(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await feed(app, [*contact("m2", NOON), stage("m2", "dormant", NOON, event_id="m2-a")])
    later = stage("m2", "dormant", NOON + 10 * DAY, event_id="m2-b", restates="m2-a")
    bought = ev("crm.purchase.completed.v1", "m2", PURCHASE, NOON + 11 * DAY, "m2-buy")
    await feed(app, [later, bought])
    [cancelled] = await deliveries(client, "m2")
    assert cancelled["status"] == "suppressed"
    assert cancelled["reason"] == "cancelled by crm.purchase.completed.v1 (m2-buy)"


async def test_a_correction_of_a_correction_reaches_the_message_of_the_first_entry(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    """Restated twice in one batch, the message follows the last restatement; when that one
    is corrected away, the message is suppressed and its triggers leave the dry-run log."""
    await feed(app, [*contact("m3", NOON), stage("m3", "churned", NOON, event_id="m3-a")])
    await feed(
        app,
        [
            stage("m3", "churned", NOON + DAY, event_id="m3-b", restates="m3-a"),
            stage("m3", "churned", NOON + 2 * DAY, event_id="m3-c", restates="m3-b"),
        ],
    )
    [moved] = await deliveries(client, "m3")
    assert moved["due_at"] == "2026-06-12T10:00:00Z"  # win-back has no delay
    assert moved["context"]["trigger"]["event_id"] == "m3-c"
    assert set(await logged_triggers(app, "m3")) == {"m3-c"}
    undone = stage("m3", "active", NOON - DAY, correction=True, supersedes=["m3-c"])
    await feed(app, [undone])
    [suppressed] = await deliveries(client, "m3")
    assert suppressed["status"] == "suppressed"
    assert suppressed["reason"] == f"its trigger was corrected away (lifecycle's {undone.id})"
    assert await logged_triggers(app, "m3") == []
    await dispatch(app, NOON + 7 * DAY)
    assert smtp.to("m3@example.com") == []


async def test_a_restatement_corrected_away_in_the_same_batch_suppresses_the_message(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await feed(app, [*contact("m5", NOON), stage("m5", "churned", NOON, event_id="m5-a")])
    undone = stage("m5", "active", NOON - DAY, correction=True, supersedes=["m5-b"])
    await feed(app, [stage("m5", "churned", NOON + DAY, event_id="m5-b", restates="m5-a"), undone])
    [suppressed] = await deliveries(client, "m5")
    assert suppressed["reason"] == f"its trigger was corrected away (lifecycle's {undone.id})"
    assert await logged_triggers(app, "m5") == []


async def test_a_restated_entry_that_left_another_stage_drops_the_stage_left_message(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A rule on leaving "active": the customer left "active" for "dormant" at noon; the
    correction has them go dormant from "new" instead, so they never left "active"."""
    rule = (await client.get("/v1/rules/wake_up")).json()["rule"]
    body = {k: v for k, v in rule.items() if k not in ("id", "version")}
    left_active = {**body, "trigger": {"kind": "stage_left", "stage": "active"}, "cancel_on": []}
    assert (await client.put("/v1/rules/left_active", json=left_active)).status_code in (200, 201)
    await client.put("/v1/rules/wake_up", json={**body, "enabled": False})
    await feed(app, [*contact("m4", NOON), stage("m4", "dormant", NOON, event_id="m4-a")])
    [scheduled] = await deliveries(client, "m4")
    assert scheduled["rule_id"] == "left_active"
    assert scheduled["context"]["trigger"]["left"] == "active"
    again = stage("m4", "dormant", NOON + DAY, event_id="m4-b", restates="m4-a", from_stage="new")
    await feed(app, [again])
    [dropped] = await deliveries(client, "m4")
    assert dropped["status"] == "suppressed"
    assert dropped["reason"] == (
        "its trigger was corrected away (lifecycle's m4-b left new, not active)"
    )
    # A message made before triggers kept the stage left cannot tell: it follows the move.
    await feed(app, [*contact("m6", NOON), stage("m6", "dormant", NOON, event_id="m6-a")])
    [older] = await deliveries(client, "m6")
    context = {**older["context"], "trigger": {**older["context"]["trigger"]}}
    del context["trigger"]["left"]
    async with app.state.runtime.db.transaction() as conn:
        await conn.execute(
            deliveries_table.update()
            .where(deliveries_table.c.id == older["id"])
            .values(context=context)
        )
    again = stage("m6", "dormant", NOON + DAY, event_id="m6-b", restates="m6-a", from_stage="new")
    await feed(app, [again])
    [moved] = await deliveries(client, "m6")
    assert (moved["status"], moved["context"]["trigger"]["event_id"]) == ("scheduled", "m6-b")


async def test_a_merged_contacts_waiting_messages_are_suppressed(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    """Once a contact is merged into another, the survivor's history (which holds both)
    decides what is sent: the merged contact's waiting win-back is not sent."""
    await feed(app, [*contact("c10", NOON), stage("c10", "churned", NOON)])
    await feed(app, [*contact("c11", NOON)])
    merged = ev(
        "crm.contact.merged.v1",
        "c11",
        {"survivor_id": "c11", "merged_ids": ["c10"]},
        NOON + timedelta(hours=1),
    )
    await feed(app, [merged])
    [suppressed] = await deliveries(client, "c10")
    assert suppressed["status"] == "suppressed"
    assert suppressed["reason"] == "the contact was merged into c11"
    await dispatch(app, NOON + 7 * DAY)
    assert smtp.to("c10@example.com") == []


def merge_event(survivor: str, gone: str, at: datetime) -> Event[EventData]:
    data = {"survivor_id": survivor, "merged_ids": [gone]}
    return ev("crm.contact.merged.v1", survivor, data, at)


def unmerge_event(survivor: str, restored: str, at: datetime) -> Event[EventData]:
    data = {"survivor_id": survivor, "restored_id": restored}
    return ev("crm.contact.unmerged.v1", survivor, data, at)


async def test_an_unmerge_gives_the_restored_contact_its_waiting_messages_back(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("u1", NOON), stage("u1", "dormant", NOON), *contact("u2", NOON)])
    await feed(app, [merge_event("u2", "u1", NOON + timedelta(hours=1))])
    [suppressed] = await deliveries(client, "u1")
    assert suppressed["status"] == "suppressed"
    await feed(app, [unmerge_event("u2", "u1", NOON + timedelta(hours=2))])
    [restored] = await deliveries(client, "u1")
    assert (restored["status"], restored["reason"]) == ("scheduled", None)
    assert restored["due_at"] == suppressed["due_at"]
    assert (await dispatch(app, NOON + 4 * DAY)).sent == 1
    assert len(smtp.to("u1@example.com")) == 1


async def test_an_unmerge_leaves_suppressed_what_was_corrected_away_or_suppressed_otherwise(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The win-back's churn was corrected away while the contact was merged; the wake-up was
    cancelled by a purchase before the merge: neither comes back."""
    churned = str(uuid.uuid4())
    bought = ev("crm.purchase.completed.v1", "u3", PURCHASE, NOON + timedelta(hours=1))
    await feed(app, [*contact("u3", NOON), stage("u3", "dormant", NOON)])
    await feed(app, [bought])
    await feed(app, [stage("u3", "churned", NOON + DAY, event_id=churned), *contact("u4", NOON)])
    await feed(app, [merge_event("u4", "u3", NOON + 2 * DAY)])
    undone = stage("u3", "active", NOON, correction=True, supersedes=[churned])
    await feed(app, [undone, unmerge_event("u4", "u3", NOON + 3 * DAY)])
    reasons = {d["rule_id"]: (d["status"], d["reason"]) for d in await deliveries(client, "u3")}
    assert reasons == {
        "wake_up": ("suppressed", f"cancelled by crm.purchase.completed.v1 ({bought.id})"),
        "win_back": ("suppressed", "the contact was merged into u4"),
    }


async def test_a_merge_and_its_unmerge_in_one_batch_leave_the_messages_waiting(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await feed(app, [*contact("u5", NOON), stage("u5", "churned", NOON), *contact("u6", NOON)])
    later = NOON + timedelta(hours=1)
    dormant = stage("u5", "dormant", later)  # its own again: its triggers count
    await feed(app, [merge_event("u6", "u5", later), unmerge_event("u6", "u5", later), dormant])
    waiting = {d["rule_id"]: d["status"] for d in await deliveries(client, "u5")}
    assert waiting == {"win_back": "scheduled", "wake_up": "scheduled"}
    await feed(app, [unmerge_event("u6", "u5", later), merge_event("u6", "u5", later)])
    assert {d["status"] for d in await deliveries(client, "u5")} == {"suppressed"}


async def test_a_restart_in_the_middle_of_sending_is_reported_not_repeated(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("c7", NOON), stage("c7", "churned", NOON)])
    [scheduled] = await deliveries(client, "c7")
    async with app.state.runtime.db.transaction() as conn:  # the process died mid-send
        await outreach.set_status(conn, scheduled["id"], NOON, status="sending")
    dispatcher: Dispatcher = app.state.dispatcher
    assert await dispatcher.recover() == 1
    [failed] = await deliveries(client, "c7")
    assert failed["status"] == "failed" and "outcome unknown" in failed["error"]
    await dispatch(app, NOON + timedelta(hours=1))
    assert smtp.to("c7@example.com") == []


class Flaky:
    """An email channel that sends through the real one and calls `on_send` before each
    message (by its position): to stop the process there, fail, or change the world."""

    name = "email"

    def __init__(self, channel: Any, on_send: dict[int, Any]) -> None:
        self.channel, self.on_send, self.calls = channel, on_send, 0

    async def send(self, message: Any) -> SendResult:
        self.calls += 1
        action = self.on_send.get(self.calls)
        if action is not None:
            await action(message)
        result: SendResult = await self.channel.send(message)
        return result


def flaky(app: FastAPI, on_send: dict[int, Any]) -> Dispatcher:
    dispatcher: Dispatcher = app.state.dispatcher
    dispatcher.channels = {
        **dispatcher.channels,
        "email": Flaky(dispatcher.channels["email"], on_send),
    }
    return dispatcher


async def test_a_stop_in_the_middle_of_a_run_leaves_the_messages_it_had_not_reached_waiting(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    customers = ["k1", "k2", "k3"]
    await feed(app, [e for c in customers for e in contact(c, NOON)])
    await feed(app, [stage(c, "churned", NOON) for c in customers])

    async def stop(_: Any) -> None:  # the process is stopped while the second is being sent
        raise asyncio.CancelledError

    flaky(app, {2: stop})
    with pytest.raises(asyncio.CancelledError):
        await dispatch(app, NOON)
    dispatcher: Dispatcher = app.state.dispatcher
    assert await dispatcher.recover() == 1  # only the one handed to the channel is unknown
    await dispatch(app, NOON)
    outcomes = {c: [d["status"] for d in await deliveries(client, c)] for c in customers}
    assert sorted(outcomes.values()) == [["failed"], ["sent"], ["sent"]]
    assert sum(len(smtp.to(f"{c}@example.com")) for c in customers) == 2


async def test_a_message_that_cannot_be_built_fails_alone_and_the_run_goes_on(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    stored = await client.put(  # fails on a customer with tags, renders on the sample one
        "/v1/templates/win_back",
        json={
            "channel": "email",
            "subject": "Hi",
            "body": "{% for t in contact.tags %}{{ t|dictsort }}{% endfor %}Come back",
        },
    )
    assert stored.status_code == 200, stored.text
    tagged = ev(
        "crm.contact.updated.v1",
        "b1",
        {"contact_id": "b1", "changes": {"tags": ["vip"]}},
        NOON,
    )
    await feed(app, [*contact("b1", NOON), *contact("b2", NOON), tagged])
    await feed(app, [stage("b1", "churned", NOON), stage("b2", "churned", NOON)])
    outcome = await dispatch(app, NOON)
    assert (outcome.sent, outcome.failed) == (1, 1)
    [failed] = await deliveries(client, "b1")
    assert failed["status"] == "failed" and "AttributeError" in failed["error"]
    assert [d["status"] for d in await deliveries(client, "b2")] == ["sent"]
    assert len(smtp.to("b2@example.com")) == 1


async def test_a_channel_that_breaks_on_one_message_fails_it_alone(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("r1", NOON), *contact("r2", NOON)])
    await feed(app, [stage("r1", "churned", NOON), stage("r2", "churned", NOON)])

    async def breaks(_: Any) -> None:
        raise RuntimeError("the client library broke")

    flaky(app, {1: breaks})
    outcome = await dispatch(app, NOON)
    assert (outcome.sent, outcome.failed) == (1, 1)
    outcomes = sorted(
        [(d["status"], d["error"]) for c in ("r1", "r2") for d in await deliveries(client, c)]
    )
    assert outcomes == [
        ("failed", "RuntimeError('the client library broke')"),
        ("sent", None),
    ]


class Unreachable:
    """An email channel whose every attempt fails for now (a timeout: try again later)."""

    name = "email"

    async def send(self, message: Any) -> SendResult:
        return SendResult(ok=False, detail="timed out", retryable=True)


@pytest.mark.parametrize("buys", [True, False])
async def test_a_purchase_taken_in_during_an_attempt_that_fails_cancels_the_retry(
    app: FastAPI, client: httpx.AsyncClient, buys: bool
) -> None:
    customer = f"y{int(buys)}"
    await feed(app, [*contact(customer, NOON), stage(customer, "churned", NOON)])
    purchase = ev("crm.purchase.completed.v1", customer, PURCHASE, NOON + timedelta(minutes=1))

    async def buy(_: Any) -> None:  # taken in while the channel tries
        if buys:
            await feed(app, [purchase])

    dispatcher: Dispatcher = app.state.dispatcher
    dispatcher.channels = {**dispatcher.channels, "email": Flaky(Unreachable(), {1: buy})}
    await dispatch(app, NOON + timedelta(minutes=2))
    [message] = await deliveries(client, customer)
    if buys:
        assert (message["status"], message["reason"]) == (
            "suppressed",
            f"cancelled by crm.purchase.completed.v1 ({purchase.id})",
        )
    else:  # tried again later
        assert (message["status"], message["error"]) == ("scheduled", "timed out")


async def test_a_message_held_for_the_night_that_fails_in_the_morning_is_tried_again(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    night = datetime(2026, 6, 10, 22, 30, tzinfo=UTC)  # 00:30 in Berlin
    await feed(app, [*contact("y2", night), stage("y2", "churned", night)])
    assert (await dispatch(app, night)).held == 1  # its reason: "quiet hours"
    dispatcher: Dispatcher = app.state.dispatcher
    dispatcher.channels = {**dispatcher.channels, "email": Unreachable()}
    await dispatch(app, datetime(2026, 6, 11, 6, 0, tzinfo=UTC))
    [message] = await deliveries(client, "y2")
    assert (message["status"], message["error"]) == ("scheduled", "timed out")


async def test_a_message_the_consumer_is_cancelling_is_not_sent_meanwhile(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("z1", NOON), stage("z1", "churned", NOON)])
    async with app.state.runtime.db.transaction() as conn:  # a consumer's cancellation pass
        [waiting] = await outreach.cancellable(conn, ["z1"])
        run = asyncio.create_task(dispatch(app, NOON))  # a dispatcher run meanwhile
        await asyncio.wait([run], timeout=1.0)
        await outreach.suppress(conn, [(waiting["id"], "cancelled by a purchase")], NOON)
    await run
    [message] = await deliveries(client, "z1")
    assert message["status"] == "suppressed"
    assert smtp.to("z1@example.com") == []


async def test_consent_withdrawn_while_a_run_sends_stops_the_customers_message(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("w1", NOON), *contact("w2", NOON)])
    await feed(app, [stage("w1", "churned", NOON), stage("w2", "churned", NOON)])

    async def revoke(message: Any) -> None:  # the other one opts out while this one is sent
        other = "w2" if message.to == "w1@example.com" else "w1"
        data = {
            "contact_id": other,
            "channel": "email",
            "status": "revoked",
            "source": "form",
            "changed_at": NOON.isoformat(),
        }
        await feed(app, [ev("crm.contact.consent_changed.v1", other, data, NOON)])

    flaky(app, {1: revoke})
    outcome = await dispatch(app, NOON)
    assert (outcome.sent, outcome.suppressed) == (1, 1)
    [sent] = [c for c in ("w1", "w2") if smtp.to(f"{c}@example.com")]
    [withdrawn] = await deliveries(client, "w2" if sent == "w1" else "w1")
    assert (withdrawn["status"], withdrawn["reason"]) == (
        "suppressed",
        "no consent on email (revoked)",
    )


async def test_a_message_cancelled_while_a_run_sends_is_left_cancelled(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("x1", NOON), *contact("x2", NOON)])
    await feed(app, [stage("x1", "churned", NOON), stage("x2", "churned", NOON)])
    comeback = [
        ev("crm.purchase.completed.v1", c, PURCHASE, NOON + timedelta(minutes=1))
        for c in ("x1", "x2")
    ]

    async def buy(_: Any) -> None:  # both buy while the first message is being sent
        await feed(app, comeback)

    flaky(app, {1: buy})
    outcome = await dispatch(app, NOON + timedelta(minutes=2))
    assert outcome.sent == 1
    statuses = sorted([d["status"] for c in ("x1", "x2") for d in await deliveries(client, c)])
    assert statuses == ["sent", "suppressed"]
    assert sum(len(smtp.to(f"{c}@example.com")) for c in ("x1", "x2")) == 1


async def test_templates_preview_and_rules_are_versioned(client: httpx.AsyncClient) -> None:
    preview = await client.post("/v1/templates/wake_up/preview", json={})
    assert preview.status_code == 200 and "Ada" in preview.json()["body"]
    broken = await client.put(
        "/v1/templates/oops",
        json={"channel": "email", "subject": "Hi", "body": "Hello {{ contact.nickname }}"},
    )
    assert broken.status_code == 422 and "nickname" in broken.json()["detail"]
    rule = (await client.get("/v1/rules/wake_up")).json()["rule"]
    body = {k: v for k, v in rule.items() if k not in ("id", "version")}
    changed = await client.put("/v1/rules/wake_up", json={**body, "delay_seconds": 86400})
    assert changed.json()["version"] == 2
    assert len((await client.get("/v1/rules/wake_up")).json()["versions"]) == 2


@pytest.mark.parametrize(
    "body",
    [
        "{{ contact.first_name|dictsort }}",  # a filter on a value it cannot take
        '{{ "{0}".format() }}',
        '{{ "%(a)s" % {} }}',
    ],
)
async def test_a_template_that_cannot_render_is_refused_with_the_reason(
    client: httpx.AsyncClient, body: str
) -> None:
    refused = await client.put(
        "/v1/templates/odd", json={"channel": "email", "subject": "Hi", "body": body}
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"].startswith("template: body line 1: cannot evaluate")


async def test_a_preview_context_nested_too_deep_is_refused(client: httpx.AsyncClient) -> None:
    context: dict[str, Any] = {}
    for _ in range(600):
        context = {"a": context}
    refused = await client.post("/v1/templates/wake_up/preview", json={"context": context})
    assert refused.status_code == 422, refused.text
    assert "nested more than 32 levels deep" in refused.json()["detail"]


async def test_the_unsubscribe_link_records_the_opt_out(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("c8", NOON), stage("c8", "churned", NOON)])
    await dispatch(app, NOON)
    [mail] = smtp.to("c8@example.com")
    text = body_of(mail)
    link = next(word for word in text.split() if "unsubscribe?token=" in word)
    token = httpx.URL(link).params["token"]
    answer = await client.get("/v1/unsubscribe", params={"token": token})
    assert answer.json() == {"customer_id": "c8", "channel": "email", "status": "revoked"}
    forged = await client.get("/v1/unsubscribe", params={"token": token[:-2] + "xx"})
    assert forged.status_code == 400
    await feed(app, [stage("c8", "dormant", NOON + timedelta(days=2))])
    await dispatch(app, NOON + timedelta(days=6))
    assert [d["status"] for d in await deliveries(client, "c8")] == ["sent", "suppressed"]


async def test_a_consent_grant_made_before_an_unsubscribe_but_taken_in_after_it_is_ignored(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(app, [*contact("c9", NOON), stage("c9", "churned", NOON)])
    await dispatch(app, NOON)
    [mail] = smtp.to("c9@example.com")
    link = next(word for word in body_of(mail).split() if "unsubscribe?token=" in word)
    await client.get("/v1/unsubscribe", params={"token": httpx.URL(link).params["token"]})
    late = {  # a preference centre's grant from before the click, delivered after it
        "contact_id": "c9",
        "channel": "email",
        "status": "granted",
        "source": "preference-centre",
        "changed_at": (NOON + timedelta(hours=1)).isoformat(),
    }
    await feed(app, [ev("crm.contact.consent_changed.v1", "c9", late, NOON + timedelta(hours=1))])
    await feed(app, [stage("c9", "dormant", NOON + timedelta(days=2))])
    await dispatch(app, NOON + timedelta(days=6))
    [_, wake_up] = await deliveries(client, "c9")
    assert (wake_up["status"], wake_up["reason"]) == ("suppressed", "no consent on email (revoked)")
    assert len(smtp.to("c9@example.com")) == 1


async def test_a_birthday_greeting_is_scheduled_on_the_day_where_the_customer_lives(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    rule = (await client.get("/v1/rules/birthday")).json()["rule"]
    body = {k: v for k, v in rule.items() if k not in ("id", "version")}
    assert (
        await client.put("/v1/rules/birthday", json={**body, "enabled": True})
    ).status_code == 200
    now = datetime(2026, 6, 10, 13, 0, tzinfo=UTC)  # 01:00 on 11 June in Auckland
    for who, tz in (("kiwi", "Pacific/Auckland"), ("berliner", "Europe/Berlin")):
        await feed(
            app,
            [
                ev(
                    "crm.contact.created.v1",
                    who,
                    {
                        "contact_id": who,
                        "origin": "api",
                        "profile": {
                            "emails": [f"{who}@example.com"],
                            "birthday": "1990-06-11",
                            "time_zone": tz,
                        },
                    },
                    now - timedelta(days=1),
                )
            ],
        )
    triggers: Triggers = app.state.triggers
    for _ in range(2):  # the hourly job runs again: still one greeting this year
        async with app.state.runtime.db.transaction() as conn:
            await birthdays.run(triggers, conn, now, "UTC")
    assert [d["rule_id"] for d in await deliveries(client, "kiwi")] == ["birthday"]
    assert await deliveries(client, "berliner") == []


async def test_a_dry_run_reports_what_a_rule_would_have_done_without_sending(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    await feed(
        app,
        [
            *contact("d1", NOON),
            stage("d1", "churned", NOON),
            *contact("d2", NOON, consent=False),
            stage("d2", "churned", NOON),
        ],
    )
    await feed(app, [stage("d1", "churned", NOON + timedelta(hours=1), event_id="again")])
    report = (await client.post("/v1/rules/win_back/dry-run", params={"days": 365})).json()
    assert report["would_schedule"] == 3
    assert report["outcomes"] == {
        "sent": 1,
        "suppressed: no consent on email (not given)": 1,
        "suppressed: capped": 1,
    }
    rule = (await client.get("/v1/rules/win_back")).json()["rule"]
    draft = {k: v for k, v in rule.items() if k not in ("id", "version")}
    draft["action"] = {**draft["action"], "transactional": True}
    report = (
        await client.post("/v1/rules/win_back/dry-run", params={"days": 365}, json=draft)
    ).json()
    assert report["outcomes"] == {"sent": 3}
    assert smtp.received == [] and len(await deliveries(client, "d1")) == 2  # nothing sent


async def test_score_and_feedback_triggers_schedule_their_playbooks(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    rule = (await client.get("/v1/rules/churn_warning")).json()["rule"]
    body = {k: v for k, v in rule.items() if k not in ("id", "version")}
    await client.put("/v1/rules/churn_warning", json={**body, "enabled": True})

    def score(band: str, tier: str) -> Event[EventData]:
        return ev(
            "crm.score.changed.v1",
            "s1",
            {
                "customer_id": "s1",
                "model_version": "m1",
                "tier": tier,
                "risk_band": band,
                "churn_risk": 0.7 if band == "high" else 0.1,
                "clv": 100.0,
                "p_alive": 0.3,
                "reasons": ["risk band"],
            },
            NOON,
        )

    await feed(app, [*contact("s1", NOON), score("low", "A")])
    assert await deliveries(client, "s1") == []
    await feed(app, [score("high", "A")])
    await feed(
        app,
        [
            ev("crm.feedback.submitted.v1", "s1", {"nps": 3}, NOON),
            ev("crm.feedback.submitted.v1", "s1", {"nps": 9}, NOON),
        ],
    )
    scheduled = await deliveries(client, "s1")
    assert [d["rule_id"] for d in scheduled] == ["churn_warning", "detractor_follow_up"]
    assert scheduled[0]["context"]["risk_band"] == "high"
    assert scheduled[1]["transactional"] is True


async def test_the_daily_cap_counts_the_customers_local_day_not_utcs(
    app: FastAPI, client: httpx.AsyncClient, smtp: Mailbox
) -> None:
    created = ev(
        "crm.contact.created.v1",
        "nz",
        {
            "contact_id": "nz",
            "origin": "api",
            "profile": {"emails": ["nz@example.com"], "time_zone": "Pacific/Auckland"},
        },
        NOON,
    )
    consent = ev(
        "crm.contact.consent_changed.v1",
        "nz",
        {
            "contact_id": "nz",
            "channel": "email",
            "status": "granted",
            "source": "form",
            "changed_at": NOON.isoformat(),
        },
        NOON,
    )
    first = datetime(2026, 6, 10, 20, 30, tzinfo=UTC)  # 08:30 on 11 June in Auckland
    second = datetime(2026, 6, 11, 8, 0, tzinfo=UTC)  # 20:00 on 11 June: a new UTC day only
    third = datetime(2026, 6, 11, 20, 30, tzinfo=UTC)  # 08:30 on 12 June in Auckland
    await feed(app, [created, consent, stage("nz", "churned", first, event_id="x")])
    assert (await dispatch(app, first)).sent == 1
    await feed(app, [stage("nz", "new", second, event_id="y")])
    assert (await dispatch(app, second)).suppressed == 1  # the same day in Auckland: capped
    await feed(app, [stage("nz", "dormant", third - timedelta(days=3), event_id="z")])
    assert (await dispatch(app, third)).sent == 1  # the next day in Auckland
    assert len(smtp.to("nz@example.com")) == 2


class RestingEndpoint:
    """A channel whose endpoint is paused after failures, as the webhook channel reports."""

    name = "email"
    until = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)

    async def send(self, message: Any) -> SendResult:
        return SendResult(
            ok=False, detail=f"endpoint paused until {self.until.isoformat()}", retryable=True
        )

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "paused_until": self.until.isoformat()}


async def test_a_paused_endpoint_delays_a_message_without_using_up_its_attempts(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    dispatcher: Dispatcher = app.state.dispatcher
    dispatcher.channels = {**dispatcher.channels, "email": RestingEndpoint()}
    await feed(app, [*contact("p1", NOON), stage("p1", "churned", NOON)])
    await dispatch(app, NOON)
    [waiting] = await deliveries(client, "p1")
    assert waiting["status"] == "scheduled" and waiting["attempts"] == 0
    assert waiting["due_at"].startswith("2026-06-10T12:00")


class Refusing(RestingEndpoint):
    """A paused endpoint that refuses the message for good (a 4xx)."""

    async def send(self, message: Any) -> SendResult:
        return SendResult(ok=False, detail="HTTP 400: bad payload", retryable=False)


async def test_a_paused_endpoint_that_refuses_a_message_for_good_fails_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    dispatcher: Dispatcher = app.state.dispatcher
    dispatcher.channels = {**dispatcher.channels, "email": Refusing()}
    await feed(app, [*contact("p2", NOON), stage("p2", "churned", NOON)])
    await dispatch(app, NOON)
    [refused] = await deliveries(client, "p2")
    assert (refused["status"], refused["error"]) == ("failed", "HTTP 400: bad payload")


async def test_the_dry_run_log_keeps_a_year_of_triggers(app: FastAPI) -> None:
    old, recent = NOON - timedelta(days=400), NOON - timedelta(days=300)
    await feed(app, [stage("y1", "churned", old), stage("y1", "active", recent)])
    async with app.state.runtime.db.transaction() as conn:
        assert await forget_triggers(conn, NOON) == 2  # stage left and stage entered
        assert await forget_triggers(conn, NOON) == 0
        left = await conn.execute(select(trigger_log.c.time, trigger_log.c.kind))
        assert sorted(left.all()) == [(recent, "stage_entered"), (recent, "stage_left")]


async def test_an_event_that_changes_nothing_of_the_customer_does_not_rewrite_it(
    app: FastAPI,
) -> None:
    triggers: Triggers = app.state.triggers

    async def written() -> datetime:
        async with app.state.runtime.db.read() as conn:
            views = await outreach.load_customers(conn, ["v1"])
        return views["v1"]["updated_at"]  # type: ignore[no-any-return]

    wall = triggers.wall
    try:
        triggers.wall = Clock(NOON)
        await feed(app, contact("v1", NOON))
        triggers.wall = Clock(NOON + timedelta(hours=1))
        await feed(app, [ev("crm.purchase.completed.v1", "v1", PURCHASE, NOON)])
        assert await written() == NOON
        await feed(app, [stage("v1", "active", NOON)])
        assert await written() == NOON + timedelta(hours=1)
    finally:
        triggers.wall = wall


async def test_a_changed_rule_schedules_by_its_new_version_from_the_next_batch(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await feed(app, [*contact("r1", NOON), stage("r1", "dormant", NOON)])
    [first] = await deliveries(client, "r1")
    assert (first["rule_version"], first["due_at"]) == (1, "2026-06-13T10:00:00Z")
    rule = (await client.get("/v1/rules/wake_up")).json()["rule"]
    body = {k: v for k, v in rule.items() if k not in ("id", "version")}
    await client.put("/v1/rules/wake_up", json={**body, "delay_seconds": 86400})
    await feed(app, [*contact("r2", NOON), stage("r2", "dormant", NOON)])
    [second] = await deliveries(client, "r2")
    assert (second["rule_version"], second["due_at"]) == (2, "2026-06-11T10:00:00Z")
    await client.put("/v1/rules/wake_up", json={**body, "enabled": False})
    await feed(app, [*contact("r3", NOON), stage("r3", "dormant", NOON)])
    assert await deliveries(client, "r3") == []


@pytest.mark.parametrize("lookup", ["cancellable", "sent by day"])
async def test_per_customer_lookups_go_by_customer_on_sqlite(app: FastAPI, lookup: str) -> None:
    """Every consumed batch looks up its customers' waiting messages, and every run of the
    dispatcher what its customers were sent (caps). SQLite, without table statistics,
    planned both through the (status, due_at) index, reading every waiting or every sent
    message there is; they must go by customer."""
    runtime = app.state.runtime
    if runtime.db.dialect != "sqlite":
        pytest.skip("PostgreSQL plans with its statistics")
    ids = [f"c{i}" for i in range(1000)]  # a full chunk: with a few, SQLite went by customer
    query = (
        outreach._CANCELLABLE.params(ids=ids)
        if lookup == "cancellable"
        else outreach.sent_query(ids[:100], NOON.date())  # the dispatcher's batch
    )
    async with runtime.db.read() as conn:
        sql = str(query.compile(conn.sync_connection, compile_kwargs={"literal_binds": True}))
        plan = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")).all()
    assert "USING INDEX ix_deliveries_customer" in plan[0][3] or (
        "USING INDEX ix_deliveries_caps" in plan[0][3]
    ), plan
