"""Memory of contacts, lifecycle and scoring as customers grow: RSS at 10k, 100k, ... customers.

One run starts a fresh embedded broker and the three services as processes (fresh SQLite
databases in a temporary directory), forms the consumer groups with one warm-up customer,
then for each step (powers of ten from 10,000 up to `--customers`) publishes one purchase
of each new customer and waits until every service applied everything and is idle again:

- `--via inbound` (default): straight to `crm.inbound` with one raw producer; contacts
  creates a prospect contact for each unknown customer and publishes it with the purchase,
  lifecycle and scoring fold both (and scoring every transition lifecycle publishes);
- `--via customer-events`: the canonical purchase straight to `crm.customer-events`, for
  lifecycle and scoring only (contacts runs, idle), when the whole path takes too long.

At each step it reads, for every process, VmRSS split into anonymous memory (the heap:
what would grow with per-customer state) and file pages (shared libraries, mapped files),
VmHWM, and the size of each service's SQLite files; between steps it samples RSS every
second. It reports MiB per process and the growth in bytes per customer between steps
(the slope that says whether memory grows with customers).

It prints a table and writes JSON to `bench/results/memory-scale-<UTC timestamp>.json`.

    .venv/bin/python -m bench.memory_scale [--customers 1000000] [--via customer-events]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from aiokafka import AIOKafkaProducer

from bench import phases, runinfo
from bench.observe import PUBLISHED, CpuMeter, Watcher, counters, memory_kib, wait_idle
from bench.report import num
from bench.workload import canonical_records, customer_id, kafka_records, purchase
from crm_shared.messaging.kafka import HEADER_CONTENT_TYPE
from crm_shared.messaging.topics import ALL_TOPICS, CUSTOMER_EVENTS, INBOUND, ensure_topics
from crm_shared.testing.broker import Broker
from crm_shared.testing.stack import Stack

NAME = "memory-scale"
SERVICES = ("contacts", "lifecycle", "scoring")
PROCESSES = (*SERVICES, "broker", "bench")
STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
FIRST_STEP = 10_000
CHUNK = 5_000  # records generated and produced at a time (1M would not fit comfortably)
OF_CUSTOMER_EVENTS = 'consumer="customer-events"'
OF_LIFECYCLE = 'consumer="lifecycle"'
HEADERS = [(HEADER_CONTENT_TYPE, b"application/cloudevents+json")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.memory_scale",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--customers", type=int, default=100_000, help="customers at the last step")
    p.add_argument(
        "--steps",
        help="comma-separated customer counts to measure at (default: 10k, 100k, ... up to "
        "--customers, and --customers itself)",
    )
    p.add_argument("--via", choices=("inbound", "customer-events"), default="inbound")
    p.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    p.add_argument("--linger-ms", type=int, default=5, help="linger of the raw producer")
    p.add_argument(
        "--min-rate",
        type=float,
        default=100.0,
        help="a step fails if the services apply fewer customers/s than this (its deadline)",
    )
    p.add_argument("--results-dir", type=Path, default=runinfo.RESULTS)
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--keep-data", action="store_true", help="keep databases and logs")
    args = p.parse_args(argv)
    if args.steps:
        args.steps = sorted({int(x) for x in args.steps.split(",") if x.strip()})
    else:
        args.steps = default_steps(args.customers)
    return args


def default_steps(customers: int) -> list[int]:
    """10k, 100k, 1M... below `customers`, then `customers`."""
    steps, step = [], FIRST_STEP
    while step < customers:
        steps.append(step)
        step *= 10
    return [*steps, customers]


def process_memory(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per live process: rss, anon, file, hwm in MiB."""
    names = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "hwm"}
    out = {}
    for name, pid in pids.items():
        kib = memory_kib(pid, STATUS_KEYS)
        if kib:
            out[name] = {names[k]: round(v / 1024, 1) for k, v in kib.items()}
    return out


