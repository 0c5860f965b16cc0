"""The latency phase: single POSTs at a steady rate, each until its customer's stage reads.

Each event is the first purchase of a fresh customer, so lifecycle makes it `new`. Two
measures:

- recorded, of every event: from sending the POST until lifecycle's `recorded_at` of the
  `new` transition (its clock when it applied the batch, just before the commit), read
  after the phase. It does not depend on polling;
- polled, of every `poll_every`-th event: from sending the POST until
  `GET /v1/customers/{id}/stage` first answers `new` (polled every `poll_interval`, so it
  overstates by up to one interval plus a GET).

A stage GET costs lifecycle CPU (0.3-1.5 ms each on these machines), and polling many
pending customers at a short interval can take the core lifecycle needs to apply events,
which slows it, which leaves more customers pending: a feedback loop. So only a sample of
the events is polled, and all polls share one rate limit (`max_poll_rate` GETs per second);
a poll waits its turn under it. The probe is load the phase does not ask for (a steady
rate of events): `throughput` polls every 25th event under 150 GETs/s, ~750 GETs in a
10-s phase. Polling every 5th under 400/s (~3,600 GETs) made the recorded latency itself
~30% longer (p50 73-76 against 53-54 ms, p99 163-181 against 118-128, two runs each).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.observe import distribution_ms
from bench.phases import SINGLE_CONTENT_TYPE, BenchError, Context, rate
from bench.rawhttp import RawHttp, RawHttpError
from bench.workload import customer_id, purchase

POST_GRACE_S = 20.0  # beyond the visibility timeout, for a POST stuck in an overloaded service
MAX_IN_FLIGHT = 500  # events whose measurement is under way; sending waits beyond that


@dataclass
class Sample:
    customer: str
    posted_at: float = 0.0  # wall clock (time.time), to compare with lifecycle's recorded_at
    ack: float | None = None
    visible: float | None = None
    recorded: float | None = None
    gets: list[float] = field(default_factory=list)
    error: str | None = None
    polled: bool = True  # False: POSTed only, its latency is the recorded one


class RateLimit:
    """At most `per_second` acquisitions a second, evenly spaced, first come first served."""

    def __init__(self, per_second: float) -> None:
        self._spacing = 1 / per_second
        self._next = time.perf_counter()

    async def acquire(self) -> None:
        now = time.perf_counter()
        at = max(now, self._next)
        self._next = at + self._spacing
        if at > now:
            await asyncio.sleep(at - now)


@dataclass
class Prober:
    contacts: RawHttp
    lifecycle: RawHttp
    polls: RateLimit
    poll_interval: float
    within: float

    async def measure(self, customer: str, *, poll: bool = True) -> Sample:
        """POST the customer's first purchase, then (if `poll`) poll its stage until `new`."""
        sample = Sample(customer, polled=poll)
        try:
            async with asyncio.timeout(self.within + POST_GRACE_S):
                await self._measure(sample)
        except TimeoutError:
            sample.error = f"POST not answered within {self.within + POST_GRACE_S}s"
        except (OSError, RawHttpError, BenchError) as exc:
            sample.error = repr(exc)[:200]
        return sample

    async def _measure(self, sample: Sample) -> None:
        body = json.dumps(purchase(sample.customer)).encode()
        sample.posted_at, started = time.time(), time.perf_counter()
        status, answer = await self.contacts.post("/v1/events", body, SINGLE_CONTENT_TYPE)
        if status != 202:
            raise BenchError(f"single POST: {status} {answer[:300]!r}")
        sample.ack = time.perf_counter() - started
        while sample.polled and time.perf_counter() - started < self.within:
            if await self._is_new(sample.customer, sample):
                sample.visible = time.perf_counter() - started
                return
            await asyncio.sleep(self.poll_interval)
        if sample.polled:
            sample.error = f"not visible within {self.within}s"

    async def _is_new(self, customer: str, sample: Sample) -> bool:
        await self.polls.acquire()
        asked = time.perf_counter()
        status, answer = await self.lifecycle.get(f"/v1/customers/{customer}/stage")
        sample.gets.append(time.perf_counter() - asked)
        return status == 200 and json.loads(answer)["stage"] == "new"


