"""`crm topics create`: every topic the services use, with its dead-letter twin."""

from __future__ import annotations

import argparse
import asyncio

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from crm_shared.messaging.topics import HEARTBEAT, MAIN_TOPICS, ensure_topics, with_dlq
from crm_shared.ops.command import OK, Command, OpsError, describe
from crm_shared.ops.config import OpsConfig, add_options
from crm_shared.ops.output import table

TOPICS: tuple[str, ...] = (*with_dlq(MAIN_TOPICS), HEARTBEAT)
TIMEOUT_S = 30.0


def _arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="topics_action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="create the missing topics",
        description=f"Create every topic of the services that does not exist yet: "
        f"{', '.join(TOPICS)} (each with the prefix). Existing topics are left as they "
        "are; one whose partition count differs from --partitions is pointed out, since "
        "a customer's events must stay on one partition.",
    )
    add_options(create, suppress=True)
    create.add_argument(
        "--partitions",
        type=_positive,
        metavar="N",
        help="partitions of each new topic (default: CRM_TOPIC_PARTITIONS, else 4)",
    )
    create.add_argument(
        "--replication",
        type=_positive,
        default=1,
        metavar="N",
        help="replication factor of each new topic (default 1; use 3 on a production cluster)",
    )
    create.add_argument(
        "--prefix",
        dest="topic_prefix",
        metavar="P",
        default=argparse.SUPPRESS,
        help="topic prefix of the environment (same as --topic-prefix)",
    )


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive whole number")
    return int(raw)


async def _run(args: argparse.Namespace, config: OpsConfig) -> int:
    partitions = args.partitions or config.topic_partitions
    names = [config.topic(name) for name in TOPICS]
    try:
        async with asyncio.timeout(TIMEOUT_S):
            created = await ensure_topics(
                config.bootstrap, names, partitions=partitions, replication=args.replication
            )
            counts = await partition_counts(config.bootstrap, names)
    except TimeoutError:
        late = f"Kafka at {config.bootstrap} did not answer within {TIMEOUT_S:.0f}s"
        raise OpsError(late) from None
    except (KafkaError, RuntimeError, OSError) as error:
        raise OpsError(
            f"cannot create the topics on {config.bootstrap}: {describe(error)}"
        ) from error
    print(table(["TOPIC", "STATE", "PARTITIONS"], _rows(names, created, counts, partitions)))
    existed = len(names) - len(created)
    print(f"{len(names)} topics on {config.bootstrap}: {len(created)} created, {existed} existed")
    return OK


def _rows(
    names: list[str], created: list[str], counts: dict[str, int], wanted: int
) -> list[list[object]]:
    rows: list[list[object]] = []
    for name in names:
        count = counts.get(name)
        note = "" if count in (None, wanted) else f"  (not {wanted})"
        rows.append([name, "created" if name in created else "exists", f"{count or '?'}{note}"])
    return rows


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    """How many partitions each of these (existing) topics has."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {
        str(topic["topic"]): len(topic["partitions"])
        for topic in described
        if not topic.get("error_code")
    }


COMMAND = Command(
    name="topics",
    help="create the topics of the services",
    description="Manage the Kafka topics of the services.",
    arguments=_arguments,
    run=_run,
)
