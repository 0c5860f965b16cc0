"""Faults lose nothing: while 100,000 purchases stream into `crm.inbound`, every service is
killed (SIGKILL) and restarted in turn and the broker is frozen (SIGSTOP) for 10 s. After
the stream, each customer's stage history equals a straightforward offline fold of the same
purchases, scoring's statistics equal the offline sums, and each customer got exactly one
welcome message, whose outcome reached the contact's timeline.

Run with `make test-faults` (it is not part of `make test`: it takes a few minutes and
freezes the shared broker). `CRM_FAULT_EVENTS` / `CRM_FAULT_CUSTOMERS` scale it down.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from crm_shared.messaging.topics import INBOUND
from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import SERVICES, Stack
from tests.support.lifecycle_reference import transitions as reference_transitions

pytestmark = pytest.mark.faults
EVENTS = int(os.environ.get("CRM_FAULT_EVENTS", "100000"))
CUSTOMERS = int(os.environ.get("CRM_FAULT_CUSTOMERS", "10000"))
RATE = 2500  # events a second: the stream lasts long enough to fault it several times
PREFIX = f"f{uuid.uuid4().hex[:8]}."
DEADLINE_S = 900.0  # generous: this is about losing nothing, not speed (see bench/)


@dataclass(frozen=True)
class Purchase:
    event_id: str
    customer: str
    time: datetime
    amount: Decimal

    def message(self) -> bytes:
        return json.dumps(
            {
                "specversion": "1.0",
                "id": self.event_id,
                "source": "faults/shop",
                "type": "crm.purchase.completed.v1",
                "subject": self.customer,
                "time": self.time.isoformat(),
                "data": {
                    "order_id": self.event_id[:12],
                    "amount": str(self.amount),
                    "currency": "EUR",
                },
            }
        ).encode()


def workload(seed: int = 7) -> list[Purchase]:
    """Purchases over the last 200 days (so silence makes some customers dormant and
    churned), each customer buying at least once, in a shuffled order."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    customers = [f"fc-{i:05d}" for i in range(CUSTOMERS)]
    buyers = customers + [rng.choice(customers) for _ in range(EVENTS - CUSTOMERS)]
    purchases = [
        Purchase(
            str(uuid.UUID(int=rng.getrandbits(128))),
            who,
            now - timedelta(seconds=rng.randrange(200 * 86400)),
            Decimal(rng.randrange(100, 20000)) / 100,
        )
        for who in buyers
    ]
    rng.shuffle(purchases)
    return purchases


@pytest_asyncio.fixture(loop_scope="session")
async def stack(broker: Broker, tmp_path: Path) -> AsyncIterator[Stack]:
    if not broker.managed:
        pytest.skip("needs the test run's own broker (it is frozen)")
    env = {
        "CRM_FETCH_MAX_WAIT_MS": "10",
        "CRM_TOPIC_PREFIX": PREFIX,
        "CRM_CLOCK": "event-time",
        "CRM_DISPATCH_INTERVAL_S": "0.5",
        "CRM_SAFEGUARDS": '{"quiet_start": "00:00", "quiet_end": "00:00"}',
    }
    stack = Stack(SERVICES, bootstrap=broker.bootstrap, data_dir=tmp_path, env=env)
    await stack.start_async()
    try:
        yield stack
    finally:
        await stack.stop_async()