class Sampler:
    """RSS of every process once a second, in the background: the timeline of a run."""

    def __init__(self, pids: dict[str, int], started: float) -> None:
        self.pids, self.started = pids, started
        self.samples: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            sample: dict[str, Any] = {"t": round(time.perf_counter() - self.started, 1)}
            for name, pid in self.pids.items():
                rss = memory_kib(pid, ("VmRSS",)).get("VmRSS")
                if rss is not None:
                    sample[name] = round(rss / 1024, 1)
            self.samples.append(sample)
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Run:
    """One run: a fresh broker and the three services in a temporary directory."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.prefix = f"mem-{uuid.uuid4().hex[:6]}"
        self.result: dict[str, Any] = {"steps": []}
        self.broker = Broker(log_path=workdir / "logs" / "broker.log")
        self.stack: Stack | None = None
        self.topic = INBOUND if args.via == "inbound" else CUSTOMER_EVENTS
        self.started = time.perf_counter()
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.per_customer: dict[str, float] = {}  # events each consumer applies per customer

    async def execute(self) -> dict[str, Any]:
        with self.broker:
            await ensure_topics(self.broker.bootstrap, ALL_TOPICS, partitions=self.args.partitions)
            self.stack = Stack(
                SERVICES,
                bootstrap=self.broker.bootstrap,
                data_dir=self.workdir,
                env={"CRM_TOPIC_PARTITIONS": str(self.args.partitions)},
            )
            await self.stack.start_async()
            sampler = Sampler(self._pids(), self.started)
            sampler.start()
            try:
                async with contextlib.AsyncExitStack() as clients:
                    for name in SERVICES:
                        client = self.stack.client(name, timeout=httpx.Timeout(30.0))
                        self.clients[name] = await clients.enter_async_context(client)
                    watcher = self._watcher()
                    self.result["started"] = await self._at_start(watcher)
                    await self._steps(watcher)
            finally:
                await sampler.stop()
                self.result["timeline"] = sampler.samples
                self.result["memory"] = process_memory(self._pids())
                await self.stack.stop_async()
        return self.result

    def _pids(self) -> dict[str, int]:
        return phases.stack_pids(self.broker, self.stack)

    def _check_alive(self) -> None:
        phases.check_alive(self.stack)

    def _watcher(self) -> Watcher:
        clients = self.clients
        return Watcher(
            clients["lifecycle"],
            clients["contacts"],
            more={
                "scoring.consumed": (clients["scoring"], OF_CUSTOMER_EVENTS),
                "scoring.lifecycle": (clients["scoring"], OF_LIFECYCLE),
            },
            sample=("lifecycle.consumed", "scoring.consumed"),
            sample_every=5.0,
        )

    # --- steps ---

    async def _at_start(self, watcher: Watcher) -> dict[str, Any]:
        """Memory of the idle services, then one warm-up customer (the consumer groups form,
        ~5 s on this broker): how many events each service applies per new customer."""
        out: dict[str, Any] = {"memory_idle": process_memory(self._pids())}
        await watcher.snapshot()
        started = time.perf_counter()
        async with self._producer() as producer:
            await self._produce(producer, [customer_id(f"{self.prefix}-warm", 0)])
        targets = {"lifecycle.consumed": 1.0, "scoring.consumed": 1.0}
        progress = await watcher.until(targets, started, started + 120.0)
        self._check_alive()
        if not progress.complete:
            raise phases.BenchError(f"warm-up: not applied within 120 s: {progress.last}")
        await self._settle(within=60.0)
        applied = await watcher.current()
        self.per_customer = {k: v for k, v in applied.items() if k.endswith(".consumed") and v}
        out["seconds"] = round(time.perf_counter() - started, 1)
        out["applied_per_customer"] = self.per_customer
        out["memory"] = process_memory(self._pids())
        return out

    async def _steps(self, watcher: Watcher) -> None:
        done = 0
        async with self._producer() as producer:
            for upto in self.args.steps:
                step = await self._step(watcher, producer, done, upto)
                self.result["steps"].append(step)
                print(_step_line(step), file=sys.stderr, flush=True)
                done = upto
                if not step["complete"]:
                    break

    async def _step(
        self, watcher: Watcher, producer: AIOKafkaProducer, done: int, upto: int
    ) -> dict[str, Any]:
        new = upto - done
        await watcher.snapshot()
        meter = CpuMeter(self._pids())
        meter.start()
        started = time.perf_counter()
        deadline = started + max(300.0, new / self.args.min_rate)
        targets = {k: v * new for k, v in self.per_customer.items()}
        watch = asyncio.create_task(watcher.until(targets, started, deadline))
        try:
            for chunk in _chunks(range(done, upto), CHUNK):
                await self._produce(producer, [customer_id(self.prefix, i) for i in chunk])
        except BaseException:
            watch.cancel()
            raise
        produced = time.perf_counter() - started
        progress = await watch
        self._check_alive()
        applied = time.perf_counter() - started
        settled = await self._settle(within=300.0)
        return {
            "customers": upto,
            "new_customers": new,
            "complete": progress.complete,
            "produce_s": round(produced, 1),
            "applied_s": round(applied, 1),
            "settle_s": settled,
            "customers_per_s": round(new / applied, 1),
            "reached_s": {k: _round(v) for k, v in progress.reached.items()},
            "applied": progress.last,
            "cpu": meter.stop(),
            "memory": process_memory(self._pids()),
            "database_mib": self._database_mib(),
            "published": await self._published(),
            "timeline": progress.samples,
        }

    async def _published(self) -> dict[str, float]:
        """What each service's relay published so far (all topics)."""
        return {
            name: (await counters(client, [PUBLISHED]))[PUBLISHED]
            for name, client in self.clients.items()
        }

    def _database_mib(self) -> dict[str, float]:
        out = {}
        for name in SERVICES:
            files = self.workdir.glob(f"{name}.db*")  # the database, -wal, -shm
            out[name] = round(sum(f.stat().st_size for f in files) / 2**20, 1)
        return out

    async def _settle(self, within: float) -> float:
        return await wait_idle({n: p for n, p in self._pids().items() if n in SERVICES}, within)

    # --- producing ---

    def _producer(self) -> _Producer:
        return _Producer(phases.raw_producer(self.broker.bootstrap, self.args.linger_ms))

    async def _produce(self, producer: AIOKafkaProducer, customers: list[str]) -> None:
        events = [purchase(c) for c in customers]
        if self.topic == INBOUND:
            await phases.produce_all(producer, INBOUND, kafka_records(events))
        else:
            await phases.produce_all(producer, CUSTOMER_EVENTS, canonical_records(events), HEADERS)


