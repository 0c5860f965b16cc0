"""How long the scoring service's customer-value fits take.

Two populations, each fitted `--repeats` times (the fastest run is the headline):

- the CDNOW master (23,570 customers), summarised over its whole period 1997-01-01 ..
  1998-06-30 in weeks (x = repeat purchase days, t_x, T), BG/NBD and Gamma-Gamma (on the
  mean value of each repeat buyer's repeat purchase days);
- `--customers` (default 1,000,000) customers drawn from the BG/NBD with the published CDNOW
  parameters, first purchases spread over a quarter and observed to 78 weeks, purchase times
  cut to whole days as real purchase dates are (which is what lets the fit merge rows).

A fit's time includes checking and merging the rows. Prints a table and writes JSON to
`bench/results/scoring-fit-<UTC timestamp>.json`.

    .venv/bin/python -m bench.scoring_fit [--customers N] [--repeats R] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

# Before numpy and scipy load their OpenBLAS: its worker threads made L-BFGS-B's tiny
# linear algebra 2-10x slower, and erratic, on a busy 2-core machine (the main thread
# spins waiting for workers that get no core). Set it in the environment to compare.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import scipy

from scoring.domain import bgnbd, gamma_gamma
from scoring.domain.clv import fit_summary

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results"
MASTER = (REPO_ROOT / "../shared/data/cdnow/CDNOW_master.txt").resolve()
MASTER_END = date(1998, 6, 30)
CDNOW = bgnbd.BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)  # FHL 2005, weeks
COHORT_DAYS = 90  # first purchases over a quarter, as the CDNOW cohort's
OBSERVED_DAYS = 546  # 78 weeks
Fitted = TypeVar("Fitted")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=1_000_000, help="simulated customers")
    p.add_argument("--repeats", type=int, default=3, help="fits per population")
    p.add_argument("--seed", type=int, default=20050101, help="seed of the simulation")
    p.add_argument("--master", type=Path, default=MASTER)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--no-save", action="store_true", help="print only")
    return p.parse_args(argv)


def master_summary(path: Path) -> dict[str, np.ndarray]:
    """x, t_x, T (weeks) and m_x (mean value of the repeat purchase days) per customer."""
    days: dict[str, dict[date, float]] = {}
    for line in path.read_text().splitlines()[1:]:
        if fields := line.split():
            customer, yyyymmdd, _cds, dollars = fields
            day = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
            spend = days.setdefault(customer, {})
            spend[day] = spend.get(day, 0.0) + float(dollars)
    rows = [_customer(spend) for spend in days.values()]
    x, t_x, T, m_x = (np.array(column) for column in zip(*rows, strict=True))
    return {"x": x, "t_x": t_x, "T": T, "m_x": m_x}


def _customer(spend: dict[date, float]) -> tuple[float, float, float, float]:
    ordered = sorted(spend)
    first, last, x = ordered[0], ordered[-1], len(ordered) - 1
    repeat_mean = sum(spend[d] for d in ordered[1:]) / x if x else 0.0
    return x, (last - first).days / 7, (MASTER_END - first).days / 7, repeat_mean


def simulated(customers: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    T = (OBSERVED_DAYS - rng.integers(0, COHORT_DAYS, customers)) / 7
    x, t_x = bgnbd.simulate(CDNOW, T, rng)
    return {"x": x, "t_x": np.floor(t_x * 7) / 7, "T": T}


def timed(fit: Callable[[], Fitted], repeats: int) -> tuple[Fitted, list[float]]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fit()
        seconds.append(time.perf_counter() - started)
    return result, seconds


def bench_master(path: Path, repeats: int) -> dict[str, Any]:
    data = master_summary(path)
    x, t_x, T, m_x = data["x"], data["t_x"], data["T"], data["m_x"]
    transactions, bg_seconds = timed(lambda: bgnbd.fit(x, t_x, T), repeats)
    # A few repeat buyers only ever got $0 orders after their first; the Gamma-Gamma model
    # has no room for zero spend, so they sit out of that fit.
    paid = m_x > 0
    spend, gg_seconds = timed(lambda: gamma_gamma.fit(x[paid], m_x[paid]), repeats)
    summary = fit_summary(
        transactions, spend, transactions_seconds=min(bg_seconds), spend_seconds=min(gg_seconds)
    )
    return {
        "customers": int(x.size),
        "distinct_rows": int(bgnbd.merged(bgnbd.checked_population(x, t_x, T)).x.size),
        "bgnbd_seconds": bg_seconds,
        "gamma_gamma_seconds": gg_seconds,
        "repeat_buyers_without_spend": int(((x > 0) & ~paid).sum()),
        "summary": summary,
    }


def bench_simulated(customers: int, seed: int, repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    data = simulated(customers, seed)
    simulate_seconds = time.perf_counter() - started
    x, t_x, T = data["x"], data["t_x"], data["T"]
    fitted, seconds = timed(lambda: bgnbd.fit(x, t_x, T), repeats)
    return {
        "customers": customers,
        "seed": seed,
        "distinct_rows": int(bgnbd.merged(bgnbd.checked_population(x, t_x, T)).x.size),
        "simulate_seconds": simulate_seconds,
        "bgnbd_seconds": seconds,
        "unmerged_seconds": timed(lambda: bgnbd.fit(x, t_x, T, merge=False), 1)[1],
        "true": {"r": CDNOW.r, "alpha": CDNOW.alpha, "a": CDNOW.a, "b": CDNOW.b},
        "fitted": {"r": fitted.r, "alpha": fitted.alpha, "a": fitted.a, "b": fitted.b},
        "log_likelihood": fitted.log_likelihood,
    }


def machine() -> dict[str, Any]:
    def git(*argv: str) -> str:
        try:
            out = subprocess.run(["git", *argv], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "openblas_num_threads": os.environ["OPENBLAS_NUM_THREADS"],
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": len(git("status", "--porcelain").splitlines()),
    }


def print_report(result: dict[str, Any]) -> None:
    master, sim = result["cdnow_master"], result["simulated"]
    bg, gg = master["summary"]["bgnbd"], master["summary"]["gamma_gamma"]
    m, n = master, sim["customers"]
    fits = [
        ("CDNOW master, BG/NBD", bg["customers"], m["distinct_rows"], m["bgnbd_seconds"]),
        ("CDNOW master, Gamma-Gamma", gg["customers"], gg["customers"], m["gamma_gamma_seconds"]),
        ("simulated, BG/NBD", n, sim["distinct_rows"], sim["bgnbd_seconds"]),
        ("simulated, BG/NBD, unmerged", n, n, sim["unmerged_seconds"]),
    ]
    print(f"{'fit':<30}{'customers':>11}{'rows':>11}{'seconds (min)':>15}{'all runs':>24}")
    for name, customers, rows, seconds in fits:
        runs = " ".join(f"{s:.3f}" for s in seconds)
        print(f"{name:<30}{customers:>11,}{rows:>11,}{min(seconds):>15.3f}{runs:>24}")
    print(
        f"\nCDNOW master (weeks): r={bg['r']:.3f} alpha={bg['alpha']:.3f} a={bg['a']:.3f} "
        f"b={bg['b']:.3f} LL={bg['log_likelihood']:.1f}; p={gg['p']:.2f} q={gg['q']:.2f} "
        f"gamma={gg['gamma']:.2f} on {gg['customers']:,} repeat buyers"
    )
    fitted = " ".join(f"{k}={v:.3f}" for k, v in sim["fitted"].items())
    print(f"simulated: fitted {fitted} (drawn with r=0.243 alpha=4.414 a=0.793 b=2.426)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "benchmark": "scoring-fit",
        "started_at": started.isoformat(),
        "command": " ".join(["python -m bench.scoring_fit", *sys.argv[1:]]),
        "machine": machine(),
        "cdnow_master": bench_master(args.master, args.repeats),
        "simulated": bench_simulated(args.customers, args.seed, args.repeats),
    }
    result["finished_at"] = datetime.now(UTC).isoformat()
    print_report(result)
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"scoring-fit-{started:%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
