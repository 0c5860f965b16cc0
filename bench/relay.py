"""What the outbox relay costs per message: its rounds over a SQLite outbox, against the
embedded broker, in this process's CPU and the broker's.

`--messages` rows (~370 bytes of payload, keys over `--keys` customers, as contacts writes
them) are written to a fresh outbox, then the relay publishes them in rounds of
`--batch-size` until none is left; that is timed. Run it on two versions of the code (a
`git worktree` of the other one, with `PYTHONPATH` set to its source folders) to compare
them.

    .venv/bin/python -m bench.relay [--messages 50000] [--rounds 3] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import MetaData

from crm_shared.app.metrics import Metrics
from crm_shared.events import CloudEvent
from crm_shared.messaging.kafka import make_producer
from crm_shared.messaging.relay import OutboxRelay
from crm_shared.messaging.topics import ensure_topics
from crm_shared.store.db import Database
from crm_shared.store.outbox import Outbox, OutgoingMessage
from crm_shared.store.tables import CoreTables
from crm_shared.testing.broker import Broker

TOPIC = "crm.customer-events"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _message(i: int, keys: int) -> OutgoingMessage:
    customer = f"0192f3c4-5d6e-7f80-9a1b-{i % keys:012x}"
    event = CloudEvent(
        id=f"0192f3c4-0000-7000-8000-{i:012x}",
        source="crm/contacts",
        type="crm.purchase.completed.v1",
        subject=customer,
        time=NOW,
        data={"order_id": f"o-{i}", "amount": "49.90", "currency": "EUR", "item_count": 2},
    )
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    return OutgoingMessage(TOPIC, customer, event, headers)


async def one_round(args: argparse.Namespace, broker: Broker, directory: Path) -> dict[str, float]:
    metadata = MetaData()
    tables = CoreTables.on(metadata)
    db = Database(f"sqlite+inline:///{directory / f'relay-{time.time_ns()}.db'}")
    async with db.transaction() as conn:
        await conn.run_sync(metadata.create_all)
    outbox = Outbox(tables)
    messages = [_message(i, args.keys) for i in range(args.messages)]
    for start in range(0, len(messages), 5000):
        async with db.transaction() as conn:
            await outbox.add(conn, messages[start : start + 5000], NOW)
    producer = make_producer(broker.bootstrap, client_id="bench-relay")
    await producer.start()
    relay = OutboxRelay(db, outbox, producer, Metrics("bench"), batch_size=args.batch_size)
    try:
        assert broker.pid is not None
        broker_cpu, cpu, wall = _cpu_seconds(broker.pid), time.process_time(), time.perf_counter()
        sent = 0
        while published := await relay.publish_pending():
            sent += published
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        broker_cpu = _cpu_seconds(broker.pid) - broker_cpu
    finally:
        await producer.stop()
        await db.dispose()
    assert sent == args.messages, (sent, args.messages)
    return {"wall": wall, "cpu": cpu, "broker": broker_cpu}


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="crm-bench-relay-") as tmp:
        async with Broker() as broker:
            await ensure_topics(broker.bootstrap, [TOPIC], partitions=args.partitions)
            print(
                f"relay: {args.messages:,} messages over {args.keys:,} keys, rounds of "
                f"{args.batch_size}, {args.partitions} partitions"
            )
            for n in range(args.rounds):
                r = await one_round(args, broker, Path(tmp))
                print(
                    f"  run {n + 1}: {r['wall']:.2f} s, relay CPU {r['cpu']:.2f} s "
                    f"({1e6 * r['cpu'] / args.messages:.1f} us/message), broker CPU "
                    f"{r['broker']:.2f} s ({1e6 * r['broker'] / args.messages:.1f} us/message)"
                )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=500, help="rows per relay round")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