class _Producer:
    """A started raw producer for `async with`, stopped at the end."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def __aenter__(self) -> AIOKafkaProducer:
        await self.producer.start()
        return self.producer

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()


def _chunks(items: range, size: int) -> Iterator[range]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def _step_line(step: dict[str, Any]) -> str:
    rss = ", ".join(f"{k} {v['rss']:.0f}" for k, v in step["memory"].items())
    return (
        f"step {step['customers']:,}: applied in {step['applied_s']} s "
        f"({step['customers_per_s']}/s), RSS MiB {rss}"
    )


# --- report ---


def slopes(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Growth of RSS and of its anonymous part between consecutive points (after the
    warm-up, then each step), in bytes per customer added."""
    start = result.get("started", {}).get("memory")
    points = [(1, start)] if start else []
    points += [(s["customers"] + 1, s["memory"]) for s in result.get("steps", [])]
    out = []
    for (n0, m0), (n1, m1) in itertools.pairwise(points):
        added = n1 - n0
        row: dict[str, Any] = {"from": n0 - 1, "to": n1 - 1}
        for name in SERVICES:
            if name in m0 and name in m1:
                row[name] = {
                    k: round((m1[name][k] - m0[name][k]) * 2**20 / added, 1)
                    for k in ("rss", "anon")
                }
        out.append(row)
    return out


def report_lines(result: dict[str, Any]) -> list[str]:
    head = f"  {'customers':>10} {'applied s':>9} {'cust/s':>7}"
    head += "".join(f" {p + ' RSS/anon':>20}" for p in PROCESSES) + "  database MiB c/l/s"
    lines = [head]
    start = result.get("started", {})
    rows: list[tuple[str, Any, Any, Any, str]] = [
        ("idle", None, None, start.get("memory_idle"), ""),
        ("1 (warm)", start.get("seconds"), None, start.get("memory"), ""),
    ]
    for s in result.get("steps", []):
        db = s["database_mib"]
        files = "/".join(num(db.get(n)) for n in SERVICES)
        rows.append((num(s["customers"]), s["applied_s"], s["customers_per_s"], s["memory"], files))
    for label, seconds, rate, memory, files in rows:
        cells = "".join(f" {_rss(memory.get(p) if memory else None):>20}" for p in PROCESSES)
        lines.append(f"  {label:>10} {num(seconds, 1):>9} {num(rate):>7}{cells}  {files}")
    return lines


def _rss(mem: dict[str, float] | None) -> str:
    return f"{mem['rss']:.0f} / {mem.get('anon', 0):.0f}" if mem else "-"


def slope_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"  {'customers':>20}" + "".join(f" {s + ' RSS/anon':>20}" for s in SERVICES)]
    for row in result.get("slopes", []):
        span = f"{num(row['from'])}..{num(row['to'])}"
        cells = "".join(
            f" {row[s]['rss']:>9.0f} / {row[s]['anon']:<8.0f}" if s in row else f" {'-':>20}"
            for s in SERVICES
        )
        lines.append(f"  {span:>20}{cells}")
    return lines


def print_report(result: dict[str, Any]) -> None:
    s = result.get("settings", {})
    print(
        f"\nCRM memory as customers grow ({result.get('machine', {}).get('cpus')} CPUs): one "
        f"purchase per new customer via {s.get('via')}, steps {s.get('steps')}"
    )
    print("\nMiB (RSS / anonymous) when every service applied everything and is idle")
    print("\n".join(report_lines(result)))
    print("\ngrowth, bytes per customer added")
    print("\n".join(slope_lines(result)))
    peak = result.get("memory", {})
    print(
        "\npeak RSS (VmHWM) over the run, MiB: "
        + ", ".join(f"{k} {v.get('hwm', 0):.0f}" for k, v in peak.items())
    )
    if "aborted" in result:
        print(f"\nABORTED: {result['aborted'][:500]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    result: dict[str, Any] = {
        "benchmark": NAME,
        "started_at": started.isoformat(),
        "command": " ".join(["python -m bench.memory_scale", *sys.argv[1:]]),
        "settings": runinfo.settings(args),
        "machine": runinfo.machine(),
    }
    run = Run(args, workdir)
    result = runinfo.run_to_end(
        run.execute(), lambda: run.result, result, workdir=workdir, keep_data=args.keep_data
    )
    result["slopes"] = slopes(result)
    result["wall_s"] = round(time.perf_counter() - run.started, 1)
    print_report(result)
    if not args.no_save:
        print(f"\nresults: {runinfo.save(result, args.results_dir, NAME, stamp)}")
    return 1 if "aborted" in result else 0


if __name__ == "__main__":
    sys.exit(main())
