"""HTTP reads: GET of a contact, a stage and a score under 64 concurrent connections, against
a minimal FastAPI endpoint served the same way in the same run.

One run starts a fresh embedded broker, contacts, lifecycle and scoring as processes (fresh
SQLite databases in a temporary directory) and the baseline app (`bench.minimal_app`: one
GET returning a small JSON, no middleware, no auth check, the services' `uvicorn.run`
options). Then:

1. load: N customers with purchase histories drawn from the BG/NBD model, POSTed to contacts in
   batches; waits until lifecycle and scoring folded every event contacts published, refits
   scoring's model (`POST /v1/models/refit`) so every customer has a score, lists the
   contacts' ids, and waits until every process is idle;
2. reads, for each target (baseline, `GET /v1/contacts/{id}`, `GET
   /v1/customers/{id}/stage`, `GET /v1/customers/{id}/score`) in turn: `--connections`
   keep-alive connections, each sending its next GET (random existing id, the bearer token
   of every scope) as soon as the last one is answered, `--warmup` s not counted, then
   `--seconds` s measured: requests/s, latency p50/p95/p99, errors, CPU of every process;
   `--rounds` repeats the sequence, so each service compares with a baseline taken minutes
   apart at most;
3. peak RSS of every process.

It prints a table and writes JSON to `bench/results/http-reads-<UTC timestamp>.json`.
`--profile lifecycle` (or any targets) samples that process with py-spy while it is measured.

    .venv/bin/python -m bench.http_reads [--customers 2000] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench import closedloop, minimal_app, phases, profiling, runinfo
from bench.observe import CpuMeter, Watcher, memory_mib, wait_idle
from bench.rawhttp import RawHttp
from bench.report import cpu_table, memory_lines, num, profile_lines
from bench.workload import http_batches, purchase
from crm_shared.messaging.topics import ALL_TOPICS, ensure_topics
from crm_shared.testing.broker import Broker, free_port
from crm_shared.testing.stack import ServiceProcess, Stack

NAME = "http-reads"
SERVICES = ("contacts", "lifecycle", "scoring")
BASELINE = minimal_app.NAME
TARGETS = (BASELINE, *SERVICES)
ROUTES = {
    BASELINE: "/v1/items/{id}",
    "contacts": "/v1/contacts/{id}",
    "lifecycle": "/v1/customers/{id}/stage",
    "scoring": "/v1/customers/{id}/score",
}
PROCESSES = (*TARGETS, "broker", "bench")
# Scoring's schedulers run once at start (nothing to do yet), not again during a run; the
# refit is the bench's, through the API.
SCORING_ENV = {"CRM_REFIT_INTERVAL_H": "1000", "CRM_RESCORE_INTERVAL_H": "1000"}
OF_CUSTOMER_EVENTS = 'consumer="customer-events"'
REPO = Path(__file__).resolve().parents[1]
# BG/NBD (weeks) and Gamma-Gamma parameters published for CDNOW: scoring's prior model.
PRIOR = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "gamma": 15.44}
MAX_PURCHASES = 50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.http_reads",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--customers", type=int, default=2_000, help="customers loaded")
    p.add_argument("--seed", type=int, default=1, help="of the purchase histories")
    p.add_argument("--batch-size", type=int, default=500, help="events per POST while loading")
    p.add_argument("--connections", type=int, default=64, help="concurrent connections")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per target")
    p.add_argument("--warmup", type=float, default=2.0, help="not counted, before each target")
    p.add_argument("--rounds", type=int, default=2, help="times every target is measured")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    p.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    p.add_argument("--load-timeout", type=float, default=600.0, help="deadline of the load (s)")
    p.add_argument(
        "--profile",
        default="",
        metavar="TARGETS",
        help="sample these targets with py-spy while they are measured (first round)",
    )
    p.add_argument("--profile-idle", action="store_true", help="include idle (waiting) samples")
    p.add_argument("--profile-native", action="store_true", help="include C frames (slower)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-dir", type=Path, help="default: a temporary directory")
    p.add_argument("--results-dir", type=Path, default=runinfo.RESULTS)
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--keep-data", action="store_true", help="keep databases and logs")
    args = p.parse_args(argv)
    args.targets = [t for t in TARGETS if t in _names(args.targets)]
    args.profile = [t for t in TARGETS if t in _names(args.profile)]
    unknown = (_names(args.targets) | _names(",".join(args.profile))) - set(TARGETS)
    if not args.targets or unknown:
        p.error(f"targets: one or more of {', '.join(TARGETS)}")
    return args


def _names(text: str | list[str]) -> set[str]:
    items = text.split(",") if isinstance(text, str) else text
    return {x.strip() for x in items if x.strip()}


def customer_events(prefix: str, customers: int, seed: int) -> list[dict[str, Any]]:
    """Purchases drawn from the BG/NBD with the published CDNOW parameters (as scoring's
    prior): first purchases over a quarter starting 39 weeks ago, then until today or the
    customer drops out; amounts from the Gamma-Gamma model with CDNOW's parameters. Days are
    distinct and in time order per customer. Fake but plausible histories, so that scoring's
    refit converges."""
    rng = random.Random(seed)
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    events = []
    for i in range(customers):
        days = _purchase_days(rng, first=rng.uniform(273, 364))
        # Gamma-Gamma: the customer's rate nu, then each purchase's value ~ Gamma(p, 1/nu).
        nu = rng.gammavariate(PRIOR["q"], 1 / PRIOR["gamma"])
        for seq, day in enumerate(days):
            event = purchase(f"{prefix}-{i:06d}", seq)
            event["time"] = (today - timedelta(days=day)).isoformat()
            event["data"]["amount"] = f"{max(0.01, rng.gammavariate(PRIOR['p'], 1 / nu)):.2f}"
            events.append(event)
    return events


def _purchase_days(rng: random.Random, first: float) -> list[int]:
    """Days before today of one customer's purchases, most recent last (at most 50)."""
    weekly = rng.gammavariate(PRIOR["r"], 1 / PRIOR["alpha"])
    dropout = rng.betavariate(PRIOR["a"], PRIOR["b"])
    days, ago = [int(first)], first
    while len(days) < MAX_PURCHASES and rng.random() >= dropout and weekly > 0:
        ago -= 7 * rng.expovariate(weekly)
        if ago < 1:
            break
        if int(ago) < days[-1]:
            days.append(int(ago))
    return days


