"""What a transaction and a statement cost on the embedded database, in CPU.

A fresh SQLite file with one table of `--rows` rows; each measure runs `--count` times in
this process (`time.thread_time`: the event loop's thread, not SQLite's checkpointer), and
the median of `--rounds` rounds is printed in microseconds per operation:

- an empty write transaction (`Database.transaction`) and an empty read (`Database.read`);
- a select by key, in a write transaction, through `AsyncConnection.execute`;
- the same select on the driver's own cursor (what SQLite itself takes);
- a single-statement read (`Database.fetch_one`).

Consumers pay the first per batch and the second per statement, relays and HTTP reads
the read, so these are the fixed costs behind small batches. Run it on two versions of
the code (a `git worktree` of the other one, with `PYTHONPATH` set to its source
folders) to compare them.

    .venv/bin/python -m bench.transactions [--count 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, bindparam, select
from sqlalchemy import Table as SqlTable

from crm_shared.store.db import Database

metadata = MetaData()
items = SqlTable("items", metadata, Column("id", String, primary_key=True), Column("n", Integer))
BY_ID = select(items.c.n).where(items.c.id == bindparam("id"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=3000, help="operations per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the median is printed")
    p.add_argument("--rows", type=int, default=10_000, help="rows in the table")
    return p.parse_args(argv)


async def _per_operation(count: int, operation: Callable[[int], Awaitable[None]]) -> float:
    started = time.thread_time()
    for i in range(count):
        await operation(i)
    return (time.thread_time() - started) / count * 1e6


async def _statements(db: Database, keys: list[str], count: int) -> dict[str, float]:
    """A select by key in one write transaction, through SQLAlchemy and on the cursor."""
    async with db.transaction() as conn:

        async def through_sqlalchemy(i: int) -> None:
            (await conn.execute(BY_ID, {"id": keys[i % len(keys)]})).all()

        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None

        async def on_the_cursor(i: int) -> None:
            cursor = raw.cursor()
            cursor.execute("SELECT n FROM items WHERE id = ?", (keys[i % len(keys)],))
            cursor.fetchall()

        return {
            "select by key, in a transaction": await _per_operation(count, through_sqlalchemy),
            "the same on the driver's cursor": await _per_operation(count, on_the_cursor),
        }


async def run(args: argparse.Namespace, directory: Path) -> dict[str, list[float]]:
    db = Database(f"sqlite:///{directory / 'bench.sqlite'}")
    keys = [f"key-{i}" for i in range(args.rows)]
    async with db.transaction() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(items.insert(), [{"id": k, "n": i} for i, k in enumerate(keys)])

    async def empty_write(_: int) -> None:
        async with db.transaction():
            pass

    async def empty_read(_: int) -> None:
        async with db.read():
            pass

    async def fetch_one(i: int) -> None:
        await db.fetch_one(BY_ID, {"id": keys[i % args.rows]})

    found: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            measures = {
                "empty write transaction": await _per_operation(args.count, empty_write),
                "empty read": await _per_operation(args.count, empty_read),
            }
            measures.update(await _statements(db, keys, args.count))
            measures["fetch_one by key"] = await _per_operation(args.count, fetch_one)
            for name, value in measures.items():
                found.setdefault(name, []).append(value)
    finally:
        await db.dispose()
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crm-bench-tx-") as directory:
        found = asyncio.run(run(args, Path(directory)))
    print(f"SQLite, {args.count:,} operations x {args.rounds} rounds, us of CPU each (median)")
    for name, values in found.items():
        rounds = " / ".join(f"{v:.1f}" for v in values)
        print(f"  {name:34s} {statistics.median(values):8.1f}   ({rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
