"""`crm-lifecycle serve | migrate | rebuild | what-if POLICY.json`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from crm_shared.app.cli import Command, service_cli
from crm_shared.app.settings import ServiceSettings
from lifecycle.bootstrap import MIGRATIONS, build, create_app
from lifecycle.domain.policy import Policy
from lifecycle.handlers import replay
from lifecycle.settings import LifecycleSettings


def cli(argv: Sequence[str] | None = None) -> int:
    return service_cli(
        argv,
        settings_type=LifecycleSettings,
        create_app=create_app,  # type: ignore[arg-type]
        migrations=MIGRATIONS,
        extra_commands={"rebuild": REBUILD, "what-if": WHAT_IF},
    )


def _offline(
    settings: ServiceSettings, work: Callable[[Any, Any], Awaitable[dict[str, Any]]]
) -> int:
    """Run against the service's database without Kafka; print the result as JSON."""
    assert isinstance(settings, LifecycleSettings)
    runtime, lifecycle = build(settings)

    async def run() -> dict[str, Any]:
        await runtime.migrate()
        try:
            return await work(runtime.db, lifecycle)
        finally:
            await runtime.db.dispose()

    print(json.dumps(asyncio.run(run()), default=str, indent=2))
    return 0


def _rebuild(_args: argparse.Namespace, settings: ServiceSettings) -> int:
    return _offline(settings, replay.rebuild)


def _what_if(args: argparse.Namespace, settings: ServiceSettings) -> int:
    try:
        policy = Policy.model_validate(json.loads(args.policy.read_text()))
    except (OSError, ValueError) as exc:
        print(f"crm-lifecycle what-if: {args.policy}: {exc}", file=sys.stderr)
        return 2
    return _offline(settings, lambda db, lifecycle: replay.what_if(db, lifecycle, policy))


REBUILD = Command(
    help="drop the stage projection and rebuild it from the facts kept (publishes nothing)",
    arguments=lambda parser: None,
    run=_rebuild,
)


def _policy_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", type=Path, help="policy JSON file")


WHAT_IF = Command(
    help="evaluate another policy over the same history; writes and publishes nothing",
    arguments=_policy_argument,
    run=_what_if,
)


if __name__ == "__main__":
    sys.exit(cli())