@dataclass
class Ids:
    """The ids each target is read with."""

    customers: list[str]
    contacts: list[str]

    def paths(self, target: str) -> list[str]:
        ids = self.contacts if target == "contacts" else self.customers
        return [ROUTES[target].replace("{id}", i) for i in ids]


class Run:
    """One run: a fresh broker, the services and the baseline app in a temporary directory."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:6]
        self.result: dict[str, Any] = {}
        self.broker = Broker(log_path=workdir / "logs" / "broker.log")
        self.stack: Stack | None = None
        self.baseline: ServiceProcess | None = None

    async def execute(self) -> dict[str, Any]:
        args = self.args
        with self.broker:
            await ensure_topics(self.broker.bootstrap, ALL_TOPICS, partitions=args.partitions)
            self.stack = Stack(
                SERVICES,
                bootstrap=self.broker.bootstrap,
                data_dir=self.workdir,
                env={"CRM_TOPIC_PARTITIONS": str(args.partitions), **SCORING_ENV},
            )
            self.baseline = self._baseline_process()
            self.baseline.start()
            try:
                await self.stack.start_async()
                await self.baseline.wait_ready_async()
                ids = await self._load()
                await self._reads(ids)
            finally:
                self.result["memory"] = memory_mib(self._pids())
                await self.stack.stop_async()
                await self.baseline.stop_async()
        return self.result

    def _baseline_process(self) -> ServiceProcess:
        assert self.stack is not None
        python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return ServiceProcess(
            BASELINE,
            port=free_port(),
            bootstrap=self.broker.bootstrap,
            database_url="",
            log_path=self.stack.log_dir / f"{BASELINE}.log",
            module="bench.minimal_app",
            env={"PYTHONPATH": python_path},
        )

    def _pids(self) -> dict[str, int]:
        pids = {"bench": os.getpid()}
        if self.broker.pid:
            pids["broker"] = self.broker.pid
        for name, process in self._processes().items():
            if process.pid is not None:
                pids[name] = process.pid
        return pids

    def _processes(self) -> dict[str, ServiceProcess]:
        out = dict(self.stack.processes) if self.stack is not None else {}
        return out | ({BASELINE: self.baseline} if self.baseline is not None else {})

    def _check_alive(self) -> None:
        dead = [p for p in self._processes().values() if p.returncode is not None]
        if dead:
            raise phases.BenchError(
                "; ".join(f"{p.name} exited ({p.returncode}):\n{p.log_tail(20)}" for p in dead)
            )

    # --- load ---

    async def _load(self) -> Ids:
        assert self.stack is not None
        stack, args = self.stack, self.args
        events = customer_events(f"reads-{self.run_id}", args.customers, seed=args.seed)
        clients = {name: stack.client(name, timeout=httpx.Timeout(300.0)) for name in SERVICES}
        try:
            started = time.perf_counter()
            load: dict[str, Any] = {"customers": args.customers, "events": len(events)}
            load |= await self._post_and_fold(clients, events)
            load["refit"] = await _refit(clients["scoring"])
            contacts = await _contact_ids(clients["contacts"])
            load["contacts"] = len(contacts)
            load["idle_after_s"] = await self._settle(within=120.0)
            load["seconds"] = round(time.perf_counter() - started, 1)
            self.result["load"] = load
            customers = sorted({e["subject"] for e in events})
            await _check_reads(clients, customers, contacts)
        finally:
            for client in clients.values():
                await client.aclose()
        return Ids(customers=customers, contacts=contacts)

    async def _post_and_fold(
        self, clients: dict[str, httpx.AsyncClient], events: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """POST the events; wait until contacts published and both services folded them all
        (contacts publishes each purchase, and a contact for each new customer)."""
        watcher = Watcher(
            clients["lifecycle"],
            clients["contacts"],
            more={"scoring.consumed": (clients["scoring"], OF_CUSTOMER_EVENTS)},
        )
        await watcher.snapshot()
        expected = len(events) + self.args.customers
        started = time.perf_counter()
        bodies = http_batches(events, self.args.batch_size)
        await phases.post_batches(clients["contacts"], bodies, concurrency=4)
        posted = time.perf_counter() - started
        targets = dict.fromkeys(("contacts.published", "lifecycle.consumed", "scoring.consumed"))
        progress = await watcher.until(
            {k: expected for k in targets}, started, started + self.args.load_timeout
        )
        self._check_alive()
        if not progress.complete:
            raise phases.BenchError(f"load: not folded in time: {progress.last} of {expected}")
        return {
            "post_seconds": round(posted, 1),
            "folded_seconds": round(max(t or 0.0 for t in progress.reached.values()), 1),
            "published": expected,
        }

    async def _settle(self, within: float) -> float:
        return await wait_idle({n: p for n, p in self._pids().items() if n in SERVICES}, within)

    # --- reads ---

    async def _reads(self, ids: Ids) -> None:
        assert self.stack is not None
        authorization = self.stack.headers["Authorization"]
        rounds: list[dict[str, Any]] = []
        self.result["rounds"] = rounds
        for index in range(self.args.rounds):
            measured: dict[str, Any] = {}
            rounds.append(measured)
            for target in self.args.targets:
                process = self._processes()[target]
                client = RawHttp(process.host, process.port, authorization=authorization)
                async with client:
                    measured[target] = await self._read(target, client, ids, index)
                self._check_alive()
        self.result["summary"] = summarise(rounds)

    async def _read(self, target: str, client: RawHttp, ids: Ids, index: int) -> dict[str, Any]:
        meter = CpuMeter(self._pids())
        recordings: list[profiling.Recording] = []

        def on_measure() -> None:
            meter.start()
            if index == 0 and target in self.args.profile:
                pid = self._pids()[target]
                recordings.extend(
                    profiling.start_profiles(
                        target,
                        {target: pid},
                        self.args.profile_dir,
                        rate=self.args.profile_rate,
                        idle=self.args.profile_idle,
                        native=self.args.profile_native,
                    )
                )

        try:
            out = await closedloop.drive(
                client,
                ids.paths(target),
                connections=self.args.connections,
                seconds=self.args.seconds,
                warmup=self.args.warmup,
                seed=index,
                on_measure=on_measure,
            )
            out["cpu"] = meter.stop()
            used = out["cpu"].get(target, {}).get("cpu_s")
            if used is not None and out["ok"]:  # steadier than req/s on a shared machine
                out["server_cpu_us_per_request"] = round(1e6 * used / out["ok"])
        finally:
            if recordings:
                self.result.setdefault("profile", {})[target] = profiling.stop_profiles(recordings)
        out["route"] = ROUTES[target]
        return out


async def _refit(client: httpx.AsyncClient) -> dict[str, Any]:
    started = time.perf_counter()
    response = await client.post("/v1/models/refit")
    if response.status_code == 409:  # the fit did not converge: scores stay the prior model's
        return {"error": response.json().get("detail")}
    if response.status_code != 200:
        raise phases.BenchError(f"refit: {response.status_code} {response.text[:300]}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "version": response.json()["version"],
    }


async def _contact_ids(client: httpx.AsyncClient) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/contacts", params=params)
        response.raise_for_status()
        page = response.json()
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return ids


async def _check_reads(
    clients: dict[str, httpx.AsyncClient], customers: list[str], contacts: list[str]
) -> None:
    """One GET of each route answers 200 before anything is timed."""
    for name, some in (
        ("contacts", contacts[0]),
        ("lifecycle", customers[0]),
        ("scoring", customers[0]),
    ):
        response = await clients[name].get(ROUTES[name].replace("{id}", some))
        if response.status_code != 200:
            raise phases.BenchError(f"{name}: GET {some}: {response.status_code} {response.text}")


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per target: requests/s and p99 of each round and as a ratio to that round's baseline."""
    out: dict[str, Any] = {}
    for target in rounds[0] if rounds else {}:
        rates = [r[target]["rate"] for r in rounds]
        p99s = [r[target]["latency_ms"].get("p99") for r in rounds]
        ratios = [
            round(r[target]["rate"] / r[BASELINE]["rate"], 3)
            if BASELINE in r and r[BASELINE]["rate"]
            else None
            for r in rounds
        ]
        out[target] = {"rate": rates, "p99_ms": p99s, "rate_vs_baseline": ratios}
    return out


