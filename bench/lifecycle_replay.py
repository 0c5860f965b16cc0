"""How fast lifecycle and/or scoring fold the full CDNOW master (69,659 purchases, 23,570
customers), and what they end with.

One run starts a fresh embedded broker and fresh SQLite databases (in a temporary directory),
then measures:

1. baseline: a raw aiokafka producer and consumer on that broker with exactly the records
   of the replay (the consume rate is the ceiling of reading them back);
2. replay: ONLY the services named by `--services` (default lifecycle; `scoring`, or
   `lifecycle,scoring` on the same broker) as processes (`CRM_CLOCK=event-time`), after a
   one-event warm-up (a customer outside the data set, at the first purchase's time, so the
   clock does not move past the data); every CDNOW purchase published in time order as the
   canonical customer event contacts would publish, straight to `crm.customer-events` by
   one raw producer (send futures gathered), timed from the first send until each
   service's customer-events consumer (`crm_events_consumed_total`) grew by 69,659;
3. lifecycle: when its relay published every transition, the stage summary afterwards (its
   `as_of` should be the last purchase, 1998-06-30), the reference counts of the README's
   policy when `tests/support` is importable, and `POST /v1/admin/rebuild`: how long it
   takes and whether the summary is the same after it;
4. scoring (its refit and rescore schedulers held off): `POST /v1/models/refit`, timed,
   with the fitted parameters; the worklist by churn risk and by lifetime value; every
   message on `crm.scores` once its relay published them all;
5. peak RSS and CPU of the services, the broker and the bench.

With `--through contacts` the purchases go through the whole system instead: contacts,
lifecycle, scoring and notifications run, and every purchase is produced as a shop would
send it to `crm.inbound` (see `bench/system_replay.py`).

It prints a table and writes JSON to `bench/results/<services>-replay-<UTC timestamp>.json`
(`system-replay-...` through contacts).
`--profile` samples the services with py-spy during the replay (and/or rebuild, refit).

    .venv/bin/python -m bench.lifecycle_replay [--services lifecycle,scoring] [--limit 20000]
        [--profile replay,rebuild,refit] [--through contacts]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench import cdnow, phases, profiling, runinfo
from bench.observe import (
    CONSUMED,
    DEAD_LETTERED,
    DUPLICATES,
    PUBLISHED,
    CpuMeter,
    ServerStats,
    Watcher,
    counters,
    memory_mib,
    metric_sum,
    read_metrics,
)
from bench.report import cpu_table, memory_lines, num, profile_lines
from bench.workload import canonical_records
from crm_shared.messaging.kafka import HEADER_CONTENT_TYPE
from crm_shared.messaging.topics import ALL_TOPICS, CUSTOMER_EVENTS, SCORES, ensure_topics
from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import Stack

NAME = "replay"  # results: <services>-replay-<stamp>.json, e.g. lifecycle-replay-...
BASELINE_TOPIC = "bench.baseline"
SERVICES = ("lifecycle", "scoring", "notifications")
# The counter that says a service folded a customer event: its customer-events consumer's.
FOLDED = {"lifecycle": "lifecycle.consumed", "scoring": "scoring.consumed"}
OF_CUSTOMER_EVENTS = 'consumer="customer-events"'
OF_LIFECYCLE = 'consumer="lifecycle"'  # scoring's consumer of crm.lifecycle
# Scoring's schedulers run once at start (no buyers, no model yet: nothing to do), then not
# again during a run; fits need 50 buyers, as by default.
SCORING_ENV = {
    "CRM_MIN_BUYERS_FOR_FIT": "50",
    "CRM_REFIT_INTERVAL_H": "1000",
    "CRM_RESCORE_INTERVAL_H": "1000",
}
# The published CDNOW parameters (weeks) scoring uses until its first fit (`prior`).
PRIOR = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "gamma": 15.44}
SCORE_CHANGED = "crm.score.changed.v1"
REASONS = ("first score", "tier", "risk band", "churn risk", "lifetime value")
# As contacts' relay sends them (it adds its `crm-seq` too, which the services do not read).
HEADERS = [(HEADER_CONTENT_TYPE, b"application/cloudevents+json")]
STAGES = ("prospect", "new", "active", "dormant", "churned")
TARGET_SECONDS = 15.0  # the target for the whole system (contacts and lifecycle)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.lifecycle_replay",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--services",
        help="services to run and measure, comma-separated: lifecycle, scoring or both "
        "(default lifecycle; through contacts: lifecycle,scoring,notifications)",
    )
    p.add_argument(
        "--through",
        choices=("customer-events", "contacts"),
        default="customer-events",
        help="customer-events: canonical events straight to crm.customer-events; contacts: "
        "raw events to crm.inbound, through contacts (the whole system)",
    )
    p.add_argument("--master", type=Path, help="CDNOW_master.txt (default: ../shared/data/...)")
    p.add_argument("--limit", type=int, help="replay only the first N purchases (in time order)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    p.add_argument("--fetch-max-wait-ms", type=int, default=10, help="CRM_FETCH_MAX_WAIT_MS")
    p.add_argument("--linger-ms", type=int, default=1, help="linger of the raw producers")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="CRM_X=VALUE",
        help="extra environment of the services (repeatable), e.g. CRM_CONSUMER_MAX_RECORDS=1000",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the raw Kafka baseline")
    p.add_argument("--no-rebuild", action="store_true", help="skip POST /v1/admin/rebuild")
    p.add_argument("--no-refit", action="store_true", help="skip POST /v1/models/refit")
    p.add_argument("--timeout", type=float, default=600.0, help="replay deadline (s)")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="relay drain deadline (s)")
    p.add_argument("--rebuild-timeout", type=float, default=600.0, help="rebuild deadline (s)")
    p.add_argument("--refit-timeout", type=float, default=600.0, help="refit deadline (s)")
    p.add_argument(
        "--profile",
        nargs="?",
        const="replay",
        default="",
        metavar="PHASES",
        help="sample the services with py-spy during replay, rebuild, refit (bare: replay)",
    )
    p.add_argument("--profile-idle", action="store_true", help="include idle (waiting) samples")
    p.add_argument("--profile-native", action="store_true", help="include C frames (slower)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-dir", type=Path, help="default: a temporary directory")
    p.add_argument("--results-dir", type=Path, default=runinfo.RESULTS)
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--keep-data", action="store_true", help="keep databases and logs")
    args = p.parse_args(argv)
    args.profile = [x.strip() for x in args.profile.split(",") if x.strip()]
    unknown = set(args.profile) - {"replay", "rebuild", "refit"}
    if unknown:
        p.error(f"unknown profile phases {sorted(unknown)}")
    whole = args.through == "contacts"
    default = "lifecycle,scoring,notifications" if whole else "lifecycle"
    args.services = [x.strip() for x in (args.services or default).split(",") if x.strip()]
    if set(args.services) - set(SERVICES) or not set(args.services) & set(FOLDED):
        p.error(f"--services: lifecycle and/or scoring, and notifications, of {SERVICES}")
    args.services = [x for x in SERVICES if x in args.services]
    bad = [e for e in args.env if "=" not in e]
    if bad:
        p.error(f"--env wants NAME=VALUE, got {bad}")
    return args


def load_events(args: argparse.Namespace) -> list[dict[str, Any]]:
    events = cdnow.purchase_events(cdnow.load_master(args.master))
    return events[: args.limit] if args.limit else events


def reference_counts(events: list[dict[str, Any]], now: datetime) -> dict[str, int] | None:
    """The stage counts the README's policy gives (tests/support/lifecycle_reference.py), if
    the test tree is importable; None otherwise."""
    try:
        from tests.support.lifecycle_reference import stage_counts
    except ImportError:
        return None
    times: dict[str, list[datetime]] = {}
    for e in events:
        times.setdefault(e["subject"], []).append(datetime.fromisoformat(e["time"]))
    return stage_counts(times, now)


class Run:
    """One run: a fresh broker, the baseline, then the services in a temporary directory."""

    def __init__(self, args: argparse.Namespace, workdir: Path, events: list[dict[str, Any]]):
        self.args = args
        self.workdir = workdir
        self.events = events
        self.records = self.records_of(events)
        self.customers = len({e["subject"] for e in events})
        self.first_time = events[0]["time"]
        self.last_time = datetime.fromisoformat(events[-1]["time"])
        self.run_id = uuid.uuid4().hex[:6]
        self.warm_customer = f"bench-warm-{self.run_id}"
        self.services: list[str] = args.services
        self.folds = [FOLDED[s] for s in self.services if s in FOLDED]
        self.result: dict[str, Any] = {"services": self.services, "stack": self.stack_services()}
        # Events each folding service applies: the purchases, and (through contacts) what
        # contacts adds for every new customer; `_warm_up` may raise it.
        self.expected = len(self.records)
        self.broker = Broker(log_path=workdir / "logs" / "broker.log")
        self.stack: Stack | None = None
        self.clients: dict[str, httpx.AsyncClient] = {}

    # --- what a subclass may change (bench.system_replay: through contacts) ---

    topic = CUSTOMER_EVENTS

    def records_of(self, events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
        """The Kafka records (key, value) of the events, as sent to `topic`."""
        return canonical_records(events)

    def stack_services(self) -> list[str]:
        """Every service the run starts."""
        return self.services

    async def settle(self) -> None:
        """After the replay: wait for what else the system does with the purchases."""

    # --- the run ---

    async def execute(self) -> dict[str, Any]:
        args = self.args
        with self.broker:
            await ensure_topics(
                self.broker.bootstrap, [*ALL_TOPICS, BASELINE_TOPIC], partitions=args.partitions
            )
            if not args.no_baseline:
                self.result["baseline"] = await self._baseline()
                self.result["memory_after_baseline"] = memory_mib(self._pids())
            env = dict(SCORING_ENV) if "scoring" in self.services else {}
            env |= dict(e.split("=", 1) for e in args.env)
            self.stack = Stack(
                self.stack_services(),
                bootstrap=self.broker.bootstrap,
                data_dir=self.workdir,
                env={
                    "CRM_FETCH_MAX_WAIT_MS": str(args.fetch_max_wait_ms),
                    "CRM_TOPIC_PARTITIONS": str(args.partitions),
                    "CRM_CLOCK": "event-time",
                    **env,
                },
            )
            started = time.perf_counter()
            await self.stack.start_async()
            self.result["services_ready_s"] = round(time.perf_counter() - started, 2)
            try:
                await self._measure()
            finally:
                self.result["memory"] = memory_mib(self._pids())
                await self.stack.stop_async()
        return self.result

    async def _measure(self) -> None:
        assert self.stack is not None
        async with contextlib.AsyncExitStack() as clients:
            for name in self.stack_services():
                self.clients[name] = await clients.enter_async_context(
                    httpx.AsyncClient(
                        base_url=self.stack.url(name),
                        timeout=httpx.Timeout(30.0),
                        trust_env=False,
                        headers=self.stack.headers,
                    )
                )
            lifecycle, scoring = self.clients.get("lifecycle"), self.clients.get("scoring")
            watcher = Watcher(None, None, more=self._consumers(), sample=self.folds)
            self.result["warm_up"] = await self._warm_up(watcher)
            await self._phase("replay", self._replay(watcher), self.stack_services())
            self.result["memory_after_replay"] = memory_mib(self._pids())
            await self.settle()
            if lifecycle is not None:
                await self._lifecycle(lifecycle, scoring)
            if scoring is not None:
                await self._scoring(scoring)
            self.result["counters"] = {
                name: await counters(client, [CONSUMED, DUPLICATES, DEAD_LETTERED, PUBLISHED])
                for name, client in self.clients.items()
            }
            self._check_alive()

    async def _lifecycle(
        self, client: httpx.AsyncClient, scoring: httpx.AsyncClient | None
    ) -> None:
        self.result["drain"] = await self._drain(client)
        if scoring is not None:  # scoring folds every transition lifecycle published, too
            self.result["scoring_caught_up"] = await self._caught_up(scoring)
        self.result["database"] = self._database()
        self.result["summary"] = await self._summary(client)
        if not self.args.no_rebuild:
            await self._phase("rebuild", self._rebuild(client), ["lifecycle"])

    async def _scoring(self, client: httpx.AsyncClient) -> None:
        databases = {"after_fold": self._scoring_database()}
        self.result["scoring_database"] = databases
        if not self.args.no_refit:
            await self._phase("refit", self._refit(client), ["scoring"])
            self.result["worklist"] = await self._worklist(client)
            databases["after_refit"] = self._scoring_database()
        self.result["scores"] = await self._scores(client)

    def _consumers(self) -> dict[str, tuple[httpx.AsyncClient, str]]:
        """The consumers watched: name -> (service, label filter of its metrics)."""
        out = {}
        if "lifecycle" in self.clients:
            out["lifecycle.consumed"] = (self.clients["lifecycle"], "")
        if "scoring" in self.clients:
            out["scoring.consumed"] = (self.clients["scoring"], OF_CUSTOMER_EVENTS)
            out["scoring.lifecycle"] = (self.clients["scoring"], OF_LIFECYCLE)
        return out

    def _pids(self) -> dict[str, int]:
        return phases.stack_pids(self.broker, self.stack)

    def _check_alive(self) -> None:
        phases.check_alive(self.stack)

    async def _phase(
        self, name: str, measure: Coroutine[Any, Any, dict[str, Any]], services: Sequence[str]
    ) -> None:
        """Run one phase, the `services` sampled with py-spy if `--profile` names it."""
        recordings: list[profiling.Recording] = []
        if name in self.args.profile and self.stack is not None:
            pids = {s: self.stack[s].pid for s in services}
            recordings = profiling.start_profiles(
                name,
                {s: pid for s, pid in pids.items() if pid},
                self.args.profile_dir,
                rate=self.args.profile_rate,
                idle=self.args.profile_idle,
                native=self.args.profile_native,
            )
        try:
            self.result[name] = await measure
        finally:
            if recordings:
                self.result.setdefault("profile", {})[name] = profiling.stop_profiles(recordings)

    async def _until(
        self, client: httpx.AsyncClient, metrics: Sequence[str], having: str, target: float | None
    ) -> dict[str, Any]:
        """Poll until the sum of `metrics` (samples whose labels contain `having`) reaches
        `target`, at most `--drain-timeout` seconds."""
        started = time.perf_counter()
        deadline, value = started + self.args.drain_timeout, 0.0
        while time.perf_counter() < deadline:
            text = await read_metrics(client)
            value = sum(metric_sum(text, m, having) for m in metrics)
            if target is not None and value >= target:
                break
            await asyncio.sleep(0.1)
        return {
            "target": target,
            "value": int(value),
            "complete": target is not None and value >= target,
            "seconds": round(time.perf_counter() - started, 2),
        }

    # --- phases ---

    async def _baseline(self) -> dict[str, Any]:
        """Raw produce and consume of the replay's records on this broker."""
        bootstrap, meter = self.broker.bootstrap, CpuMeter(self._pids())
        produce = await phases.baseline_produce(
            bootstrap, self.args.linger_ms, BASELINE_TOPIC, self.records, meter, HEADERS
        )
        deadline = time.perf_counter() + self.args.timeout
        consume = await phases.baseline_consume(
            bootstrap, BASELINE_TOPIC, len(self.records), meter, deadline
        )
        mean = sum(len(v) for _, v in self.records) / len(self.records)
        return {"record_bytes": round(mean, 1), "produce": produce, "consume": consume}

    async def _warm_up(self, watcher: Watcher, within: float = 60.0) -> dict[str, Any]:
        """One purchase of a customer outside the data set, at the data's first time (so the
        event-time clock stays put), until every service applied it: the groups form here
        (with both services, also scoring's on crm.lifecycle, from lifecycle's transition)."""
        day = datetime.fromisoformat(self.first_time).date()
        event = cdnow.purchase_event(cdnow.Purchase(self.warm_customer, day, 1, Decimal(0)), 1)
        targets = dict.fromkeys(self.folds, 1)
        if {"lifecycle", "scoring"} <= set(self.services):
            targets["scoring.lifecycle"] = 1
        await watcher.snapshot()
        started = time.perf_counter()
        producer = phases.raw_producer(self.broker.bootstrap, self.args.linger_ms)
        await producer.start()
        try:
            await phases.produce_all(producer, self.topic, self.records_of([event]), HEADERS)
        finally:
            await producer.stop()
        progress = await watcher.until(targets, started, started + within)
        self._check_alive()
        if not progress.complete:
            raise phases.BenchError(f"warm-up: not all of {progress.reached} within {within}s")
        reached = {k: round(v or 0.0, 2) for k, v in progress.reached.items()}
        return {
            "customer": self.warm_customer,
            "time": event["time"],
            "seconds": max(reached.values()),
            "reached": reached,
        }

    async def _replay(self, watcher: Watcher) -> dict[str, Any]:
        """Every purchase to crm.customer-events; time until each service applied them all."""
        n, within = len(self.records), self.args.timeout
        producer = phases.raw_producer(self.broker.bootstrap, self.args.linger_ms)
        await producer.start()
        try:
            await producer.partitions_for(self.topic)  # metadata before the clock starts
            await watcher.snapshot()
            consumers = {
                k.removesuffix(".consumed").replace(".", "_"): v
                for k, v in self._consumers().items()
            }
            server = ServerStats(None, None, more=consumers)
            await server.start()
            meter = CpuMeter(self._pids())
            meter.start()
            started = time.perf_counter()
            targets = dict.fromkeys(self.folds, self.expected)
            watch = asyncio.create_task(watcher.until(targets, started, started + within))
            try:
                await asyncio.wait_for(
                    phases.produce_all(producer, self.topic, self.records, HEADERS), within
                )
            except BaseException:
                watch.cancel()
                raise
            produced = time.perf_counter() - started
            progress = await watch
            cpu = meter.stop()
        finally:
            await producer.stop()
        self._check_alive()
        stats = await server.stop()
        baseline = self.result.get("baseline", {}).get("consume", {}).get("rate")

        def fold(done: float | None, applied: float) -> dict[str, Any]:
            rate = phases.rate(n, done)
            return {
                "complete": done is not None,
                "seconds": round(done, 3) if done is not None else None,
                "rate": rate,
                "vs_raw_consume": round(rate / baseline, 4) if rate and baseline else None,
                "applied": int(applied),
            }

        folds = {
            service: fold(progress.reached.get(key), progress.last.get(key, 0.0))
            for service, key in FOLDED.items()
            if key in self.folds
        }
        times = [f["seconds"] for f in folds.values()]
        return {
            "events": n,
            "customers": self.customers,
            "topic": self.topic,
            "expected_per_service": self.expected,
            # All services, as lifecycle's alone before `--services`: until the last folded.
            **fold(
                None if None in times else max(times),
                min(f["applied"] for f in folds.values()),
            ),
            "folds": folds,
            "produce_seconds": round(produced, 3),
            "produce_rate": phases.rate(n, produced),
            "server": stats,
            "cpu": cpu,
            "timeline_columns": ["seconds", *self.folds],
            "timeline": progress.samples,
        }

    async def _drain(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """Wait until lifecycle's relay published every transition it stored (bounded)."""
        stored = self._database().get("transitions")
        waited = await self._until(client, [PUBLISHED], "", stored)
        return {
            "transitions_stored": stored,
            "published": waited["value"],
            "complete": waited["complete"],
            "seconds_after_fold": waited["seconds"],
        }

    async def _caught_up(self, scoring: httpx.AsyncClient) -> dict[str, Any]:
        """Wait until scoring took in every transition lifecycle published (bounded)."""
        published = self.result["drain"]["published"]
        taken = [CONSUMED, DUPLICATES, DEAD_LETTERED]
        waited = await self._until(scoring, taken, OF_LIFECYCLE, published)
        return {"transitions_published": published, **waited}

    async def _summary(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """The stage summary, the warm-up customer taken out, against the reference counts."""
        response = await client.get("/v1/stages/summary")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        stage = await client.get(f"/v1/customers/{self.warm_customer}/stage")
        warm_stage = stage.json().get("stage") if stage.status_code == 200 else None
        counts = dict(body["counts"])
        if warm_stage in counts:
            counts[warm_stage] -= 1
        as_of = datetime.fromisoformat(body["as_of"]) if body.get("as_of") else None
        expected = reference_counts(self.events, self.last_time)
        return {
            "as_of": body.get("as_of"),
            "as_of_expected": self.last_time.isoformat(),
            "as_of_ok": as_of == self.last_time,
            "counts_raw": body["counts"],
            "warm_up_customer_stage": warm_stage,
            "counts": counts,
            "customers": sum(counts.values()),
            "customers_expected": self.customers,
            "reference_counts": expected,
            "matches_reference": None if expected is None else counts == expected,
        }

    async def _rebuild(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """POST /v1/admin/rebuild, timed; is the summary the same afterwards?"""
        before = self.result["summary"]
        meter = CpuMeter(self._pids())
        meter.start()
        started = time.perf_counter()
        response = await client.post(
            "/v1/admin/rebuild", timeout=httpx.Timeout(self.args.rebuild_timeout)
        )
        seconds = time.perf_counter() - started
        cpu = meter.stop()
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        after = await self._summary(client)
        return {
            "seconds": round(seconds, 3),
            "server_seconds": body.get("seconds"),
            "customers": body.get("customers"),
            "transitions": body.get("transitions"),
            "as_of": body.get("as_of"),
            "policy_version": body.get("policy_version"),
            "rate_customers": phases.rate(body.get("customers") or 0, seconds),
            "cpu": cpu,
            "summary_after": after,
            "summary_unchanged": (
                after["counts_raw"] == before["counts_raw"] and after["as_of"] == before["as_of"]
            ),
            "database_after": self._database(),
        }

    def _database(self) -> dict[str, Any]:
        """Row counts of lifecycle's SQLite file."""
        return self._rows(
            "lifecycle",
            {
                "facts": "SELECT count(*) FROM facts",
                "fact_customers": "SELECT count(DISTINCT customer_id) FROM facts",
                "customer_stages": "SELECT count(*) FROM customer_stages",
                "transitions": "SELECT count(*) FROM stage_transitions",
                "transitions_active": "SELECT count(*) FROM stage_transitions WHERE NOT superseded",
                "transitions_superseded": "SELECT count(*) FROM stage_transitions WHERE superseded",
                "transitions_corrections": "SELECT count(*) FROM stage_transitions "
                "WHERE correction",
                "overdue_customers": "SELECT count(*) FROM customer_stages WHERE next_due <= "
                "(SELECT value FROM lifecycle_clock WHERE name = 'event-time')",
                "clock": "SELECT value FROM lifecycle_clock WHERE name = 'event-time'",
            },
        )

    def _scoring_database(self) -> dict[str, Any]:
        """Row counts of scoring's SQLite file; risk bands and tiers of the scores."""
        return self._rows(
            "scoring",
            {
                "customers": "SELECT count(*) FROM customer_stats",
                "buyers": "SELECT count(*) FROM customer_stats WHERE first_purchase_at IS NOT NULL",
                "scores": "SELECT count(*) FROM scores",
                "scores_prior_model": "SELECT count(*) FROM scores "
                "WHERE model_version = 'prior-cdnow'",
                "published_scores": "SELECT count(*) FROM published_scores",
                "score_history": "SELECT count(*) FROM score_history",
                "outbox": "SELECT count(*) FROM outbox",
                "outbox_pending": "SELECT count(*) FROM outbox WHERE published_at IS NULL",
                "models": "SELECT count(*) FROM models",
                "inbox_customer_events": "SELECT count(*) FROM inbox "
                "WHERE consumer = 'customer-events'",
                "inbox_lifecycle": "SELECT count(*) FROM inbox WHERE consumer = 'lifecycle'",
                "risk_bands": "SELECT risk_band, count(*) FROM scores GROUP BY 1",
                "tiers": "SELECT coalesce(tier, '-'), count(*) FROM scores GROUP BY 1",
            },
        )

    def _rows(self, service: str, queries: dict[str, str]) -> dict[str, Any]:
        """Each query's value (two columns: a dict of them) from a service's SQLite file,
        opened read-only beside the running service."""
        path = self.workdir / f"{service}.db"
        out: dict[str, Any] = {}
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
                for key, sql in queries.items():
                    rows = conn.execute(sql).fetchall()
                    if rows and len(rows[0]) == 2:
                        out[key] = {str(k): v for k, v in rows}
                    else:
                        out[key] = rows[0][0] if rows else None
        except sqlite3.Error as exc:
            out["error"] = repr(exc)
        return out

    async def _refit(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """POST /v1/models/refit, timed: fits both models on every customer's statistics,
        then rescores everyone (`fit_seconds` is the fit alone)."""
        meter = CpuMeter(self._pids())
        meter.start()
        started = time.perf_counter()
        response = await client.post(
            "/v1/models/refit", timeout=httpx.Timeout(self.args.refit_timeout)
        )
        seconds = time.perf_counter() - started
        cpu = meter.stop()
        if response.status_code != 200:  # 409: too few buyers, or the fit failed
            return {"seconds": round(seconds, 3), "error": response.text[:1000], "cpu": cpu}
        model: dict[str, Any] = response.json()
        fit = model.get("fit_seconds") or 0.0
        customers = self._scoring_database().get("scores")
        return {
            "seconds": round(seconds, 3),
            "fit_seconds": round(fit, 3),
            # The rest of the call: read every customer's statistics, store the model,
            # rescore and save everyone, write the material changes to the outbox.
            "rest_seconds": round(seconds - fit, 3),
            "customers": customers,
            "rate_customers": phases.rate(customers or 0, seconds),
            "cpu": cpu,
            "model": model,
        }

    async def _worklist(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """The first five of the worklist, by churn risk (its default) and by value."""
        out: dict[str, Any] = {}
        for order, query in (("churn_risk", "limit=5"), ("clv", "order=clv&limit=5")):
            started = time.perf_counter()
            response = await client.get(f"/v1/customers?{query}")
            ms = round(1000 * (time.perf_counter() - started), 1)
            response.raise_for_status()
            out[order] = {"query": query, "ms": ms, "items": response.json()["items"]}
        return out

    async def _scores(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """Once scoring's relay published its outbox: every message on crm.scores."""
        stored = self._scoring_database().get("outbox")
        drain = await self._until(client, [PUBLISHED], "", stored)
        values, complete = await phases.read_topic(
            self.broker.bootstrap, SCORES, self.args.drain_timeout
        )
        types: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        customers = set()
        for value in values:
            event = json.loads(value)
            types[event.get("type")] += 1
            if event.get("type") == SCORE_CHANGED:
                customers.add(event.get("subject"))
                given = event.get("data", {}).get("reasons", [])
                reasons.update({k for k in REASONS for r in given if r.startswith(k)})
        return {
            "outbox": stored,
            "relay": drain,
            "messages": len(values),
            "read_complete": complete,
            "types": dict(types),
            "score_changed": types[SCORE_CHANGED],
            "customers": len(customers),
            "reasons": dict(reasons.most_common()),
        }


# --- report ---


def print_report(result: dict[str, Any]) -> None:
    s = result.get("settings", {})
    services = result.get("services") or ["lifecycle"]
    stack = result.get("stack") or services
    replay = result.get("replay") or {}
    base = result.get("baseline") or {}
    produce, consume = base.get("produce") or {}, base.get("consume") or {}
    print(
        f"\n{' + '.join(stack)} replay of CDNOW ({result.get('machine', {}).get('cpus')} "
        f"CPUs): {num(replay.get('events') or result.get('events'))} purchases of "
        f"{num(replay.get('customers') or result.get('customers'))} customers, "
        f"{s.get('partitions')} partitions, CRM_CLOCK=event-time, fetch wait "
        f"{s.get('fetch_max_wait_ms')} ms; record {num(base.get('record_bytes'))} B"
    )
    head = f"  {'':<44} {'events':>9} {'seconds':>9} {'events/s':>11} {'vs consume':>11}"
    lines = [head]

    def row(label: str, count: Any, seconds: Any, rate: Any, ratio: str = "-") -> None:
        lines.append(
            f"  {label:<44} {num(count):>9} {num(seconds, 2):>9} {num(rate):>11} {ratio:>11}"
        )

    if produce:
        row(
            "raw aiokafka produce (acks=all)",
            produce["messages"],
            produce["seconds"],
            produce["rate"],
        )
    if consume:
        row(
            "raw aiokafka consume (fetch wait 10ms)",
            consume["messages"],
            consume["seconds"],
            consume["rate"],
            "100.0%",
        )
    folds = replay.get("folds") or {}
    if replay:
        row(
            f"replay: produce to {replay.get('topic', CUSTOMER_EVENTS)}",
            replay["events"],
            replay["produce_seconds"],
            replay["produce_rate"],
        )
    for service, fold in folds.items():
        ratio = fold.get("vs_raw_consume")
        row(
            f"replay: first send -> {service} folded all",
            replay.get("expected_per_service", replay["events"]),
            fold["seconds"],
            fold["rate"],
            f"{100 * ratio:.1f}%" if ratio else "-",
        )
        if not fold["complete"]:
            expected = replay.get("expected_per_service", replay["events"])
            lines.append(f"  !! {service} applied only {fold['applied']} of {expected}")
    rebuild, refit = result.get("rebuild"), result.get("refit") or {}
    if rebuild:
        row(
            "rebuild: POST /v1/admin/rebuild (customers)",
            rebuild["customers"],
            rebuild["seconds"],
            rebuild["rate_customers"],
        )
    if refit.get("model"):
        row(
            "refit: POST /v1/models/refit (customers)",
            refit["customers"],
            refit["seconds"],
            refit["rate_customers"],
        )
    sections = [("throughput", lines)]

    milestones = []
    if replay:
        seconds = replay.get("seconds")
        verdict = "-" if seconds is None else ("under" if seconds < TARGET_SECONDS else "over")
        alone = "through the whole system" if "contacts" in stack else f"{' + '.join(stack)} alone"
        milestones.append(
            f"  full CDNOW replay, {alone}: {num(seconds, 2)} s until "
            f"{' and '.join(folds)} folded every purchase ({verdict} the {TARGET_SECONDS:g} s "
            "target for the whole system)"
        )
        settle = result.get("settle")
        if settle:
            milestones.append(
                f"  everything settled (relays drained, scoring took in every transition, "
                f"notifications every message): {num(settle.get('seconds'), 2)} s "
                f"({'complete' if settle['complete'] else 'INCOMPLETE'})"
            )
        expected = replay.get("expected_per_service", replay["events"])
        for column, service in enumerate(folds, start=1):
            timeline = [(row[0], row[column]) for row in replay.get("timeline") or []]
            done = next((i for i, (_, n) in enumerate(timeline) if n >= expected), None)
            milestones.append(
                f"  {service}: {_window_rates(timeline[: None if done is None else done + 1])}"
            )
    agree = result.get("stages_agree")
    if agree:
        milestones.append(
            f"  scoring's stage of each customer is lifecycle's: {num(agree['differ'])} of "
            f"{num(agree['customers'])} differ {agree['examples'][:2] if agree['differ'] else ''}"
        )
    warm, drain = result.get("warm_up") or {}, result.get("drain") or {}
    if warm:
        milestones.append(f"  warm-up (group join + 1 event): {num(warm.get('seconds'), 2)} s")
    if drain:
        milestones.append(
            f"  relay published all {num(drain.get('transitions_stored'))} transitions "
            f"{num(drain.get('seconds_after_fold'), 2)} s after the fold "
            f"({'complete' if drain.get('complete') else 'INCOMPLETE'})"
        )
    caught_up = result.get("scoring_caught_up")
    if caught_up:
        milestones.append(
            f"  scoring took in all {num(caught_up['target'])} transitions "
            f"{num(caught_up['seconds'], 2)} s after that "
            f"({'complete' if caught_up['complete'] else 'INCOMPLETE'})"
        )
    server = replay.get("server") or {}
    for name in ("contacts_inbound", "lifecycle", "scoring", "scoring_lifecycle", "notifications"):
        if server.get(f"{name}_batches"):
            milestones.append(
                f"  {name.replace('_', ' on crm.')}: {server[f'{name}_batches']} batches of "
                f"{server[f'{name}_events_per_batch']} events, {server[f'{name}_batch_ms_mean']} "
                "ms each"
            )
    sections.append(("milestones", milestones))
    sections.append(("stages", _stage_lines(result)))
    sections.append(("database (lifecycle.db)", _database_lines(result)))
    sections.append(("scoring", _scoring_lines(result)))
    processes = (*stack, "broker", "bench")
    sections.append(
        (
            "CPU per phase",
            cpu_table(
                [
                    ("raw produce", produce.get("cpu")),
                    ("raw consume", consume.get("cpu")),
                    ("replay", replay.get("cpu")),
                    ("rebuild", (rebuild or {}).get("cpu")),
                    ("refit", refit.get("cpu")),
                ],
                processes,
            ),
        )
    )
    memory = memory_lines(result, processes, earlier="memory_after_replay")
    after = (result.get("memory_after_baseline") or {}).get("broker")
    if after:
        memory.append(f"  (broker after the baseline, before the services: {after['rss_mib']} MiB)")
    sections.append(("memory", memory))
    sections.append(("profile (share of samples)", profile_lines(result)))
    for title, body in sections:
        if len(body) > 1 or (body and title in ("milestones", "profile (share of samples)")):
            print(f"\n{title}\n" + "\n".join(body))
    if "aborted" in result:
        print(f"\nABORTED: {result['aborted'][:500]}")


def _window_rates(samples: list[tuple[float, float]], window: float = 5.0) -> str:
    """Events/s folded in each `window` seconds of the replay, from the watcher's samples."""
    if not samples:
        return "folded per 5 s window: -"
    rates, edge, last_t, last_n = [], window, 0.0, 0.0
    for t, n in samples:
        if t >= edge:
            rates.append((n - last_n) / (t - last_t))
            edge, last_t, last_n = t + window, t, n
    if samples[-1][0] > last_t:
        t, n = samples[-1]
        rates.append((n - last_n) / (t - last_t))
    return f"events/s folded per ~{window:g} s window: " + ", ".join(f"{r:,.0f}" for r in rates)


def _stage_lines(result: dict[str, Any]) -> list[str]:
    summary = result.get("summary")
    if not summary:
        return []
    after = (result.get("rebuild") or {}).get("summary_after")
    reference = summary.get("reference_counts")
    lines = [f"  {'':<26}" + "".join(f"{s:>10}" for s in STAGES) + f"{'total':>10}"]

    def row(label: str, counts: dict[str, int] | None) -> None:
        if counts:
            cells = "".join(f"{num(counts.get(s)):>10}" for s in STAGES)
            lines.append(f"  {label:<26}{cells}{num(sum(counts.values())):>10}")

    row("after the replay", summary["counts"])
    at_last = summary.get("at_last_purchase")
    if at_last:
        row(f"as of {at_last['as_of'][:10]}", at_last["counts"])
    row("after the rebuild", (after or {}).get("counts"))
    row("reference (README policy)", reference)
    as_of_ok = "ok" if summary["as_of_ok"] else "expected " + summary["as_of_expected"]
    lines.append(
        f"  as_of {summary['as_of']} ({as_of_ok}); "
        f"warm-up customer ({summary['warm_up_customer_stage']}) taken out; "
        f"customers {num(summary['customers'])} of {num(summary['customers_expected'])}"
    )
    checks = []
    if summary.get("matches_reference") is not None:
        checks.append(f"matches reference: {summary['matches_reference']}")
    if at_last and at_last.get("matches_reference") is not None:
        checks.append(f"as of the last purchase: {at_last['matches_reference']}")
    rebuild = result.get("rebuild")
    if rebuild:
        checks.append(f"unchanged by rebuild: {rebuild['summary_unchanged']}")
        checks.append(
            f"rebuild: {num(rebuild['customers'])} customers, {num(rebuild['transitions'])} "
            f"transitions, {num(rebuild['server_seconds'], 2)} s in the server"
        )
    if checks:
        lines.append("  " + "; ".join(checks))
    return lines


def _database_lines(result: dict[str, Any]) -> list[str]:
    before = result.get("database") or {}
    after = (result.get("rebuild") or {}).get("database_after") or {}
    keys = [k for k in before if k not in ("clock", "error")]
    if not keys:
        return [f"  {before.get('error', '')}"] if before.get("error") else []
    lines = [f"  {'rows':<26}{'after replay':>14}{'after rebuild':>15}"]
    for key in keys:
        lines.append(f"  {key:<26}{num(before.get(key)):>14}{num(after.get(key)):>15}")
    lines.append(f"  event-time clock {before.get('clock')}")
    return lines


def _scoring_lines(result: dict[str, Any]) -> list[str]:
    refit, worklist = result.get("refit") or {}, result.get("worklist") or {}
    scores, db = result.get("scores") or {}, result.get("scoring_database") or {}
    lines = []
    model = refit.get("model")
    if "error" in refit:
        lines.append(
            f"  POST /v1/models/refit failed ({num(refit['seconds'], 2)} s): {refit['error']}"
        )
    if model:
        cuts = sorted((model.get("tier_cuts") or {}).items(), key=lambda kv: -kv[1])
        lines += [
            f"  POST /v1/models/refit {num(refit['seconds'], 2)} s: the fit "
            f"{num(refit['fit_seconds'], 3)} s, the rest (read every customer's statistics, "
            f"rescore and save {num(refit['customers'])}) {num(refit['rest_seconds'], 2)} s",
            "  " + _params("BG/NBD (weeks)", model["bgnbd"]),
            "  " + _params("Gamma-Gamma", model["gamma_gamma"]),
            "  prior (published CDNOW): " + ", ".join(f"{k} {v}" for k, v in PRIOR.items()),
            "  tier cuts (lifetime value): " + ", ".join(f"{t} {v:,.2f}" for t, v in cuts),
        ]
    for order, title in (("churn_risk", "highest churn risk"), ("clv", "highest value")):
        found = worklist.get(order)
        if found:
            lines.append(f"  GET /v1/customers?{found['query']} ({title} first, {found['ms']} ms)")
            lines += [f"    {_score_row(item)}" for item in found["items"]]
    if scores:
        relay = scores["relay"]
        reasons = ", ".join(f"{k} {num(v)}" for k, v in scores["reasons"].items())
        lines += [
            f"  crm.scores: {num(scores['messages'])} messages, {num(scores['score_changed'])} "
            f"{SCORE_CHANGED} for {num(scores['customers'])} customers "
            f"({'all read' if scores['read_complete'] else 'NOT ALL READ'})",
            f"    messages with each reason: {reasons}",
            f"    scoring's outbox {num(scores['outbox'])} rows, relay published "
            f"{num(relay['value'])} ({'complete' if relay['complete'] else 'INCOMPLETE'}, "
            f"waited {num(relay['seconds'], 2)} s)",
        ]
    fold, refitted = db.get("after_fold") or {}, db.get("after_refit") or {}
    if fold.get("error"):
        lines.append(f"  scoring.db: {fold['error']}")
    keys = [k for k, v in fold.items() if k != "error" and not isinstance(v, dict)]
    if keys:
        lines.append(f"  {'rows of scoring.db':<26}{'after fold':>14}{'after refit':>15}")
        lines += [f"  {k:<26}{num(fold.get(k)):>14}{num(refitted.get(k)):>15}" for k in keys]
    for key in ("risk_bands", "tiers"):
        if fold.get(key):
            counts = [
                f"{when} " + ", ".join(f"{k} {num(v)}" for k, v in sorted(found[key].items()))
                for when, found in (("after fold:", fold), ("after refit:", refitted))
                if found.get(key)
            ]
            lines.append(f"  {key.replace('_', ' ')} " + "; ".join(counts))
    return lines


def _params(title: str, params: dict[str, Any]) -> str:
    values = ", ".join(f"{k} {v:.3f}" for k, v in params["values"].items())
    ll = params.get("log_likelihood")
    return (
        f"{title}, {num(params.get('customers'))} customers: {values}, log-likelihood {num(ll, 1)}"
    )


def _score_row(item: dict[str, Any]) -> str:
    return (
        f"{item['customer_id']:<14} churn risk {item['churn_risk']:.3f} {item['risk_band']:<6} "
        f"P(alive) {item['p_alive']:.3f} CLV {item['clv']:>9,.2f} tier {item['tier'] or '-'} "
        f"RFM {item['rfm_segment'] or '-'} stage {item['stage'] or '-'}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM stops the run like Ctrl-C: the finally blocks stop the services and the broker.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    name = "system-replay" if args.through == "contacts" else "-".join([*args.services, NAME])
    events = load_events(args)
    workdir = Path(tempfile.mkdtemp(prefix=f"crm-bench-{name}-"))
    result: dict[str, Any] = {
        "benchmark": name,
        "started_at": started.isoformat(),
        "command": " ".join(["python -m bench.lifecycle_replay", *sys.argv[1:]]),
        "settings": runinfo.settings(args),
        "machine": runinfo.machine(),
        "events": len(events),
        "customers": len({e["subject"] for e in events}),
    }
    run = Run(args, workdir, events)
    if args.through == "contacts":
        from bench.system_replay import SystemRun  # it builds on this module

        run = SystemRun(args, workdir, events)
    result = runinfo.run_to_end(
        run.execute(), lambda: run.result, result, workdir=workdir, keep_data=args.keep_data
    )
    print_report(result)
    if not args.no_save:
        print(f"\nresults: {runinfo.save(result, args.results_dir, name, stamp)}")
    return 1 if "aborted" in result else 0


if __name__ == "__main__":
    sys.exit(main())
