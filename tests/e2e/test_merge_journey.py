"""End to end: two contacts that are one person are merged, then the merge is undone. Every
service follows: lifecycle and scoring count both contacts' purchases for the survivor while
the merge stands and give each its own back after the unmerge, and the restored contact,
welcomed once before the merge, is not welcomed again."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import Stack
from tests.support.events import purchase_json
from tests.support.kafka import eventually
from tests.support.mailbox import Mailbox, mailing_stack

pytestmark = pytest.mark.e2e
SERVICES = ["contacts", "lifecycle", "scoring", "notifications"]
# Recent enough for the welcome not to be stale when it is dispatched.
DAY0 = (datetime.now(UTC) - timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(
    broker: Broker, smtp: Mailbox, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("merge")
    async with mailing_stack(
        SERVICES, bootstrap=broker.bootstrap, box=smtp, data_dir=data_dir
    ) as stack:
        yield stack


def notifications_took_in_everything_lifecycle_published(data_dir: Path) -> bool:
    with sqlite3.connect(data_dir / "lifecycle.db") as db:
        published = {r[0] for r in db.execute("SELECT event_id FROM outbox")}
    with sqlite3.connect(data_dir / "notifications.db") as db:
        applied = {r[0] for r in db.execute("SELECT event_id FROM inbox")}
    return published <= applied


async def test_a_merge_and_its_unmerge_through_every_service(stack: Stack, smtp: Mailbox) -> None:
    async with stack.client("contacts") as contacts:
        ids = {}
        for name in ("ada", "bea"):
            body = {"first_name": name.title(), "emails": [f"{name}@example.com"]}
            ids[name] = (await contacts.post("/v1/contacts", json=body)).json()["id"]
            consent = {"status": "granted", "source": "signup"}
            await contacts.put(f"/v1/contacts/{ids[name]}/consent/email", json=consent)
        ada, bea = ids["ada"], ids["bea"]
        for who, day in ((ada, 0), (ada, 1), (bea, 0.5)):
            event = purchase_json(who, day=day, start=DAY0)
            assert (await contacts.post("/v1/events", json=event)).status_code == 202

    async def stage(who: str) -> str | None:
        async with stack.client("lifecycle") as lifecycle:
            answer = await lifecycle.get(f"/v1/customers/{who}/stage")
        return answer.json().get("stage") if answer.status_code == 200 else None

    async def repeat_purchases(who: str) -> float | None:
        async with stack.client("scoring") as scoring:
            answer = await scoring.get(f"/v1/customers/{who}/score")
        return answer.json()["explanation"]["value"]["x"] if answer.status_code == 200 else None

    async def state() -> tuple[Any, ...]:
        return (
            await stage(ada),
            await stage(bea),
            await repeat_purchases(ada),
            await repeat_purchases(bea),
        )

    async def reaches(wanted: tuple[Any, ...]) -> Any:
        return await state() == wanted or None

    async def welcomed() -> Any:
        return smtp.to("bea@example.com") or None

    async def settled() -> Any:
        return notifications_took_in_everything_lifecycle_published(stack.data_dir) or None

    await eventually(lambda: reaches(("active", "new", 1.0, 0.0)), within=40)
    await eventually(welcomed, within=30)

    async with stack.client("contacts") as contacts:
        merged = await contacts.post(f"/v1/contacts/{ada}/merge", json={"others": [bea]})
        assert merged.status_code == 200, merged.text
    # Bea's purchase is Ada's third purchase day; Bea is no customer of her own.
    await eventually(lambda: reaches(("active", None, 2.0, None)), within=30)

    async with stack.client("contacts") as contacts:
        restored = await contacts.post(f"/v1/contacts/{ada}/unmerge", json={"contact_id": bea})
        assert restored.status_code == 200, restored.text
    await eventually(lambda: reaches(("active", "new", 1.0, 0.0)), within=30)
    await eventually(settled, within=30)
    async with stack.client("notifications") as notifications:
        log = (await notifications.get(f"/v1/customers/{bea}/deliveries")).json()["items"]
    assert [d["rule_id"] for d in log] == ["welcome"]  # once, before the merge
    assert len(smtp.to("bea@example.com")) == 1