# --- report ---


def read_lines(result: dict[str, Any]) -> list[str]:
    head = (
        f"  {'round target':<22} {'route':<28} {'req/s':>8} {'vs base':>8} {'p50 ms':>8}"
        f" {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} {'server %':>9} {'us/req':>7}"
        f" {'bench %':>8}"
    )
    lines = [head]
    for index, measured in enumerate(result.get("rounds", [])):
        base = (measured.get(BASELINE) or {}).get("rate")
        for target, m in measured.items():
            lat = m["latency_ms"]
            ratio = f"{100 * m['rate'] / base:.1f}%" if base else "-"
            cpu = m.get("cpu", {})
            lines.append(
                f"  {index + 1:<2} {target:<19} {m['route']:<28} {num(m['rate']):>8} {ratio:>8}"
                f" {num(lat.get('p50'), 1):>8} {num(lat.get('p95'), 1):>8}"
                f" {num(lat.get('p99'), 1):>8} {m['errors']:>7}"
                f" {num(cpu.get(target, {}).get('core_pct')):>9}"
                f" {num(m.get('server_cpu_us_per_request')):>7}"
                f" {num(cpu.get('bench', {}).get('core_pct')):>8}"
            )
            if m["first_error"]:
                lines.append(f"     first error: {m['first_error'][:150]}")
    return lines


