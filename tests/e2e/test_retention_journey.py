"""End to end: a customer buys, falls silent (the event-time clock moves on), turns
dormant in lifecycle, and gets one wake-up email through a real SMTP server."""

from __future__ import annotations

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
# Ada bought 130 and 110 days ago. Her contact record is written now, so with the
# event-time clock "now" is today: 110 silent days, dormant after max(90, 3 x 20) = 90.
DAY0 = (datetime.now(UTC) - timedelta(days=130)).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(
    broker: Broker, smtp: Mailbox, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("journey")
    async with mailing_stack(
        ["contacts", "lifecycle", "notifications"],
        bootstrap=broker.bootstrap,
        box=smtp,
        data_dir=data_dir,
    ) as stack:
        yield stack


async def test_silence_after_purchases_sends_one_wake_up_email(stack: Stack, smtp: Mailbox) -> None:
    async with stack.client("contacts") as contacts:
        ada = (
            await contacts.post(
                "/v1/contacts",
                json={"first_name": "Ada", "emails": ["ada@example.com"], "time_zone": "UTC"},
            )
        ).json()
        await contacts.put(
            f"/v1/contacts/{ada['id']}/consent/email",
            json={"status": "granted", "source": "signup"},
        )
        for day in (0, 20):
            event = purchase_json(ada["id"], day=day, start=DAY0)
            assert (await contacts.post("/v1/events", json=event)).status_code == 202

    async def stage() -> Any:
        async with stack.client("lifecycle") as lifecycle:
            answer = await lifecycle.get(f"/v1/customers/{ada['id']}/stage")
        return answer.json().get("stage") == "dormant"

    await eventually(stage, within=40)

    async def mailed() -> Any:
        return smtp.to("ada@example.com") or None

    [mail] = await eventually(mailed, within=30)
    assert "Ada" in mail.get_payload(decode=True).decode()
    async with stack.client("notifications") as notifications:
        log = (await notifications.get(f"/v1/customers/{ada['id']}/deliveries")).json()["items"]
    sent = [d for d in log if d["status"] == "sent"]
    assert [d["rule_id"] for d in sent] == ["wake_up"]
    assert sent[0]["due_at"].startswith((DAY0 + timedelta(days=113)).date().isoformat())
    assert sent[0]["context"]["stage"] == "dormant"
    assert len(smtp.to("ada@example.com")) == 1  # once, whatever was redelivered
