"""What a benchmark watches: the services' /metrics, and CPU and memory from /proc."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

CONSUMED = "crm_events_consumed_total"
PUBLISHED = "crm_events_published_total"
DUPLICATES = "crm_events_duplicate_total"
DEAD_LETTERED = "crm_events_dead_lettered_total"
RELAY_FAILURES = "crm_relay_failures_total"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


BATCH_COUNT = "crm_consumer_batch_seconds_count"
BATCH_SUM = "crm_consumer_batch_seconds_sum"
HTTP_COUNT = "crm_http_request_duration_seconds_count"
HTTP_SUM = "crm_http_request_duration_seconds_sum"
EVENTS_ROUTE = 'route="/v1/events"'


def metric_sum(text: str, name: str, having: str = "") -> float:
    """Sum of the samples of `name` in a Prometheus text exposition.

    All label sets count, or only those whose labels contain `having` (`route="/x"`).
    """
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            if having in line.rsplit(" ", 1)[0]:
                total += float(line.rsplit(" ", 1)[1])
    return total


async def read_metrics(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    response.raise_for_status()
    return response.text


async def counters(client: httpx.AsyncClient, names: Sequence[str]) -> dict[str, float]:
    text = await read_metrics(client)
    return {name: metric_sum(text, name) for name in names}


@dataclass
class Progress:
    """When each watched counter reached its target, seconds after the phase's start.

    `samples` holds (seconds, value of each sampled counter, in the watcher's order).
    """

    reached: dict[str, float | None]
    samples: list[tuple[float, ...]] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(t is not None for t in self.reached.values())


# A counter as a bench reads it: which service, which metric, and the samples whose labels
# contain this text only (`consumer="customer-events"`; empty: all of them).
Source = tuple[httpx.AsyncClient, str, str]


async def read_sources(sources: Mapping[str, Source]) -> dict[str, float]:
    """The value of each named counter, one /metrics request per service; a service that
    does not answer is left out."""
    texts: dict[int, str | None] = {}
    out: dict[str, float] = {}
    for name, (client, metric, having) in sources.items():
        if id(client) not in texts:
            try:
                texts[id(client)] = await read_metrics(client)
            except httpx.HTTPError:
                texts[id(client)] = None  # a slow answer under load; the next tick asks again
        text = texts[id(client)]
        if text is not None:
            out[name] = metric_sum(text, metric, having)
    return out


class Watcher:
    """Polls /metrics of lifecycle (every tick) and contacts (every other tick, if given).

    Targets are deltas from the counters' values at the last `snapshot()`, so whatever a
    service had counted before a phase does not count. `more` adds consumed-event counters
    read every tick: name -> (service, label filter), e.g. `{"scoring.consumed": (client,
    'consumer="customer-events"')}`. `sample` names the counters the timeline records.
    """

    def __init__(
        self,
        lifecycle: httpx.AsyncClient | None,
        contacts: httpx.AsyncClient | None,
        *,
        more: Mapping[str, tuple[httpx.AsyncClient, str]] | None = None,
        sample: Sequence[str] = ("lifecycle.consumed",),
        interval: float = 0.05,
        sample_every: float = 0.5,
    ) -> None:
        self._every: dict[str, Source] = {}
        if lifecycle is not None:
            self._every["lifecycle.consumed"] = (lifecycle, CONSUMED, "")
        for name, (client, having) in (more or {}).items():
            self._every[name] = (client, CONSUMED, having)
        self._contacts: dict[str, Source] = {}
        if contacts is not None:
            self._contacts = {
                "contacts.consumed": (contacts, CONSUMED, ""),
                "contacts.published": (contacts, PUBLISHED, ""),
            }
        self._sample = tuple(sample)
        self.sampled = list(self._sample)
        self._interval, self._sample_every = interval, sample_every
        self._base: dict[str, float] = {}

    async def snapshot(self) -> None:
        """Remember the counters now; later targets count from here."""
        sources = self._every | self._contacts
        self._base = await read_sources(sources)
        if len(self._base) < len(sources):
            raise httpx.HTTPError("snapshot: a service did not answer /metrics")

    async def until(self, targets: Mapping[str, float], start: float, deadline: float) -> Progress:
        """Poll until every target (`lifecycle.consumed`, `contacts.published`...) is met."""
        progress = Progress(reached=dict.fromkeys(targets))
        tick, next_sample = 0, start
        while time.perf_counter() < deadline and not progress.complete:
            values = await self._read(contacts=tick % 2 == 0 or tick < 2)
            now = time.perf_counter()
            progress.last.update(values)
            for name, target in targets.items():
                if progress.reached[name] is None and values.get(name, -1) >= target:
                    progress.reached[name] = now - start
            if now >= next_sample:
                sampled = (values.get(k, math.nan) for k in self._sample)
                progress.samples.append((round(now - start, 3), *sampled))
                next_sample = now + self._sample_every
            tick += 1
            await asyncio.sleep(self._interval)
        return progress

    async def current(self) -> dict[str, float]:
        """The watched counters now, as deltas from the snapshot."""
        return await self._read(contacts=True)

    async def _read(self, *, contacts: bool) -> dict[str, float]:
        values = await read_sources(self._every | (self._contacts if contacts else {}))
        return {k: v - self._base[k] for k, v in values.items()}


class ServerStats:
    """Consumer batches and server-side POST time of the services over one phase.

    `more` adds services (or one consumer of a service): name -> (service, label filter).
    """

    def __init__(
        self,
        lifecycle: httpx.AsyncClient | None,
        contacts: httpx.AsyncClient | None,
        *,
        more: Mapping[str, tuple[httpx.AsyncClient, str]] | None = None,
    ) -> None:
        self._services = {} if lifecycle is None else {"lifecycle": (lifecycle, "")}
        self._services |= dict(more or {})
        self._contacts = contacts
        self._before: dict[str, float] = {}

    async def _read(self) -> dict[str, float]:
        sources: dict[str, Source] = {}
        for name, (client, having) in self._services.items():
            sources |= {
                f"{name}.batches": (client, BATCH_COUNT, having),
                f"{name}.batch_s": (client, BATCH_SUM, having),
                f"{name}.events": (client, CONSUMED, having),
            }
        values = await read_sources(sources)
        if self._contacts is None:
            return values
        ct = await read_metrics(self._contacts)
        return values | {
            "contacts.batches": metric_sum(ct, BATCH_COUNT),
            "contacts.batch_s": metric_sum(ct, BATCH_SUM),
            "contacts.events": metric_sum(ct, CONSUMED),
            "contacts.posts": metric_sum(ct, HTTP_COUNT, EVENTS_ROUTE),
            "contacts.post_s": metric_sum(ct, HTTP_SUM, EVENTS_ROUTE),
        }

    async def start(self) -> None:
        self._before = await self._read()

    async def stop(self) -> dict[str, Any]:
        """Batches applied, events per batch, mean ms per batch, mean server ms per POST."""
        after = await self._read()
        d = {k: after[k] - self._before.get(k, 0.0) for k in after}
        out: dict[str, Any] = {}
        for service in (*self._services, "contacts"):
            batches = d.get(f"{service}.batches")
            if batches:
                out[f"{service}_batches"] = int(batches)
                out[f"{service}_events_per_batch"] = round(d[f"{service}.events"] / batches, 1)
                out[f"{service}_batch_ms_mean"] = round(1000 * d[f"{service}.batch_s"] / batches, 1)
        if d.get("contacts.posts"):
            out["contacts_posts"] = int(d["contacts.posts"])
            out["contacts_post_server_ms_mean"] = round(
                1000 * d["contacts.post_s"] / d["contacts.posts"], 1
            )
        return out


# --- /proc ---


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_kib(pid: int, keys: Sequence[str] = ("VmHWM", "VmRSS")) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process (or other `keys` of its
    /proc/<pid>/status, e.g. RssAnon, RssFile), in KiB."""
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])
    return out


