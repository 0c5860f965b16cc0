"""`crm rebuild SERVICE`: rebuild a service's derived state from what it has stored."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

from crm_shared.ops.api import Api
from crm_shared.ops.command import OK, Command, UsageError
from crm_shared.ops.config import SERVICES, OpsConfig
from crm_shared.ops.progress import Spinner


@dataclass(frozen=True)
class Rebuild:
    path: str
    scope: str
    what: str


REBUILDS: dict[str, Rebuild] = {
    "lifecycle": Rebuild(
        "/v1/admin/rebuild",
        "lifecycle:admin",
        "drops every stage and transition and replays each customer's stored facts under "
        "the current policy; publishes nothing",
    ),
    "scoring": Rebuild(
        "/v1/models/refit",
        "scores:admin",
        "fits new models on every customer, makes them active and rescores everyone; "
        "material score changes are published on crm.scores",
    ),
}
REFUSALS: dict[str, str] = {
    "contacts": "contacts is the system of record: there is nothing to rebuild it from. "
    "To feed the other services again, use `crm republish`.",
    "notifications": "notifications has no rebuild: its delivery log records what was sent, "
    "and replaying it could send messages twice. To bring its view of customers up to "
    "date, use `crm republish` (its inbox skips what it already applied).",
}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE", choices=SERVICES, help=" | ".join(SERVICES))


async def _run(args: argparse.Namespace, config: OpsConfig) -> int:
    service: str = args.service
    if service not in REBUILDS:
        raise UsageError(REFUSALS[service])
    rebuild = REBUILDS[service]
    print(f"{service}: {rebuild.what}")
    started = time.monotonic()
    # A rebuild takes as long as the history is long: no read timeout.
    async with Api(config, service, scope=rebuild.scope, read_timeout=None) as api:
        async with Spinner(f"rebuilding {service}"):
            result = await api.call("POST", rebuild.path)
    print(json.dumps(result, indent=2))
    print(f"{service} rebuilt in {time.monotonic() - started:.1f}s")
    return OK


COMMAND = Command(
    name="rebuild",
    help="rebuild a service's derived state (lifecycle, scoring)",
    description="Rebuild what a service derives from the events it stored. "
    f"lifecycle ({REBUILDS['lifecycle'].path}): {REBUILDS['lifecycle'].what}. "
    f"scoring ({REBUILDS['scoring'].path}): {REBUILDS['scoring'].what}. "
    "contacts and notifications cannot be rebuilt (the command says why). "
    "Needs the scope lifecycle:admin or scores:admin.",
    arguments=_arguments,
    run=_run,
)
