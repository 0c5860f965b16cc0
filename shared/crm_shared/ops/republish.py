"""`crm republish`: publish a service's outbox again (contacts' canonical events by default)
and follow the relay until it has sent it all (for a service rebuilt from an empty database,
a new consumer, or messages parked before a size limit was raised)."""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from crm_shared.ops.api import Api
from crm_shared.ops.command import OK, Command, OpsError
from crm_shared.ops.config import SERVICES, OpsConfig
from crm_shared.ops.metrics import Snapshot, scrape
from crm_shared.ops.progress import Bar

POLL_S = 0.25


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--service",
        choices=SERVICES,
        default="contacts",
        help="whose outbox (default contacts: the canonical events every other service reads)",
    )
    parser.add_argument(
        "--from-id",
        type=_positive,
        default=1,
        metavar="N",
        help="first outbox message id to publish again (default 1: everything)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up following after this long (default 600; the relay goes on regardless)",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="ask for the re-publish and return at once"
    )


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive whole number")
    return int(raw)


async def _run(args: argparse.Namespace, config: OpsConfig) -> int:
    service = args.service
    url = config.url(service)
    async with (
        httpx.AsyncClient(trust_env=False) as metrics,
        Api(config, service, scope="admin") as api,
    ):
        # Read before asking, so every message the relay sends from now on is counted.
        before = await scrape(metrics, service, url)
        answer = await api.call("POST", "/v1/admin/republish", json={"from_id": args.from_id})
        total = int(answer["republished"])
        print(
            f"{service}: {total} message(s) from outbox id {args.from_id} to "
            f"{answer['high_water']} marked to be published again"
        )
        if total == 0 or args.no_wait:
            return OK
        started = time.monotonic()
        after = await follow(metrics, service, url, before, total, within=args.timeout)
    print(
        f"published {total} message(s) again in {time.monotonic() - started:.1f}s; "
        f"outbox backlog {after.outbox_backlog} (the gauge is refreshed every few seconds)"
    )
    return OK


async def follow(
    client: httpx.AsyncClient,
    service: str,
    url: str,
    before: Snapshot,
    total: int,
    *,
    within: float,
) -> Snapshot:
    """Poll /metrics with a progress bar until the relay has published `total` messages
    more than `before` (or parked them again); OpsError on timeout or if the service
    restarted meanwhile."""
    bar = Bar(total, label="republishing", unit=" msg")
    deadline = time.monotonic() + within
    while True:
        now = await scrape(client, service, url)
        sent = now.published_total - before.published_total + now.parked_total - before.parked_total
        if sent < 0:
            bar.finish()
            raise OpsError(f"{service} restarted while being followed; its relay goes on")
        note = _note(before, now)
        if sent >= total:
            bar.update(total)
            bar.finish(note)
            return now
        bar.update(sent, note)
        if time.monotonic() >= deadline:
            bar.finish(note)
            raise OpsError(
                f"{sent} of {total} published within {within:.0f}s; the relay goes on "
                f"(`crm lag --service {service}` shows its backlog)"
            )
        await asyncio.sleep(POLL_S)


def _note(before: Snapshot, now: Snapshot) -> str:
    note = f"backlog {now.outbox_backlog}"
    parked = now.parked_total - before.parked_total
    if parked > 0:
        note += f", {parked} parked again (too large: GET /v1/admin/outbox/parked)"
    failures = now.relay_failures - before.relay_failures
    if failures > 0:
        note += f", {failures} failed publish round(s): is Kafka reachable?"
    return note


COMMAND = Command(
    name="republish",
    help="publish a service's outbox again and follow until sent",
    description="Mark a service's outbox messages (contacts' unless --service) from "
    "--from-id on as unpublished, parked ones too (POST /v1/admin/republish, scope admin), "
    "then follow the service's /metrics (crm_events_published_total, "
    "crm_relay_parked_total, crm_outbox_backlog) with a progress bar until the relay has "
    "sent them all. Consumers' inboxes skip what they had already applied.",
    arguments=_arguments,
    run=_run,
)
