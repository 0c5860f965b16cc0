"""What every `crm` subcommand is: its options, its work, its exit status."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crm_shared.ops.config import OpsConfig

OK = 0
FAILURE = 1
USAGE = 2
INTERRUPTED = 130


class OpsError(Exception):
    """A command could not do its work; the message is for the operator."""

    code = FAILURE


class UsageError(OpsError):
    """The command was asked for something it cannot do as asked (exit status 2)."""

    code = USAGE


@dataclass(frozen=True)
class Command:
    """A subcommand: `arguments` declares its options, `run` does the work and returns the
    exit status (or raises OpsError). `description` is the long `--help` text."""

    name: str
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, OpsConfig], Awaitable[int]]
    # Ctrl-C is how `tail` is meant to end; for the others it is an interruption.
    interrupted_status: int = INTERRUPTED


def describe(error: BaseException) -> str:
    """An exception as a reader wants it: its kind and its message."""
    kind, message = type(error).__name__, str(error)
    if not message or message.startswith(kind):
        return message or kind
    return f"{kind}: {message}"
