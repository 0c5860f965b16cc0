"""What the architecture contract alone costs for the CDNOW replay: the four services'
consumers with their own work taken out, against the services themselves in the same run.

`bench.inprocess` runs the CDNOW master through the four services in one process, without
a broker. This runs it twice on the same machine, in the same process:

1. the services as they are, counting what each consumer takes and what each topic carries;
2. the floor: every consumer keeps what `../shared/DESIGN.md` requires of it and nothing
   else. Each batch is decoded and validated (CloudEvents envelope and the type's model),
   checked against the inbox, applied in one transaction that records the inbox and writes
   one row per event to a table of its own (the least a projection is), and publishes
   through the outbox as many events as the real consumer published per event it took
   (from run 1: transitions per customer event, scores per event, outreach per trigger
   event). What is published is an event of the consumed one's type, so the next consumer
   decodes and validates a real event of about the same size. The relays publish as in
   run 1 (contacts' opens sealed payloads, of which the floor makes none).

Neither run has a broker, Kafka clients or HTTP: the floor is the services' part of the
lower bound, before the broker's CPU and the clients' (in `make bench`'s CDNOW replay the
broker alone took 3.7 s of CPU). On 2 cores, the replay cannot end sooner than the floor's
CPU over 2.

    .venv/bin/python -m bench.floor [--limit N] [--batch B] [--no-save]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Column, MetaData, String, Table
from sqlalchemy.ext.asyncio import AsyncConnection

from bench import inprocess, runinfo
from crm_shared.app.runtime import Subscription
from crm_shared.events import Event, EventData, new_event
from crm_shared.messaging.consumer import Handler
from crm_shared.messaging.topics import CUSTOMER_EVENTS, LIFECYCLE, OUTREACH, SCORES
from crm_shared.store.bulk import insert_rows
from crm_shared.store.outbox import Outbox, OutgoingMessage
from crm_shared.store.tables import UtcDateTime

NAME = "floor"
# Which consumers publish each topic (notifications' outreach: its dispatcher, after the
# triggers consumer scheduled the messages; the floor publishes it from the triggers).
PUBLISHERS: dict[str, tuple[str, ...]] = {
    CUSTOMER_EVENTS: ("contacts.inbound",),
    LIFECYCLE: ("lifecycle.customer-events",),
    SCORES: ("scoring.customer-events", "scoring.lifecycle"),
    OUTREACH: ("notifications.outreach-triggers",),
}

_metadata = MetaData()
FLOOR_VIEW = Table(
    "floor_view",
    _metadata,
    Column("customer_id", String, primary_key=True),
    Column("event_id", String, nullable=False),
    Column("time", UtcDateTime, nullable=False),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="the first N purchases only")
    p.add_argument("--batch", type=int, default=2000, help="records per consumed batch")
    p.add_argument("--results-dir", type=Path, default=runinfo.RESULTS)
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    return p.parse_args(argv)


def fan_out(taken: Mapping[str, int], published: Mapping[str, int]) -> dict[str, float]:
    """Events published per event taken, by consumer: a topic's events shared among its
    publishers in proportion to what each took."""
    ratios: dict[str, float] = {}
    for topic, consumers in PUBLISHERS.items():
        took = sum(taken.get(c, 0) for c in consumers)
        for consumer in consumers:
            ratios[consumer] = published.get(topic, 0) / took if took else 0.0
    return ratios


class FloorHandler:
    """Writes one row per event and publishes `ratio` events per event taken (the fraction
    carried over from batch to batch)."""

    def __init__(self, outbox: Outbox, topic: str | None, ratio: float) -> None:
        self.outbox, self.topic, self.ratio = outbox, topic, ratio
        self.owed = 0.0

    async def __call__(self, conn: AsyncConnection, events: list[Event[EventData]]) -> None:
        now = datetime.now(UTC)
        latest = {
            e.subject: {"customer_id": e.subject, "event_id": e.id, "time": e.time} for e in events
        }
        await insert_rows(conn, FLOOR_VIEW, list(latest.values()), on_conflict="update")
        if self.topic is None:
            return
        out = []
        for e in events:
            self.owed += self.ratio
            while self.owed >= 1:
                self.owed -= 1
                event = new_event(
                    type=e.type,
                    source="bench/floor",
                    subject=e.subject,
                    time=e.time,
                    data=e.data.model_dump(mode="json"),
                )
                out.append(OutgoingMessage(topic=self.topic, key=e.subject, event=event))
        await self.outbox.add(conn, out, now)


def floor(ratios: Mapping[str, float]) -> inprocess.Substitute:
    async def substitute(apps: dict[str, FastAPI]) -> Callable[[str, Subscription], Handler]:
        for app in apps.values():
            async with app.state.runtime.db.engine.begin() as conn:
                await conn.run_sync(_metadata.create_all)

        def handler_for(consumer: str, _s: Subscription) -> Handler:
            service = consumer.split(".")[0]
            topic = next((t for t, cs in PUBLISHERS.items() if consumer in cs), None)
            outbox = apps[service].state.runtime.outbox
            return FloorHandler(outbox, topic, ratios.get(consumer, 0.0))

        return handler_for

    return substitute


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    (directory / "services").mkdir()
    (directory / "floor").mkdir()
    run_args = argparse.Namespace(
        limit=args.limit, batch=args.batch, statements=False, profile=None
    )
    services = await inprocess.run(run_args, directory / "services")
    ratios = fan_out(services["taken"], services["published"])
    floored = await inprocess.run(run_args, directory / "floor", floor(ratios))
    return {"services": services, "floor": floored, "fan_out": ratios}


def report(result: dict[str, Any]) -> None:
    services, floored = result["services"], result["floor"]
    real_cpu, floor_cpu = sum(services["cpu_s"].values()), sum(floored["cpu_s"].values())
    print(
        f"{services['purchases']:,} CDNOW purchases in batches of {services['batch']:,}, "
        "in process, without a broker (s of CPU)"
    )
    print(f"  {'':34s} {'services':>9s} {'floor':>9s} {'taken':>9s} {'floor/services':>15s}")
    for name in sorted(set(services["cpu_s"]) | set(floored["cpu_s"])):
        real, low = services["cpu_s"].get(name, 0.0), floored["cpu_s"].get(name, 0.0)
        ratio = f"{low / real:.2f}" if real else ""
        taken = services["taken"].get(name, 0)
        print(f"  {name:34s} {real:9.2f} {low:9.2f} {taken:9,} {ratio:>15s}")
    print(f"  {'all':34s} {real_cpu:9.2f} {floor_cpu:9.2f} {'':9s} {floor_cpu / real_cpu:15.2f}")
    print("published per event taken (the floor's fan-out, from the services' run):")
    for consumer, ratio in result["fan_out"].items():
        print(f"  {consumer:34s} {ratio:.3f}")
    print("events carried, services / floor:")
    for topic, count in sorted(services["published"].items()):
        print(f"  {topic:34s} {count:9,} {floored['published'].get(topic, 0):9,}")
    print(
        f"on 2 cores, no sooner than: services {real_cpu / 2:.1f} s, floor {floor_cpu / 2:.1f} s "
        "(before the broker and the Kafka clients)"
    )
    dead = {**services["dead_letters"], **floored["dead_letters"]}
    if dead:
        print("dead letters (none expected):", dead)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="crm-floor-") as directory:
        measured = asyncio.run(measure(args, Path(directory)))
    for run in ("services", "floor"):
        measured[run].pop("statements", None)
    result = {
        "benchmark": NAME,
        "started_at": started.isoformat(),
        "command": " ".join(["python -m bench.floor", *sys.argv[1:]]),
        "settings": runinfo.settings(args),
        "machine": runinfo.machine(),
        **measured,
    }
    report(result)
    if not args.no_save:
        path = runinfo.save(result, args.results_dir, NAME, stamp)
        print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
