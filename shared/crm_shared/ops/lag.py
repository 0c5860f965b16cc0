"""`crm lag`: how far behind each consumer is, and what each outbox has yet to publish."""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx

from crm_shared.ops.command import FAILURE, OK, Command, OpsError
from crm_shared.ops.config import SERVICES, OpsConfig
from crm_shared.ops.metrics import Snapshot, scrape
from crm_shared.ops.output import table


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--service",
        dest="services",
        nargs="+",
        action="extend",
        choices=SERVICES,
        metavar="SERVICE",
        help=f"services to ask (default: all of {', '.join(SERVICES)})",
    )


async def _run(args: argparse.Namespace, config: OpsConfig) -> int:
    services = list(dict.fromkeys(args.services or SERVICES))
    async with httpx.AsyncClient(trust_env=False) as client:
        answers = await asyncio.gather(
            *(scrape(client, name, config.url(name)) for name in services),
            return_exceptions=True,
        )
    snapshots = [a for a in answers if isinstance(a, Snapshot)]
    print(lag_table(snapshots))
    print()
    print(outbox_table(snapshots))
    failed = [a for a in answers if isinstance(a, BaseException)]
    for error in failed:
        if not isinstance(error, OpsError):
            raise error
        print(f"crm lag: {error}", file=sys.stderr)
    return FAILURE if failed else OK


def lag_table(snapshots: list[Snapshot]) -> str:
    rows: list[list[object]] = [
        [s.service, lag.consumer, lag.topic, lag.partition, lag.lag]
        for s in snapshots
        for lag in s.lags
    ]
    quiet = [s.service for s in snapshots if not s.lags]
    text = table(["SERVICE", "CONSUMER", "TOPIC", "PARTITION", "LAG"], rows)
    if quiet:
        # The gauge is set after a consumer applies a batch from a partition.
        text += f"\n(no consumer of {', '.join(quiet)} has received a record yet)"
    return text


def outbox_table(snapshots: list[Snapshot]) -> str:
    rows = [
        [
            s.service,
            _or_dash(s.outbox_backlog),
            _or_dash(s.outbox_parked),
            _or_dash(s.published_position),
            s.published_total,
            s.relay_failures,
        ]
        for s in snapshots
    ]
    headers = [
        "SERVICE",
        "OUTBOX BACKLOG",
        "PARKED",
        "PUBLISHED UP TO ID",
        "PUBLISHED",
        "RELAY FAILURES",
    ]
    return table(headers, rows)


def _or_dash(value: int | None) -> object:
    return "-" if value is None else value


COMMAND = Command(
    name="lag",
    help="show consumer lag and outbox backlog of the services",
    description="Read each service's /metrics and show, per consumer, topic and partition, "
    "how many messages it is behind the partition's end (as last fetched), and each "
    "outbox's backlog (messages not yet published) and parked messages (too large to "
    "send: GET /v1/admin/outbox/parked lists them), both refreshed every few seconds. "
    "Exits 1 if a service does not answer. /metrics needs no token.",
    arguments=_arguments,
    run=_run,
)
