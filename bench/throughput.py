"""Throughput, latency and memory of contacts + lifecycle + scoring on the embedded broker.

One run starts a fresh broker and fresh databases (in a temporary directory), then measures:

1. baseline: a raw aiokafka producer and consumer against the same broker, with records as
   large as the purchase events contacts publishes;
2. end to end via HTTP: batches POSTed to contacts until lifecycle AND scoring applied every
   event (their customer-events consumers' `crm_events_consumed_total`), and contacts'
   ingestion rate alone;
3. end to end via Kafka: the same through `crm.inbound`;
4. latency: single POSTs at a steady rate, each until its fresh customer's stage reads `new`;
5. peak RSS (VmHWM) of each process after the throughput phases and at the end, and CPU
   used per phase.

It prints a table and writes JSON to `bench/results/throughput-<UTC timestamp>.json`.
`--profile` samples contacts and lifecycle with py-spy during the HTTP phase.

    .venv/bin/python -m bench.throughput [--events 100000 --customers 10000] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench import latency, phases, profiling, runinfo
from bench.observe import (
    CONSUMED,
    DEAD_LETTERED,
    DUPLICATES,
    RELAY_FAILURES,
    CpuMeter,
    counters,
    memory_mib,
)
from bench.report import print_report
from bench.workload import Workload, canonical_records, sizes
from crm_shared.messaging.topics import ALL_TOPICS, ensure_topics
from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import Stack

RESULTS = runinfo.RESULTS
BASELINE_TOPIC = "bench.baseline"
SERVICES = ("contacts", "lifecycle", "scoring")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, default=100_000, help="events per end-to-end phase")
    p.add_argument("--customers", type=int, default=10_000, help="customers they spread over")
    p.add_argument("--batch-size", type=int, default=500, help="events per HTTP batch")
    p.add_argument("--concurrency", type=int, default=4, help="HTTP batch requests in flight")
    p.add_argument("--baseline-messages", type=int, help="default: max(events, 50000)")
    p.add_argument("--linger-ms", type=int, default=1, help="linger of the raw producers")
    p.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    p.add_argument("--fetch-max-wait-ms", type=int, default=10, help="CRM_FETCH_MAX_WAIT_MS")
    p.add_argument("--latency-rate", type=float, default=500.0, help="single POSTs per second")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="for how long")
    p.add_argument(
        "--idle-seconds", type=float, default=10.0, help="CPU measured with nothing sent"
    )
    p.add_argument("--poll-interval-ms", type=float, default=10.0, help="stage poll interval")
    p.add_argument(
        "--poll-every",
        type=int,
        default=25,
        help="poll the stage of every N-th latency event (all are timed by lifecycle's "
        "recorded_at)",
    )
    p.add_argument(
        "--max-poll-rate", type=float, default=150.0, help="stage GETs per second, at most"
    )
    p.add_argument(
        "--latency-timeout", type=float, default=10.0, help="give up on one event after (s)"
    )
    p.add_argument(
        "--phases",
        default="baseline,idle,http,kafka,latency",
        help="comma-separated subset of baseline,idle,http,kafka,latency",
    )
    p.add_argument("--phase-timeout", type=float, help="default: max(60, events / 200) s")
    p.add_argument(
        "--no-scoring",
        action="store_true",
        help="contacts and lifecycle only (end to end = lifecycle applied all), as before",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="http",
        default="",
        metavar="PHASES",
        help="sample the services with py-spy during these phases (bare: http)",
    )
    p.add_argument("--profile-idle", action="store_true", help="include idle (waiting) samples")
    p.add_argument("--profile-native", action="store_true", help="include C frames (slower)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-dir", type=Path, help="default: a temporary directory")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--keep-data", action="store_true", help="keep databases and logs")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    args.profile = [x.strip() for x in args.profile.split(",") if x.strip()]
    unknown = set(args.phases + args.profile) - {"baseline", "idle", "http", "kafka", "latency"}
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}")
    args.baseline_messages = args.baseline_messages or max(args.events, 50_000)
    args.phase_timeout = args.phase_timeout or max(60.0, args.events / 200)
    args.services = [s for s in SERVICES if s != "scoring" or not args.no_scoring]
    return args


class Run:
    """One benchmark run: a fresh broker and stack in a temporary directory."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:6]
        self.result: dict[str, Any] = {}
        self.broker = Broker(log_path=workdir / "logs" / "broker.log")
        self.stack: Stack | None = None

    async def execute(self) -> dict[str, Any]:
        args = self.args
        with self.broker:
            await ensure_topics(
                self.broker.bootstrap, [*ALL_TOPICS, BASELINE_TOPIC], partitions=args.partitions
            )
            if "baseline" in args.phases:
                self.result["baseline"] = await self._baseline()
            self.stack = Stack(
                args.services,
                bootstrap=self.broker.bootstrap,
                data_dir=self.workdir,
                env={
                    "CRM_FETCH_MAX_WAIT_MS": str(args.fetch_max_wait_ms),
                    "CRM_TOPIC_PARTITIONS": str(args.partitions),
                },
            )
            await self.stack.start_async()
            try:
                await self._end_to_end()
            finally:
                self.result["memory"] = self._memory()
                await self.stack.stop_async()
        return self.result

    def _pids(self) -> dict[str, int]:
        return phases.stack_pids(self.broker, self.stack)

    def _check_alive(self) -> None:
        phases.check_alive(self.stack)

    def _context(self, clients: dict[str, httpx.AsyncClient]) -> phases.Context:
        assert self.stack is not None
        contacts, lifecycle = clients["contacts"], clients["lifecycle"]
        scoring = clients.get("scoring")
        return phases.Context(
            bootstrap=self.broker.bootstrap,
            contacts=contacts,
            lifecycle=lifecycle,
            scoring=scoring,
            watcher=phases.folding_watcher(lifecycle, contacts, scoring),
            contacts_addr=(self.stack["contacts"].host, self.stack["contacts"].port),
            lifecycle_addr=(self.stack["lifecycle"].host, self.stack["lifecycle"].port),
            pids=self._pids(),
            run_id=self.run_id,
            linger_ms=self.args.linger_ms,
            check_alive=self._check_alive,
        )

    async def _baseline(self) -> dict[str, Any]:
        args, bootstrap = self.args, self.broker.bootstrap
        workload = Workload(f"bench-b-{self.run_id}", args.baseline_messages, args.customers)
        records = canonical_records(workload.generate())
        meter = CpuMeter(self._pids())
        produce = await phases.baseline_produce(
            bootstrap, args.linger_ms, BASELINE_TOPIC, records, meter
        )
        deadline = time.perf_counter() + args.phase_timeout
        consume = await phases.baseline_consume(
            bootstrap, BASELINE_TOPIC, len(records), meter, deadline
        )
        mean = sum(len(v) for _, v in records) / len(records)
        return {"record_bytes": round(mean, 1), "produce": produce, "consume": consume}

    async def _end_to_end(self) -> None:
        assert self.stack is not None
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
        async with contextlib.AsyncExitStack() as opened:
            clients = {
                name: await opened.enter_async_context(
                    httpx.AsyncClient(
                        base_url=self.stack.url(name),
                        limits=limits,
                        timeout=httpx.Timeout(60.0),
                        trust_env=False,
                        headers=self.stack.headers,
                    )
                )
                for name in self.args.services
            }
            ctx = self._context(clients)
            self.result["warm_up"] = await phases.warm_up(ctx, within=60.0)
            await self._phases(ctx)
            self.result["counters"] = {
                name: await counters(client, [CONSUMED, DUPLICATES, DEAD_LETTERED, RELAY_FAILURES])
                for name, client in clients.items()
            }

    async def _phases(self, ctx: phases.Context) -> None:
        args = self.args
        if "idle" in args.phases:
            await self._phase("idle", phases.idle(ctx, args.idle_seconds))
        if "http" in args.phases:
            workload = Workload(f"bench-h-{self.run_id}", args.events, args.customers)
            await self._phase(
                "http",
                phases.http_end_to_end(
                    ctx, workload, args.batch_size, args.concurrency, args.phase_timeout
                ),
            )
        if "kafka" in args.phases:
            workload = Workload(f"bench-k-{self.run_id}", args.events, args.customers)
            await self._phase("kafka", phases.kafka_end_to_end(ctx, workload, args.phase_timeout))
        # Peak RSS so far: the throughput phases (the broker's includes the baseline's records).
        self.result["memory_after_throughput"] = self._memory()
        if "latency" in args.phases:
            await self._phase(
                "latency",
                latency.latency(
                    ctx,
                    args.latency_rate,
                    args.latency_seconds,
                    poll_interval=args.poll_interval_ms / 1000,
                    max_poll_rate=args.max_poll_rate,
                    within=args.latency_timeout,
                    poll_every=max(1, args.poll_every),
                ),
            )

    async def _phase(self, name: str, measure: Coroutine[Any, Any, dict[str, Any]]) -> None:
        """Run one phase, sampled with py-spy if `--profile` names it."""
        recordings = self._start_profiles(name)
        try:
            self.result[name] = await measure
        finally:
            if recordings:
                self.result.setdefault("profile", {})[name] = self._stop_profiles(recordings)

    def _start_profiles(self, phase: str) -> list[profiling.Recording]:
        if phase not in self.args.profile or self.stack is None:
            return []
        return profiling.start_profiles(
            phase,
            {name: pid for name, pid in self._pids().items() if name in self.args.services},
            self.args.profile_dir,
            rate=self.args.profile_rate,
            idle=self.args.profile_idle,
            native=self.args.profile_native,
        )

    def _stop_profiles(self, recordings: list[profiling.Recording]) -> dict[str, Any]:
        return profiling.stop_profiles(recordings)

    def _memory(self) -> dict[str, dict[str, float]]:
        return memory_mib(self._pids())


def save(result: dict[str, Any], results_dir: Path, stamp: str) -> Path:
    return runinfo.save(result, results_dir, "throughput", stamp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM stops the run like Ctrl-C: the finally blocks stop the services and the broker.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "started_at": started.isoformat(),
        "command": " ".join(["python -m bench.throughput", *sys.argv[1:]]),
        "settings": runinfo.settings(args),
        "machine": runinfo.machine(),
        "event_bytes": sizes(Workload("bench-s", 200, 200).generate()),
    }
    run = Run(args, workdir)
    result = runinfo.run_to_end(
        run.execute(), lambda: run.result, result, workdir=workdir, keep_data=args.keep_data
    )
    print_report(result)
    if not args.no_save:
        print(f"\nresults: {save(result, args.results_dir, stamp)}")
    return 1 if "aborted" in result else 0


if __name__ == "__main__":
    sys.exit(main())