def memory_mib(pids: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Peak (`hwm_mib`) and current (`rss_mib`) resident set of each live process, in MiB."""
    return {
        name: {k.replace("Vm", "").lower() + "_mib": round(v / 1024, 1) for k, v in mem.items()}
        for name, pid in pids.items()
        if (mem := memory_kib(pid))
    }


def machine_cpu_seconds() -> float | None:
    """CPU time every process of the machine used (all cores, /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    ticks = [int(f) for f in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLOCK_TICKS


class CpuMeter:
    """CPU seconds each process used between `start()` and `stop()`; also the whole
    machine's (`machine`), and what processes not measured used (`others`): the other
    work on a shared machine that the numbers competed with."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._before: dict[str, float | None] = {}
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()
        self._before = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._before["machine"] = machine_cpu_seconds()

    def stop(self) -> dict[str, dict[str, float]]:
        """Per process: CPU seconds used and that as a percentage of one core."""
        wall = max(time.perf_counter() - self._started, 1e-9)
        out = {}
        used_by = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        used_by["machine"] = machine_cpu_seconds()
        for name, after in used_by.items():
            before = self._before.get(name)
            if before is not None and after is not None:
                used = after - before
                out[name] = {"cpu_s": round(used, 2), "core_pct": round(100 * used / wall, 1)}
        if "machine" in out:
            ours = sum(v["cpu_s"] for k, v in out.items() if k != "machine")
            others = max(0.0, out["machine"]["cpu_s"] - ours)
            out["others"] = {"cpu_s": round(others, 2), "core_pct": round(100 * others / wall, 1)}
        return out


# Idle services still poll the broker (every 250 ms once quiet, CRM_FETCH_IDLE_WAIT_MS) and
# their outbox: 3-5% of a core each on these machines. Above this, a service is working.
IDLE_CORE_PCT = 15.0


async def wait_idle(pids: Mapping[str, int], within: float) -> float:
    """Until every process used less than IDLE_CORE_PCT of a core over one second (relays,
    consumers, rescoring done), at most `within` seconds; the seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < within:
        meter = CpuMeter(pids)
        meter.start()
        await asyncio.sleep(1.0)
        used = meter.stop()  # also holds the machine's and the others' CPU: not theirs
        if all(used.get(name, {}).get("core_pct", 0.0) < IDLE_CORE_PCT for name in pids):
            break
    return round(time.perf_counter() - started, 1)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def distribution_ms(seconds: Sequence[float], *, missing: int = 0) -> dict[str, Any]:
    """p50, p95, p99, mean and max of durations in seconds, in milliseconds.

    `missing` counts values never observed (timed out): they rank above every observed
    one, and a percentile that falls on them is None (unknown, beyond the timeout). The
    mean and max are of the observed values.
    """
    if not seconds and not missing:
        return {}
    ms = sorted(s * 1000 for s in seconds)
    ranked: list[float] = ms + [math.inf] * missing

    def pick(q: float) -> float | None:
        value = percentile(ranked, q)
        return round(value, 1) if math.isfinite(value) else None

    out: dict[str, Any] = {"p50": pick(50), "p95": pick(95), "p99": pick(99)}
    out["mean"] = round(sum(ms) / len(ms), 1) if ms else None
    out["max"] = round(ms[-1], 1) if ms else None
    if missing:
        out["missing"] = missing
    return out
