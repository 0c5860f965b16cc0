"""Closed-loop HTTP load: N keep-alive connections, each sending its next GET as soon as the
previous one is answered, for a fixed time.

The client is `bench.rawhttp.RawHttp` (about 60 us of CPU per request on these machines,
against ~1 ms for httpx): on 2 shared cores the load generator must not be what limits
the server. Requests answered during the warm-up are not counted; the measured window
starts after it, so connections are open and the server's caches are warm.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.observe import distribution_ms
from bench.rawhttp import RawHttp, RawHttpError

ERROR_PAUSE_S = 0.01  # after a failed request, so a refusing server is not spun on


@dataclass
class Tally:
    """What the measured window saw: latencies of 200s, other statuses, failures."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None

    def error(self, what: str) -> None:
        self.first_error = self.first_error or what[:300]


async def drive(
    client: RawHttp,
    paths: Sequence[str],
    *,
    connections: int,
    seconds: float,
    warmup: float,
    seed: int = 0,
    on_measure: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """GET random `paths` over `connections` connections for `warmup + seconds`; requests/s,
    latency percentiles (of successful requests) and errors of the last `seconds`.

    `on_measure` is called when the measured window opens (to start CPU meters, profiles).
    """
    rng = random.Random(seed)
    tally = Tally()
    started = time.perf_counter()
    opens, ends = started + warmup, started + warmup + seconds

    async def connection() -> None:
        while (now := time.perf_counter()) < ends:
            path = rng.choice(paths)
            try:
                status, body = await client.get(path)
            except (OSError, RawHttpError, asyncio.IncompleteReadError) as exc:
                if now >= opens:
                    tally.failures[type(exc).__name__] += 1
                    tally.error(repr(exc))
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            done = time.perf_counter()
            if now < opens:
                continue
            tally.statuses[status] += 1
            if status == 200:
                tally.latencies.append(done - now)
            else:
                tally.error(f"{status} {path}: {body[:200]!r}")

    async def open_window() -> None:
        await asyncio.sleep(max(0.0, opens - time.perf_counter()))
        on_measure()

    await asyncio.gather(open_window(), *(connection() for _ in range(connections)))
    return summary(tally, seconds)


def summary(tally: Tally, seconds: float) -> dict[str, Any]:
    ok = len(tally.latencies)
    errors = sum(tally.statuses.values()) - ok + sum(tally.failures.values())
    return {
        "requests": ok + errors,
        "ok": ok,
        "seconds": seconds,
        "rate": round(ok / seconds, 1),
        "latency_ms": distribution_ms(tally.latencies),
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "failures": dict(tally.failures),
        "first_error": tally.first_error,
    }