async def stream(
    bootstrap: str,
    purchases: list[Purchase],
    faults: dict[int, Callable[[], Coroutine[Any, Any, None]]],
) -> None:
    """Produce at RATE a second; at the given counts, start a fault (without waiting)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5, acks=1
    )
    await producer.start()
    started, running = time.monotonic(), []
    try:
        for sent, purchase in enumerate(purchases):
            if sent in faults:
                running.append(asyncio.create_task(faults[sent]()))
            await producer.send(
                PREFIX + INBOUND, purchase.message(), key=purchase.customer.encode()
            )
            if sent % 500 == 0:
                ahead = started + sent / RATE - time.monotonic()
                await asyncio.sleep(max(ahead, 0))
        await producer.flush()
        await asyncio.gather(*running)
    finally:
        await producer.stop()


def query(stack: Stack, service: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(stack.data_dir / f"{service}.db", timeout=30) as db:
        return db.execute(sql).fetchall()


def when(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def progress(stack: Stack) -> dict[str, int]:
    purchase = "type = 'crm.purchase.completed.v1'"
    return {
        "contacts": query(stack, "contacts", f"SELECT count(*) FROM events WHERE {purchase}")[0][0],
        "lifecycle": query(stack, "lifecycle", f"SELECT count(*) FROM facts WHERE {purchase}")[0][
            0
        ],
        "scoring": query(
            stack, "scoring", "SELECT coalesce(sum(purchases), 0) FROM customer_stats"
        )[0][0],
        "welcomes": query(
            stack, "notifications", "SELECT count(*) FROM deliveries WHERE rule_id = 'welcome'"
        )[0][0],
        "outreach_on_timelines": query(
            stack,
            "contacts",
            "SELECT count(DISTINCT json_extract(envelope, '$.data.delivery_id')) FROM events "
            "WHERE type LIKE 'crm.outreach.%'",
        )[0][0],
        "final_deliveries": query(
            stack,
            "notifications",
            "SELECT count(*) FROM deliveries WHERE status IN ('sent', 'suppressed', 'failed')",
        )[0][0],
    }


def complete(seen: dict[str, int]) -> bool:
    return (
        seen["contacts"] == EVENTS
        and seen["lifecycle"] == EVENTS
        and seen["scoring"] == EVENTS
        and seen["welcomes"] == CUSTOMERS
        and seen["outreach_on_timelines"] == seen["final_deliveries"] > 0
    )


async def wait_until_processed(stack: Stack, deadline: float) -> dict[str, int]:
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        seen = progress(stack)
        if complete(seen):
            return seen
        await asyncio.sleep(1.0)
    raise AssertionError(f"not everything processed in time: {seen}")


def lifecycle_mismatches(stack: Stack, purchases: list[Purchase]) -> list[str]:
    """Customers whose published (not superseded) history differs from the offline fold at
    the service's event-time clock."""
    clock_sql = "SELECT value FROM lifecycle_clock WHERE name = 'event-time'"
    (clock,) = query(stack, "lifecycle", clock_sql)[0]
    now = when(clock)
    bought: dict[str, list[datetime]] = defaultdict(list)
    for p in purchases:
        bought[p.customer].append(p.time)
    rows = query(
        stack,
        "lifecycle",
        "SELECT customer_id, from_stage, to_stage, reason, occurred_at FROM stage_transitions "
        "WHERE superseded = 0 AND reason != 'identified' ORDER BY customer_id, seq",
    )
    published: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for customer, from_stage, to_stage, reason, at in rows:
        published[customer].append((from_stage, to_stage, reason, when(at)))
    wrong = []
    for customer, times in bought.items():
        expected = [t for t in reference_transitions(times, now) if t[2] != "identified"]
        if expected and expected[0][0] is None:
            expected[0] = ("prospect", *expected[0][1:])
        if not same_history(published.get(customer, []), expected):
            wrong.append(f"{customer}: {published.get(customer)} != {expected}")
    return wrong


def same_history(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> bool:
    """Equal transitions; times within a millisecond (a silence of `k x mean gap` days is
    rounded to the microsecond one way by the service and another by the reference)."""
    return len(got) == len(expected) and all(
        g[:3] == e[:3] and abs(g[3] - e[3]) <= timedelta(milliseconds=1)
        for g, e in zip(got, expected, strict=True)
    )


def scoring_mismatches(stack: Stack, purchases: list[Purchase]) -> list[str]:
    count: dict[str, int] = defaultdict(int)
    spend: dict[str, Decimal] = defaultdict(Decimal)
    for p in purchases:
        count[p.customer] += 1
        spend[p.customer] += p.amount
    rows = query(stack, "scoring", "SELECT customer_id, purchases, total_spend FROM customer_stats")
    stored = {c: (n, Decimal(str(s)).quantize(Decimal("0.01"))) for c, n, s in rows}
    return [
        f"{c}: {stored.get(c)} != {(count[c], spend[c])}"
        for c in count
        if stored.get(c) != (count[c], spend[c])
    ]


async def test_killing_every_service_and_freezing_the_broker_mid_stream_loses_nothing(
    stack: Stack, broker: Broker
) -> None:
    purchases = workload()
    killed: list[str] = []

    def kill_and_restart(name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def fault() -> None:
            stack[name].kill()
            killed.append(name)
            await stack[name].restart_async(hard=True, within=90)

        return fault

    async def freeze_broker() -> None:
        broker.pause()
        await asyncio.sleep(10)
        broker.resume()

    step = EVENTS // 10
    faults = {
        1 * step: kill_and_restart("contacts"),
        3 * step: kill_and_restart("lifecycle"),
        4 * step: kill_and_restart("scoring"),
        5 * step: kill_and_restart("notifications"),
        7 * step: freeze_broker,
    }
    deadline = time.monotonic() + DEADLINE_S
    await stream(broker.bootstrap, purchases, faults)
    assert killed == ["contacts", "lifecycle", "scoring", "notifications"]
    await wait_until_processed(stack, deadline)

    assert not stack.dead(), [p.log_tail() for p in stack.dead()]
    # Lifecycle's last sweeps may trail the last fact by a batch: poll until it agrees.
    wrong = lifecycle_mismatches(stack, purchases)
    while wrong and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        wrong = lifecycle_mismatches(stack, purchases)
    assert not wrong, f"{len(wrong)} customers differ, e.g. {wrong[:3]}"
    assert not scoring_mismatches(stack, purchases)
    per_customer = query(
        stack,
        "notifications",
        "SELECT customer_id, count(*) FROM deliveries WHERE rule_id = 'welcome' "
        "GROUP BY customer_id HAVING count(*) != 1",
    )
    assert per_customer == []
    stuck = "SELECT count(*) FROM deliveries WHERE status = 'sending'"
    assert query(stack, "notifications", stuck) == [(0,)]
