"""What the embedded broker (tansu, memory storage) costs per request as a topic grows.

One consumer fetches at the head of a topic (10 ms fetch wait, as the bench's services
do) while a producer sends one small record per fetch, for `--seconds`; the broker's CPU
is read from /proc. Run first on an empty topic, then with `--behind` records written
before it. With Apache Kafka a fetch at the head does not depend on what lies behind it;
on tansu it does, which is why `make bench`'s latency phase, run after 200,000 events have
gone through the throughput phases, sees the broker take about twice the CPU it takes on a
fresh one.

    .venv/bin/python -m bench.broker_growth [--behind 300000] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from crm_shared.testing.broker import Broker

TOPIC = "growth"
RECORD = b"x" * 340  # about a published event's size


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(behind: int, seconds: float) -> dict[str, float]:
    async with Broker() as broker:
        assert broker.pid is not None
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1)
        await producer.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False
        )
        try:
            for _ in range(0, behind, 1000):
                sent = [await producer.send(TOPIC, RECORD, key=b"%d" % i) for i in range(1000)]
                await asyncio.gather(*sent)
            await producer.send_and_wait(TOPIC, RECORD, key=b"first")
            await consumer.start()
            partitions = consumer.partitions_for_topic(TOPIC) or {0}
            consumer.assign([TopicPartition(TOPIC, p) for p in partitions])
            await consumer.seek_to_end()
            started, cpu = time.monotonic(), _cpu_seconds(broker.pid)
            requests = 0
            while time.monotonic() - started < seconds:
                await producer.send(TOPIC, RECORD, key=b"k")
                await consumer.getmany(timeout_ms=10)
                requests += 1
            elapsed = time.monotonic() - started
            return {
                "behind": behind,
                "broker_core_pct": 100 * (_cpu_seconds(broker.pid) - cpu) / elapsed,
                "fetches_per_s": requests / elapsed,
            }
        finally:
            await consumer.stop()
            await producer.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--behind", type=int, default=300_000, help="records written before")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    for _ in range(args.rounds):
        for behind in (0, args.behind):
            result = asyncio.run(measure(behind, args.seconds))
            print(
                f"{result['behind']:>9,} records behind the head: broker "
                f"{result['broker_core_pct']:4.1f}% of a core at "
                f"{result['fetches_per_s']:.0f} fetches and produces a second"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
