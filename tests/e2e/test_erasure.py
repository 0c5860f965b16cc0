"""End to end: erasing a contact crypto-shreds their personal data everywhere it is kept
(records, timeline, stored events, re-published events, notifications' copy), while the
non-personal history (purchases, stages, scores) stays and rebuilds the same."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from crm_shared.messaging.topics import CUSTOMER_EVENTS
from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import SERVICES, Stack
from tests.support.events import purchase_json
from tests.support.kafka import eventually, read_topic

pytestmark = pytest.mark.e2e
TAG = uuid.uuid4().hex[:8]
EMAIL = f"erin.{TAG}@example.com"
NAME = f"Erin{TAG}"
COMMENT = f"call me on the number {TAG}"
PREFIX = f"e{TAG}."


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("erasure")
    env = {"CRM_FETCH_MAX_WAIT_MS": "10", "CRM_TOPIC_PREFIX": PREFIX}
    stack = Stack(SERVICES, bootstrap=broker.bootstrap, data_dir=data_dir, env=env)
    await stack.start_async()
    try:
        yield stack
    finally:
        await stack.stop_async()


def dump(stack: Stack, service: str) -> str:
    """Every row of a service's database, as SQL text."""
    with sqlite3.connect(stack.data_dir / f"{service}.db") as db:
        return "\n".join(db.iterdump())


def stored_events(stack: Stack) -> str:
    """Contacts' event store and outbox, as stored."""
    with sqlite3.connect(stack.data_dir / "contacts.db") as db:
        rows = db.execute("SELECT envelope FROM events UNION ALL SELECT payload FROM outbox")
        return "\n".join(str(row[0]) for row in rows)


def notifications_row(stack: Stack, customer: str) -> dict[str, Any] | None:
    with sqlite3.connect(stack.data_dir / "notifications.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM customers WHERE customer_id = ?", (customer,)).fetchone()
    return dict(row) if row else None


def feedback_json(customer: str, at: datetime) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "test/survey",
        "type": "crm.feedback.submitted.v1",
        "subject": customer,
        "time": at.isoformat(),
        "data": {"nps": 9, "comment": COMMENT},
    }


async def test_erasing_a_contact_shreds_personal_data_and_keeps_the_history(
    stack: Stack, broker: Broker
) -> None:
    start = datetime.now(UTC) - timedelta(days=20)
    async with stack.client("contacts") as contacts:
        created = await contacts.post(
            "/v1/contacts",
            json={"first_name": NAME, "emails": [EMAIL], "birthday": "1990-04-01"},
        )
        assert created.status_code == 201, created.text
        contact = created.json()["id"]
        consent = {"status": "granted", "source": "signup"}
        granted = await contacts.put(f"/v1/contacts/{contact}/consent/email", json=consent)
        assert granted.status_code == 200, granted.text
        events = [
            purchase_json(f"email:{EMAIL}", start=start),
            purchase_json(contact, start=start, day=5),
            feedback_json(contact, start + timedelta(days=6)),
        ]
        posted = await contacts.post("/v1/events", json=events)
        assert posted.status_code == 200, posted.text
        assert posted.json()["accepted"] == 3

        # Before: the personal data is known where it is used, and sealed where it is stored.
        await eventually(lambda: _stage(stack, contact, "active"), within=30)
        await eventually(lambda: _notified_email(stack, contact, EMAIL), within=30)
        stored = stored_events(stack)
        assert NAME not in stored and EMAIL not in stored and COMMENT not in stored
        before = await _transitions(stack, contact)

        erased = await contacts.post(f"/v1/contacts/{contact}/erase", headers={"X-Actor": "dpo"})
        assert erased.status_code == 200, erased.text
        assert erased.json()["erased_ids"] == [contact]
        again = await contacts.post(f"/v1/contacts/{contact}/erase")
        assert again.status_code == 200 and again.json() == erased.json()

        # Contacts: the record is gone, its history and timeline hold nothing personal.
        assert (await contacts.get(f"/v1/contacts/{contact}")).status_code == 410
        history = (await contacts.get(f"/v1/contacts/{contact}/history")).text
        timeline = (await contacts.get(f"/v1/contacts/{contact}/timeline")).json()
        assert [i["event"]["type"] for i in timeline["items"]].count(
            "crm.purchase.completed.v1"
        ) == 2
        for text in (history, json.dumps(timeline), dump(stack, "contacts")):
            assert EMAIL not in text and NAME not in text and COMMENT not in text
        found = await contacts.get("/v1/contacts", params={"email": EMAIL})
        assert found.status_code == 200 and found.json()["items"] == []
        later = await contacts.post("/v1/events", json=purchase_json(contact))
        assert later.status_code == 422 and "erased" in later.text

    # Lifecycle: the story ends with an `erased` transition; a rebuild gives the same.
    await eventually(lambda: _stage(stack, contact, "churned"), within=30)
    after = await _transitions(stack, contact)
    assert after[: len(before)] == before
    assert after[-1]["reason"] == "erased" and after[-1]["to_stage"] == "churned"
    async with stack.client("lifecycle") as lifecycle:
        rebuilt = await lifecycle.post("/v1/admin/rebuild", timeout=60)
        assert rebuilt.status_code == 200, rebuilt.text
    assert await _transitions(stack, contact) == after

    # Notifications dropped its copy; scoring's non-personal score is still there.
    row = await eventually(lambda: _erased_row(stack, contact), within=30)
    assert row["email"] is None and row["first_name"] is None and row["birthday"] is None
    assert NAME not in dump(stack, "notifications") and EMAIL not in dump(stack, "notifications")
    async with stack.client("scoring") as scoring:
        score = await eventually(lambda: _score(scoring, contact), within=30)
        assert score["customer_id"] == contact

    # A re-publish from the contacts store carries no personal data any more.
    async with stack.client("contacts") as contacts:
        republished = await contacts.post("/v1/admin/republish", json={"from_id": 1})
        assert republished.status_code == 200, republished.text
        total = republished.json()["high_water"]
    records = await read_topic(
        broker.bootstrap, PREFIX + CUSTOMER_EVENTS, count=2 * total, within=30
    )
    latest: dict[str, bytes] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.key == contact.encode():
            latest[json.loads(record.value)["id"]] = record.value
    assert len(latest) >= 5  # created, consent, 2 purchases, feedback, erased
    for value in latest.values():
        assert EMAIL.encode() not in value and NAME.encode() not in value
        assert COMMENT.encode() not in value


async def _stage(stack: Stack, customer: str, wanted: str) -> bool:
    async with stack.client("lifecycle") as client:
        response = await client.get(f"/v1/customers/{customer}/stage")
    return response.status_code == 200 and response.json()["stage"] == wanted


async def _transitions(stack: Stack, customer: str) -> list[dict[str, Any]]:
    async with stack.client("lifecycle") as client:
        response = await client.get(f"/v1/customers/{customer}/transitions")
    assert response.status_code == 200, response.text
    keys = ("from_stage", "to_stage", "reason", "occurred_at")
    return [{k: t[k] for k in keys} for t in response.json()]


async def _notified_email(stack: Stack, customer: str, email: str) -> bool:
    row = notifications_row(stack, customer)
    return row is not None and row["email"] == email


async def _erased_row(stack: Stack, customer: str) -> dict[str, Any] | None:
    row = notifications_row(stack, customer)
    return row if row is not None and row["erased_at"] is not None else None


async def _score(client: Any, customer: str) -> dict[str, Any] | None:
    response = await client.get(f"/v1/customers/{customer}/score")
    return response.json() if response.status_code == 200 else None
