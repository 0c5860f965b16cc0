"""`crm`: the operators' command line.

Exit status: 0 done, 1 the work failed (a service refused or did not answer, rows failed),
2 the command was used wrongly (bad option, unknown topic, nothing to rebuild, no token),
130 interrupted (except `tail`, which Ctrl-C ends normally).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from crm_shared.ops import imports, lag, rebuild, republish, tail, topics
from crm_shared.ops.command import Command, OpsError
from crm_shared.ops.config import add_options, resolve

COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        topics.COMMAND,
        lag.COMMAND,
        tail.COMMAND,
        rebuild.COMMAND,
        republish.COMMAND,
        imports.COMMAND,
    )
}

EPILOG = """\
environment variables (options win over them):
  CRM_CONTACTS_URL ... CRM_NOTIFICATIONS_URL   base URLs (default http://127.0.0.1:8001..8004)
  CRM_KAFKA_BOOTSTRAP   Kafka bootstrap servers (default 127.0.0.1:9092)
  CRM_TOPIC_PREFIX      prefix of every topic name (several environments on one Kafka)
  CRM_TOPIC_PARTITIONS  partitions of topics created by `crm topics create` (default 4)
  CRM_TOKEN             bearer token; else the file $CRM_DATA_DIR/dev-token (default
                        var/dev-token) that `make run` writes

exit status: 0 done, 1 failed, 2 wrong usage, 130 interrupted.
`crm COMMAND --help` describes a command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm",
        description="Operate the CRM services: topics, consumer lag, tailing a topic, "
        "rebuilds, re-publishing and CSV imports.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.description)
        add_options(sub, suppress=True)
        command.arguments(sub)
    return parser


async def run(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Parse and run a command; the exit status (also for `--help` and usage errors)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 2
    return await execute(args, os.environ if env is None else env)


async def execute(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    command = COMMANDS[args.command]
    try:
        config = resolve(args, env, Path.cwd())
        return await command.run(args, config)
    except OpsError as error:
        print(f"crm {command.name}: {error}", file=sys.stderr)
        return error.code


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # The Kafka client logs each failed connection attempt; the commands say what failed.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        status = asyncio.run(execute(args, os.environ))
    except KeyboardInterrupt:
        status = COMMANDS[args.command].interrupted_status
    except BrokenPipeError:
        # The reader went away (`crm tail ... | head`): that ends the output, not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)
