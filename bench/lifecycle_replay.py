"""How fast lifecycle alone folds the full CDNOW master (69,659 purchases, 23,570 customers).

One run starts a fresh embedded broker and fresh SQLite databases (in a temporary directory),
then measures:

1. baseline: a raw aiokafka producer and consumer on that broker with exactly the records
   of the replay (the consume rate is the ceiling of reading them back);
2. replay: ONLY lifecycle as a process (`CRM_CLOCK=event-time`), after a one-event warm-up
   (a customer outside the data set, at the first purchase's time, so the clock does not
   move past the data); every CDNOW purchase published in time order as the canonical
   customer event contacts would publish, straight to `crm.customer-events` by one raw
   producer (send futures gathered), timed from the first send until lifecycle's
   `crm_events_consumed_total` grew by 69,659; then when its relay published every
   transition;
3. the stage summary afterwards (its `as_of` should be the last purchase, 1998-06-30), the
   reference counts of the README's policy when `tests/support` is importable, and
   `POST /v1/admin/rebuild`: how long it takes and whether the summary is the same after it;
4. peak RSS and CPU of lifecycle, the broker and the bench.

It prints a table and writes JSON to `bench/results/lifecycle-replay-<UTC timestamp>.json`.
`--profile` samples lifecycle with py-spy during the replay (and/or the rebuild).

    .venv/bin/python -m bench.lifecycle_replay [--profile replay,rebuild] [--limit 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
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
)
from bench.report import cpu_table, memory_lines, num, profile_lines
from bench.workload import canonical_records
from crm_shared.messaging.kafka import HEADER_CONTENT_TYPE
from crm_shared.messaging.topics import ALL_TOPICS, CUSTOMER_EVENTS, ensure_topics
from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import Stack

NAME = "lifecycle-replay"
BASELINE_TOPIC = "bench.baseline"
SERVICE = "lifecycle"
PROCESSES = ("lifecycle", "broker", "bench")
# As contacts' relay sends them (it adds its `crm-seq` too, which lifecycle does not read).
HEADERS = [(HEADER_CONTENT_TYPE, b"application/cloudevents+json")]
STAGES = ("prospect", "new", "active", "dormant", "churned")
TARGET_SECONDS = 15.0  # the target for the whole system (contacts and lifecycle)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.lifecycle_replay",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        help="extra environment of lifecycle (repeatable), e.g. CRM_CONSUMER_MAX_RECORDS=1000",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the raw Kafka baseline")
    p.add_argument("--no-rebuild", action="store_true", help="skip POST /v1/admin/rebuild")
    p.add_argument("--timeout", type=float, default=600.0, help="replay deadline (s)")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="relay drain deadline (s)")
    p.add_argument("--rebuild-timeout", type=float, default=600.0, help="rebuild deadline (s)")
    p.add_argument(
        "--profile",
        nargs="?",
        const="replay",
        default="",
        metavar="PHASES",
        help="sample lifecycle with py-spy during replay and/or rebuild (bare: replay)",
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
    unknown = set(args.profile) - {"replay", "rebuild"}
    if unknown:
        p.error(f"unknown profile phases {sorted(unknown)}")
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
    """One run: a fresh broker, the baseline, then lifecycle alone in a temporary directory."""

    def __init__(self, args: argparse.Namespace, workdir: Path, events: list[dict[str, Any]]):
        self.args = args
        self.workdir = workdir
        self.events = events
        self.records = canonical_records(events)
        self.customers = len({e["subject"] for e in events})
        self.first_time = events[0]["time"]
        self.last_time = datetime.fromisoformat(events[-1]["time"])
        self.run_id = uuid.uuid4().hex[:6]
        self.warm_customer = f"bench-warm-{self.run_id}"
        self.result: dict[str, Any] = {}
        self.broker = Broker(log_path=workdir / "logs" / "broker.log")
        self.stack: Stack | None = None

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
            env = dict(e.split("=", 1) for e in args.env)
            self.stack = Stack(
                [SERVICE],
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
            self.result["lifecycle_ready_s"] = round(time.perf_counter() - started, 2)
            try:
                await self._lifecycle()
            finally:
                self.result["memory"] = memory_mib(self._pids())
                await self.stack.stop_async()
        return self.result

    async def _lifecycle(self) -> None:
        assert self.stack is not None
        async with httpx.AsyncClient(
            base_url=self.stack.url(SERVICE), timeout=httpx.Timeout(30.0), trust_env=False
        ) as client:
            watcher = Watcher(client, None)
            self.result["warm_up"] = await self._warm_up(watcher)
            await self._phase("replay", self._replay(client, watcher))
            self.result["drain"] = await self._drain(client)
            self.result["database"] = self._database()
            self.result["summary"] = await self._summary(client)
            if not self.args.no_rebuild:
                await self._phase("rebuild", self._rebuild(client))
            self.result["counters"] = await counters(
                client, [CONSUMED, DUPLICATES, DEAD_LETTERED, PUBLISHED]
            )
            self._check_alive()

    def _pids(self) -> dict[str, int]:
        pids = {"bench": os.getpid()}
        if self.broker.pid:
            pids["broker"] = self.broker.pid
        if self.stack is not None:
            pids |= {n: p.pid for n, p in self.stack.processes.items() if p.pid is not None}
        return pids

    def _check_alive(self) -> None:
        dead = self.stack.dead() if self.stack is not None else []
        if dead:
            raise phases.BenchError(
                "; ".join(f"{p.name} exited ({p.returncode}):\n{p.log_tail(20)}" for p in dead)
            )

    async def _phase(self, name: str, measure: Coroutine[Any, Any, dict[str, Any]]) -> None:
        """Run one phase, sampled with py-spy if `--profile` names it."""
        recordings: list[profiling.Recording] = []
        if name in self.args.profile and self.stack is not None:
            pid = self.stack[SERVICE].pid
            recordings = profiling.start_profiles(
                name,
                {SERVICE: pid} if pid else {},
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
        event-time clock stays put), until lifecycle applied it: the group forms here."""
        day = datetime.fromisoformat(self.first_time).date()
        event = cdnow.purchase_event(cdnow.Purchase(self.warm_customer, day, 1, Decimal(0)), 1)
        await watcher.snapshot()
        started = time.perf_counter()
        producer = phases.raw_producer(self.broker.bootstrap, self.args.linger_ms)
        await producer.start()
        try:
            await phases.produce_all(producer, CUSTOMER_EVENTS, canonical_records([event]), HEADERS)
        finally:
            await producer.stop()
        progress = await watcher.until({"lifecycle.consumed": 1}, started, started + within)
        self._check_alive()
        if not progress.complete:
            raise phases.BenchError(f"warm-up: lifecycle did not apply the event in {within}s")
        return {
            "customer": self.warm_customer,
            "time": event["time"],
            "seconds": round(progress.reached["lifecycle.consumed"] or 0.0, 2),
        }

    async def _replay(self, client: httpx.AsyncClient, watcher: Watcher) -> dict[str, Any]:
        """Every purchase to crm.customer-events; time until lifecycle applied them all."""
        n, within = len(self.records), self.args.timeout
        producer = phases.raw_producer(self.broker.bootstrap, self.args.linger_ms)
        await producer.start()
        try:
            await producer.partitions_for(CUSTOMER_EVENTS)  # metadata before the clock starts
            await watcher.snapshot()
            server = ServerStats(client, None)
            await server.start()
            meter = CpuMeter(self._pids())
            meter.start()
            started = time.perf_counter()
            watch = asyncio.create_task(
                watcher.until({"lifecycle.consumed": n}, started, started + within)
            )
            try:
                await asyncio.wait_for(
                    phases.produce_all(producer, CUSTOMER_EVENTS, self.records, HEADERS), within
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
        done = progress.reached.get("lifecycle.consumed")
        baseline = self.result.get("baseline", {}).get("consume", {}).get("rate")
        rate = phases.rate(n, done)
        return {
            "events": n,
            "customers": self.customers,
            "complete": done is not None,
            "seconds": round(done, 3) if done is not None else None,
            "rate": rate,
            "vs_raw_consume": round(rate / baseline, 4) if rate and baseline else None,
            "applied": int(progress.last.get("lifecycle.consumed", 0.0)),
            "produce_seconds": round(produced, 3),
            "produce_rate": phases.rate(n, produced),
            "server": stats,
            "cpu": cpu,
            "timeline": progress.samples,
        }

    async def _drain(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """Wait until lifecycle's relay published every transition it stored (bounded)."""
        stored = self._database().get("transitions")
        started = time.perf_counter()
        deadline, published = started + self.args.drain_timeout, 0.0
        while time.perf_counter() < deadline:
            published = (await counters(client, [PUBLISHED]))[PUBLISHED]
            if stored is not None and published >= stored:
                break
            await asyncio.sleep(0.1)
        return {
            "transitions_stored": stored,
            "published": int(published),
            "complete": stored is not None and published >= stored,
            "seconds_after_fold": round(time.perf_counter() - started, 2),
        }

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
        """Row counts of lifecycle's SQLite file (read-only, beside the running service)."""
        path = self.workdir / f"{SERVICE}.db"
        queries = {
            "facts": "SELECT count(*) FROM facts",
            "fact_customers": "SELECT count(DISTINCT customer_id) FROM facts",
            "customer_stages": "SELECT count(*) FROM customer_stages",
            "transitions": "SELECT count(*) FROM stage_transitions",
            "transitions_active": "SELECT count(*) FROM stage_transitions WHERE NOT superseded",
            "transitions_superseded": "SELECT count(*) FROM stage_transitions WHERE superseded",
            "transitions_corrections": "SELECT count(*) FROM stage_transitions WHERE correction",
            "overdue_customers": "SELECT count(*) FROM customer_stages WHERE next_due <= "
            "(SELECT value FROM lifecycle_clock WHERE name = 'event-time')",
            "clock": "SELECT value FROM lifecycle_clock WHERE name = 'event-time'",
        }
        out: dict[str, Any] = {}
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
                for key, sql in queries.items():
                    row = conn.execute(sql).fetchone()
                    out[key] = row[0] if row else None
        except sqlite3.Error as exc:
            out["error"] = repr(exc)
        return out


# --- report ---


def print_report(result: dict[str, Any]) -> None:
    s = result.get("settings", {})
    replay = result.get("replay") or {}
    base = result.get("baseline") or {}
    produce, consume = base.get("produce") or {}, base.get("consume") or {}
    print(
        f"\nlifecycle replay of CDNOW ({result.get('machine', {}).get('cpus')} CPUs): "
        f"{num(replay.get('events') or result.get('events'))} purchases of "
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
    if replay:
        row(
            "replay: produce to crm.customer-events",
            replay["events"],
            replay["produce_seconds"],
            replay["produce_rate"],
        )
        ratio = replay.get("vs_raw_consume")
        row(
            "replay: first send -> lifecycle folded all",
            replay["events"],
            replay["seconds"],
            replay["rate"],
            f"{100 * ratio:.1f}%" if ratio else "-",
        )
        if not replay["complete"]:
            lines.append(f"  !! lifecycle applied only {replay['applied']} of {replay['events']}")
    rebuild = result.get("rebuild")
    if rebuild:
        row(
            "rebuild: POST /v1/admin/rebuild (customers)",
            rebuild["customers"],
            rebuild["seconds"],
            rebuild["rate_customers"],
        )
    sections = [("throughput", lines)]

    milestones = []
    if replay:
        seconds = replay.get("seconds")
        verdict = "-" if seconds is None else ("under" if seconds < TARGET_SECONDS else "over")
        milestones.append(
            f"  full CDNOW replay, lifecycle alone: {num(seconds, 2)} s ({verdict} the "
            f"{TARGET_SECONDS:g} s target for the whole system)"
        )
        milestones.append(f"  {_window_rates(replay.get('timeline') or [])}")
    warm, drain = result.get("warm_up") or {}, result.get("drain") or {}
    if warm:
        milestones.append(f"  warm-up (group join + 1 event): {num(warm.get('seconds'), 2)} s")
    if drain:
        milestones.append(
            f"  relay published all {num(drain.get('transitions_stored'))} transitions "
            f"{num(drain.get('seconds_after_fold'), 2)} s after the fold "
            f"({'complete' if drain.get('complete') else 'INCOMPLETE'})"
        )
    server = replay.get("server") or {}
    if server.get("lifecycle_batches"):
        milestones.append(
            f"  lifecycle: {server['lifecycle_batches']} batches of "
            f"{server['lifecycle_events_per_batch']} events, {server['lifecycle_batch_ms_mean']} "
            "ms each"
        )
    sections.append(("milestones", milestones))
    sections.append(("stages", _stage_lines(result)))
    sections.append(("database (lifecycle.db)", _database_lines(result)))
    sections.append(
        (
            "CPU per phase",
            cpu_table(
                [
                    ("raw produce", produce.get("cpu")),
                    ("raw consume", consume.get("cpu")),
                    ("replay", replay.get("cpu")),
                    ("rebuild", (rebuild or {}).get("cpu")),
                ],
                PROCESSES,
            ),
        )
    )
    memory = memory_lines(result, PROCESSES)
    after = (result.get("memory_after_baseline") or {}).get("broker")
    if after:
        memory.append(f"  (broker after the baseline, before lifecycle: {after['rss_mib']} MiB)")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM stops the run like Ctrl-C: the finally blocks stop lifecycle and the broker.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    events = load_events(args)
    workdir = Path(tempfile.mkdtemp(prefix="crm-bench-lifecycle-"))
    result: dict[str, Any] = {
        "benchmark": NAME,
        "started_at": started.isoformat(),
        "command": " ".join(["python -m bench.lifecycle_replay", *sys.argv[1:]]),
        "settings": runinfo.settings(args),
        "machine": runinfo.machine(),
        "events": len(events),
        "customers": len({e["subject"] for e in events}),
    }
    run = Run(args, workdir, events)
    try:
        result |= asyncio.run(run.execute())
    except (Exception, KeyboardInterrupt) as exc:
        print(f"benchmark aborted: {exc!r}; partial results follow", file=sys.stderr)
        result |= run.result | {"aborted": repr(exc)[:2000]}
    finally:
        result["finished_at"] = datetime.now(UTC).isoformat()
        if args.keep_data:
            print(f"databases and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(result)
    if not args.no_save:
        print(f"\nresults: {runinfo.save(result, args.results_dir, NAME, stamp)}")
    return 1 if "aborted" in result else 0


if __name__ == "__main__":
    sys.exit(main())
