"""The command line every service has: `serve`, `migrate`, and the service's own commands."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from crm_shared.app import heap
from crm_shared.app.logging import configure_logging
from crm_shared.app.settings import ServiceSettings
from crm_shared.store.db import ensure_sqlite_directory
from crm_shared.store.migrations import upgrade_async


@dataclass(frozen=True)
class Command:
    """A subcommand of one service: `arguments` declares its options on the parser given,
    `run` gets the parsed arguments and the settings and returns the exit code."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, ServiceSettings], int]


def service_cli(
    argv: Sequence[str] | None,
    *,
    settings_type: type[ServiceSettings],
    create_app: Callable[[ServiceSettings], FastAPI],
    migrations: Path,
    extra_commands: Mapping[str, Command] | None = None,
) -> int:
    name = settings_type.service_name
    parser = argparse.ArgumentParser(
        prog=f"crm-{name}",
        description=f"The CRM {name} service. Configured by CRM_* environment variables "
        "(see the README): CRM_HTTP_HOST, CRM_HTTP_PORT, CRM_DATABASE_URL, "
        "CRM_KAFKA_BOOTSTRAP, ...",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API, consumers and outbox relay")
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.add_argument("--revision", default="head")
    extra = dict(extra_commands or {})
    for command_name, command in extra.items():
        command.arguments(commands.add_parser(command_name, help=command.help))
    args = parser.parse_args(argv)
    settings = settings_type()
    configure_logging(name, level=settings.log_level, json_logs=settings.log_json)
    if args.command in extra:
        return extra[args.command].run(args, settings)
    if args.command == "migrate":
        ensure_sqlite_directory(settings.database_url)
        asyncio.run(upgrade_async(migrations, settings.database_url, args.revision))
        return 0
    app = create_app(settings)
    heap.settle_after_startup(app, settings.gc_gen0_threshold)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )
    return 0
