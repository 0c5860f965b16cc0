"""The CDNOW master through the whole system: `python -m bench.lifecycle_replay --through
contacts`.

The replay of `bench.lifecycle_replay`, with contacts in front: every purchase is produced as
a shop would send it (CloudEvents JSON, key and subject the CDNOW customer id) to
`crm.inbound`. Contacts validates it, creates a contact for each customer it does not know
yet (a bare subject is a contact id: the contact gets the CDNOW id), stores it on the
timeline and publishes it, with the contact's creation, on `crm.customer-events`; lifecycle
and scoring fold them, scoring also folds lifecycle's transitions, and notifications takes in
all three topics. Every service runs with `CRM_CLOCK=event-time`.

Timed from the first send:
- `replay`: until lifecycle AND scoring applied every event contacts published (each
  purchase, and a contact per customer);
- `settle`: until nothing is left in flight: every relay (contacts, lifecycle, scoring)
  published its whole outbox, scoring took in every transition lifecycle published, and
  notifications every message of the three topics it consumes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import httpx

from bench.lifecycle_replay import OF_LIFECYCLE, Run, reference_counts
from bench.observe import CONSUMED, DEAD_LETTERED, DUPLICATES, PUBLISHED, Watcher, read_metrics
from bench.observe import metric_sum as total
from bench.workload import kafka_records
from crm_shared.messaging.topics import INBOUND

RELAYS = ("contacts", "lifecycle", "scoring")
TAKEN = (CONSUMED, DUPLICATES, DEAD_LETTERED)  # a message dealt with, one way or another
OF_INBOUND = 'consumer="inbound"'  # contacts' consumer of crm.inbound (it also has outreach)


class SystemRun(Run):
    """`Run` with contacts in front: raw events to crm.inbound."""

    topic = INBOUND

    def records_of(self, events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
        return kafka_records(events)

    def stack_services(self) -> list[str]:
        return ["contacts", *self.services]

    def _consumers(self) -> dict[str, tuple[httpx.AsyncClient, str]]:
        out = {"contacts.inbound": (self.clients["contacts"], OF_INBOUND)}
        out |= super()._consumers()
        if "notifications" in self.clients:
            out["notifications.consumed"] = (self.clients["notifications"], "")
        return out

    async def _warm_up(self, watcher: Watcher, within: float = 60.0) -> dict[str, Any]:
        """The warm-up purchase through contacts; then how many events each folding service
        applies for a new customer's first purchase (the purchase and its new contact)."""
        out = await super()._warm_up(watcher, within)
        await asyncio.sleep(1.0)  # what else the purchase caused arrives meanwhile
        applied = await watcher.current()
        per_customer = max(1, min(int(applied.get(fold, 1)) for fold in self.folds))
        self.expected = len(self.records) + (per_customer - 1) * self.customers
        return out | {"applied_per_new_customer": per_customer}

    async def settle(self) -> None:
        """Wait (at most `--drain-timeout`) until nothing is in flight; see the docstring."""
        started = time.perf_counter()
        deadline, flows, pending = started + self.args.drain_timeout, {}, {}
        settled = False
        while not settled and time.perf_counter() < deadline:
            # Counters, then the outboxes, then the counters again: a row stored before the
            # outboxes were read was published before the second reading, and what the
            # consumers took in is compared with what was published by the first.
            flows = await self._flows()
            pending = self._pending()
            again = await self._flows()
            settled = _settled(flows, pending) and all(
                again[f"{relay}.published"] == flows[f"{relay}.published"] for relay in RELAYS
            )
            if not settled:
                await asyncio.sleep(0.1)
        replay = self.result["replay"]
        after = round(time.perf_counter() - started, 2)
        self.result["settle"] = {
            "complete": settled,
            "seconds_after_fold": after,
            "seconds": round(replay["seconds"] + after, 2) if replay.get("seconds") else None,
            "published": {relay: int(flows.get(f"{relay}.published", 0)) for relay in RELAYS},
            "pending": pending,
            "taken": {k: int(v) for k, v in flows.items() if not k.endswith(".published")},
        }
        if {"lifecycle", "scoring"} <= set(self.services):
            self.result["stages_agree"] = self._stages_agree()

    def _stages_agree(self) -> dict[str, Any]:
        """Does scoring hold, for every customer, the stage lifecycle has? (Scoring keeps the
        last stage lifecycle published to it.)"""
        found = {}
        for service, sql in (
            ("lifecycle", "SELECT customer_id, stage FROM customer_stages"),
            ("scoring", "SELECT customer_id, stage FROM customer_stats"),
        ):
            path = self.workdir / f"{service}.db"
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
                found[service] = dict(conn.execute(sql).fetchall())
        lifecycle, scoring = found["lifecycle"], found["scoring"]
        differ = sorted(c for c in lifecycle if scoring.get(c) != lifecycle[c])
        return {
            "customers": len(lifecycle),
            "differ": len(differ),
            "examples": [(c, lifecycle[c], scoring.get(c)) for c in differ[:5]],
        }

    async def _flows(self) -> dict[str, float]:
        texts = {name: await read_metrics(client) for name, client in self.clients.items()}
        out = {f"{relay}.published": total(texts[relay], PUBLISHED) for relay in RELAYS}
        out["scoring.lifecycle"] = sum(total(texts["scoring"], m, OF_LIFECYCLE) for m in TAKEN)
        if "notifications" in texts:
            out["notifications"] = sum(total(texts["notifications"], m) for m in TAKEN)
        return out

    def _pending(self) -> dict[str, int | None]:
        """Outbox rows not published yet, per relay (None: not readable just now)."""
        out: dict[str, int | None] = {}
        for relay in RELAYS:
            path = self.workdir / f"{relay}.db"
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
                    sql = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                    out[relay] = conn.execute(sql).fetchone()[0]
            except sqlite3.Error:
                out[relay] = None
        return out

    async def _summary(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """As `Run`'s, and the summary as of the last purchase: where the event-time clock
        should stand, unless an event dated later (a contact dated today) moved it on."""
        out = await super()._summary(client)
        as_of = self.last_time.isoformat()
        response = await client.get("/v1/stages/summary", params={"as_of": as_of})
        response.raise_for_status()
        counts = dict(response.json()["counts"])
        path = f"/v1/customers/{self.warm_customer}/stage"
        stage = await client.get(path, params={"as_of": as_of})
        warm_stage = stage.json().get("stage") if stage.status_code == 200 else None
        if warm_stage in counts:
            counts[warm_stage] -= 1
        expected = reference_counts(self.events, self.last_time)
        out["at_last_purchase"] = {
            "as_of": as_of,
            "counts": counts,
            "warm_up_customer_stage": warm_stage,
            "customers": sum(counts.values()),
            "matches_reference": None if expected is None else counts == expected,
        }
        return out


def _settled(flows: dict[str, float], pending: dict[str, int | None]) -> bool:
    if any(n != 0 for n in pending.values()):
        return False
    if flows["scoring.lifecycle"] < flows["lifecycle.published"]:
        return False
    published = sum(flows[f"{relay}.published"] for relay in RELAYS)
    return "notifications" not in flows or flows["notifications"] >= published
