"""`crm tail TOPIC`: print a topic's records as they come, without joining a consumer group
(partitions are assigned by hand), so it disturbs no service and starts at once."""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from crm_shared.messaging.kafka import decode_headers
from crm_shared.ops.command import OK, Command, OpsError, UsageError, describe
from crm_shared.ops.config import OpsConfig

START_TIMEOUT_S = 15.0
DLQ_HEADER = "crm-dlq-"
FIELDS = ("type", "subject", "id", "time")


@dataclass(frozen=True)
class Filters:
    key: str | None
    type_pattern: str | None

    def accept(self, record: ConsumerRecord[bytes, bytes], event: dict[str, Any] | None) -> bool:
        if self.key is not None and _text(record.key) != self.key:
            return False
        if self.type_pattern is None:
            return True
        kind = event.get("type") if event else None
        return isinstance(kind, str) and fnmatch.fnmatchcase(kind, self.type_pattern)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", metavar="TOPIC", help="topic name without the prefix")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the first record (default: only records that arrive from now on)",
    )
    parser.add_argument(
        "--count", type=_positive, metavar="N", help="stop after printing N records"
    )
    parser.add_argument("--key", metavar="K", help="only records with this key (customer id)")
    parser.add_argument(
        "--type",
        dest="type_pattern",
        metavar="T",
        help="only events of this type; * and ? match any text (e.g. 'crm.purchase.*')",
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object a line: the record and its event"
    )
    parser.add_argument(
        "--idle",
        type=float,
        metavar="SECONDS",
        help="stop when no record has arrived for this long (default: run until Ctrl-C)",
    )


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive whole number")
    return int(raw)


async def _run(args: argparse.Namespace, config: OpsConfig) -> int:
    topic = config.topic(args.topic)
    filters = Filters(args.key, args.type_pattern)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    try:
        await _assign(consumer, topic, config.bootstrap, from_beginning=args.from_beginning)
        await _follow(consumer, filters, args, topic)
    finally:
        await consumer.stop()
    return OK


async def _assign(
    consumer: AIOKafkaConsumer, topic: str, bootstrap: str, *, from_beginning: bool
) -> None:
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            await consumer.start()
            # Asked before assigning: fetching an unknown topic would make some brokers
            # (the embedded one among them) create it.
            known = await consumer.topics()
    except (TimeoutError, KafkaError, OSError) as error:
        raise OpsError(f"cannot reach Kafka at {bootstrap}: {describe(error)}") from error
    if topic not in known:
        similar = sorted(t for t in known if topic.rsplit(".", 1)[-1] in t)[:10]
        hint = f"; topics with a similar name: {', '.join(similar)}" if similar else ""
        raise UsageError(f"no topic {topic!r} on {bootstrap}{hint}")
    partitions = sorted(consumer.partitions_for_topic(topic) or ())
    consumer.assign([TopicPartition(topic, p) for p in partitions])
    if from_beginning:
        await consumer.seek_to_beginning()
    else:
        # The embedded broker reports the end of a partition's last batch, not of its last
        # record: a few earlier records may show first.
        await consumer.seek_to_end()


async def _follow(
    consumer: AIOKafkaConsumer, filters: Filters, args: argparse.Namespace, topic: str
) -> None:
    printed = [0]  # read in `finally`, so Ctrl-C still reports how many were printed
    try:
        await _print_records(consumer, filters, args, printed)
    finally:
        print(f"crm tail: {printed[0]} record(s) from {topic}", file=sys.stderr)


async def _print_records(
    consumer: AIOKafkaConsumer, filters: Filters, args: argparse.Namespace, printed: list[int]
) -> None:
    last_seen = time.monotonic()
    while args.count is None or printed[0] < args.count:
        batches = await consumer.getmany(timeout_ms=200)
        records = [r for batch in batches.values() for r in batch]
        if records:
            last_seen = time.monotonic()
        elif args.idle is not None and time.monotonic() - last_seen >= args.idle:
            return
        for record in records:
            event = _event(record.value)
            if not filters.accept(record, event):
                continue
            print(json_line(record, event) if args.json else line(record, event), flush=True)
            printed[0] += 1
            if args.count is not None and printed[0] >= args.count:
                return


def line(record: ConsumerRecord[bytes, bytes], event: dict[str, Any] | None) -> str:
    """`partition=.. offset=.. key=.. type=.. subject=.. id=.. time=..` and, on a
    dead-letter topic, why and where from."""
    parts = [f"partition={record.partition}", f"offset={record.offset}", f"key={_show(record.key)}"]
    if event is None:
        size = len(record.value or b"")
        parts.append(f"value=(not a CloudEvent, {size} bytes) {_show(record.value, limit=80)}")
    else:
        parts.extend(f"{name}={_show(event.get(name))}" for name in FIELDS)
    headers = decode_headers(record.headers)
    if "crm-dlq-reason" in headers:
        parts.append(f"dlq-reason={_quote(headers['crm-dlq-reason'])}")
        where = [headers.get(f"crm-dlq-{part}", "?") for part in ("topic", "partition", "offset")]
        parts.append(f"dlq-from={where[0]}/{where[1]}@{where[2]}")
    return " ".join(parts)


def json_line(record: ConsumerRecord[bytes, bytes], event: dict[str, Any] | None) -> str:
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": _text(record.key),
        "headers": decode_headers(record.headers),
    }
    if event is None:
        out["value"] = _text(record.value)
    else:
        out["event"] = event
    return json.dumps(out, ensure_ascii=False)


def _event(value: bytes | None) -> dict[str, Any] | None:
    try:
        decoded = json.loads(value or b"")
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) and "specversion" in decoded else None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def _show(value: object, *, limit: int = 200) -> str:
    if value is None:
        return "-"
    text = _text(value) if isinstance(value, bytes) else str(value)
    assert text is not None
    return _quote(text[:limit] + ("..." if len(text) > limit else ""))


def _quote(text: str) -> str:
    """Text as is, or JSON-quoted when it would not read as one word."""
    plain = text and not any(c.isspace() or c in "\"'=" for c in text)
    return text if plain else json.dumps(text, ensure_ascii=False)


COMMAND = Command(
    name="tail",
    help="print the records of a topic",
    description="Print a topic's records, one line each: partition, offset, key and the "
    "CloudEvent's type, subject, id and time; on a dead-letter topic (TOPIC.dlq) also "
    "why the record was rejected and where it came from. No consumer group is used, so "
    "nothing is committed and no service is disturbed. Ctrl-C stops.",
    arguments=_arguments,
    run=_run,
    interrupted_status=OK,
)