async def latency(
    ctx: Context,
    per_second: float,
    seconds: float,
    *,
    poll_interval: float,
    max_poll_rate: float,
    within: float,
    poll_every: int = 1,
) -> dict[str, Any]:
    """POST single purchases of fresh customers at a steady rate; time until each is `new`
    (recorded by lifecycle; every `poll_every`-th also polled until it reads `new`)."""
    server = ctx.server_stats()
    await server.start()
    authorization = ctx.contacts.headers.get("Authorization", "")
    async with (
        RawHttp(*ctx.contacts_addr, authorization=authorization) as contacts,
        RawHttp(*ctx.lifecycle_addr, authorization=authorization) as lifecycle,
    ):
        prober = Prober(contacts, lifecycle, RateLimit(max_poll_rate), poll_interval, within)
        meter = ctx.meter()
        # The load generator's own heap (the throughput phases' workloads) out of its
        # collector's way: a full collection of it paused this process for up to 160 ms,
        # and a POST stamped before such a pause counted it as the services' latency.
        gc.collect()
        gc.freeze()
        meter.start()
        try:
            samples, pacing = await paced(
                per_second,
                seconds,
                lambda i: prober.measure(
                    customer_id(f"bench-l-{ctx.run_id}", i), poll=i % poll_every == 0
                ),
            )
        finally:
            gc.unfreeze()
        cpu = meter.stop()
        servers = await server.stop()
        await recorded_times(lifecycle, samples)
    ctx.check_alive()
    return summary(samples, per_second, pacing) | {
        "poll_interval_ms": round(poll_interval * 1000, 1),
        "poll_every": poll_every,
        "max_poll_rate": max_poll_rate,
        "timeout_s": within,
        "server": servers,
        "cpu": cpu,
    }


async def paced(
    per_second: float, seconds: float, make: Callable[[int], Awaitable[Sample]]
) -> tuple[list[Sample], dict[str, Any]]:
    """Start `make(i)` at a steady rate for `seconds`; wait for all; how the pacing went.

    At most MAX_IN_FLIGHT run at once: past that, sending falls behind the schedule (an
    overloaded service shows as `max_send_lag_ms` and a lower achieved rate).
    """
    count = max(1, int(per_second * seconds))
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def run(i: int) -> Sample:
        try:
            return await make(i)
        finally:
            slots.release()

    begin = time.perf_counter() + 0.05
    tasks, behind = [], 0.0
    for i in range(count):
        delay = begin + i / per_second - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        behind = max(behind, time.perf_counter() - (begin + i / per_second))
        tasks.append(asyncio.ensure_future(run(i)))
    sent_over = time.perf_counter() - begin
    samples = await asyncio.gather(*tasks)
    return samples, {
        "achieved_send_rate": rate(count, sent_over),
        "max_send_lag_ms": round(behind * 1000, 1),
    }


async def recorded_times(lifecycle: RawHttp, samples: list[Sample]) -> None:
    """After the phase: when lifecycle recorded each `new` transition, minus the POST time."""
    pending = [s for s in samples if s.ack is not None]

    async def worker() -> None:
        while pending:
            sample = pending.pop()
            path = f"/v1/customers/{sample.customer}/transitions"
            status, body = await asyncio.wait_for(lifecycle.get(path), timeout=10)
            if status != 200:
                continue
            for transition in json.loads(body):
                if transition["to_stage"] == "new":
                    sample.recorded = _timestamp(transition["recorded_at"]) - sample.posted_at

    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(worker() for _ in range(4)))
    except (TimeoutError, OSError, RawHttpError):
        pass  # the ones not read stay unknown


def _timestamp(iso: str) -> float:
    at = datetime.fromisoformat(iso)
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def summary(samples: list[Sample], per_second: float, pacing: dict[str, Any]) -> dict[str, Any]:
    """Distributions in ms; events never seen count as slower than any that were."""
    errors = [s.error for s in samples if s.error]
    return {
        "events": len(samples),
        "target_rate": per_second,
        **pacing,
        "stage_polls": sum(len(s.gets) for s in samples),
        "polled": sum(s.polled for s in samples),
        "visible": sum(s.visible is not None for s in samples),
        "errors": len(errors),
        "first_errors": errors[:3],
        "post_to_stage_ms": _censored([s for s in samples if s.polled], "visible"),
        "post_to_recorded_ms": _censored(samples, "recorded"),
        "post_ack_ms": _censored(samples, "ack"),
        "stage_get_ms": distribution_ms([g for s in samples for g in s.gets]),
        "by_second": by_second(samples),
    }


def _censored(samples: list[Sample], attribute: str) -> dict[str, Any]:
    values = [getattr(s, attribute) for s in samples]
    return distribution_ms([v for v in values if v is not None], missing=values.count(None))


def by_second(samples: list[Sample]) -> list[dict[str, Any]]:
    """Per second of sending: how many, and the median latencies (ms) of those sent then."""
    if not samples:
        return []
    first = min(s.posted_at for s in samples)
    seconds: dict[int, list[Sample]] = {}
    for sample in samples:
        seconds.setdefault(int(sample.posted_at - first), []).append(sample)
    return [
        {
            "second": second,
            "sent": len(group),
            "ack_p50_ms": _censored(group, "ack").get("p50"),
            "recorded_p50_ms": _censored(group, "recorded").get("p50"),
            "recorded_max_ms": _censored(group, "recorded").get("max"),
        }
        for second, group in sorted(seconds.items())
    ]