def print_report(result: dict[str, Any]) -> None:
    s, load = result.get("settings", {}), result.get("load", {})
    print(
        f"\nCRM HTTP reads ({result.get('machine', {}).get('cpus')} CPUs): "
        f"{s.get('connections')} connections, {s.get('seconds')} s per target after "
        f"{s.get('warmup')} s warm-up; {num(load.get('customers'))} customers, "
        f"{num(load.get('events'))} purchases loaded in {num(load.get('seconds'), 1)} s "
        f"(refit {num(load.get('refit', {}).get('seconds'), 1)} s)"
    )
    cpu_rows = [
        (f"{i + 1} {target}", m.get("cpu"))
        for i, measured in enumerate(result.get("rounds", []))
        for target, m in measured.items()
    ]
    sections = [
        (
            "reads (server %, us/req: CPU of the target, in all and per request; bench %: "
            "CPU of the load generator)",
            read_lines(result),
        ),
        ("CPU while measured, % of one core", cpu_table(cpu_rows, PROCESSES)),
        ("memory", memory_lines(result, PROCESSES)),
        ("profile (share of samples)", profile_lines(result)),
    ]
    for title, lines in sections:
        if len(lines) > 1 or (lines and title.startswith("profile")):
            print(f"\n{title}\n" + "\n".join(lines))
    if "aborted" in result:
        print(f"\nABORTED: {result['aborted'][:500]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM stops the run like Ctrl-C: the finally blocks stop the services and the broker.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    result: dict[str, Any] = {
        "benchmark": NAME,
        "started_at": started.isoformat(),
        "command": " ".join(["python -m bench.http_reads", *sys.argv[1:]]),
        "settings": runinfo.settings(args),
        "machine": runinfo.machine(),
    }
    run = Run(args, workdir)
    result = runinfo.run_to_end(
        run.execute(), lambda: run.result, result, workdir=workdir, keep_data=args.keep_data
    )
    print_report(result)
    if not args.no_save:
        path = runinfo.save(result, args.results_dir, NAME, stamp)
        print(f"\nresults: {path}")
    return 1 if "aborted" in result else 0


if __name__ == "__main__":
    sys.exit(main())
