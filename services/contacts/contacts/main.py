"""`crm-contacts serve | migrate | import FILE`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from contacts.bootstrap import MIGRATIONS, create_app, utcnow, with_vault
from contacts.handlers.imports import CHUNK_ROWS, Importer, ImportFileError, ImportSummary
from contacts.handlers.records import ContactService
from contacts.settings import ContactsSettings
from contacts.store.tables import core
from crm_shared.app.cli import Command, service_cli
from crm_shared.app.runtime import Runtime
from crm_shared.app.settings import ServiceSettings

BAD_FILE = 2


def cli(argv: Sequence[str] | None = None) -> int:
    return service_cli(
        argv,
        settings_type=ContactsSettings,
        create_app=create_app,  # type: ignore[arg-type]
        migrations=MIGRATIONS,
        extra_commands={"import": IMPORT},
    )


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="UTF-8 CSV with a header row")
    parser.add_argument("--dry-run", action="store_true", help="validate and count; write nothing")
    parser.add_argument(
        "--chunk",
        type=_chunk_size,
        metavar="N",
        default=CHUNK_ROWS,
        help=f"rows per transaction, 1 to 10000 (default {CHUNK_ROWS})",
    )


def _chunk_size(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise argparse.ArgumentTypeError(f"{raw!r}: give a number of rows from 1 to 10000")
    return int(raw)


def _import(args: argparse.Namespace, settings: ServiceSettings) -> int:
    """Exit 0 when every row imported, 1 when some failed, 2 when the file cannot be."""
    assert isinstance(settings, ContactsSettings)
    if not args.file.is_file():
        print(f"crm-contacts import: {args.file}: no such file", file=sys.stderr)
        return BAD_FILE
    try:
        summary = asyncio.run(_run_import(settings, args.file, args.dry_run, args.chunk))
    except ImportFileError as exc:
        print(f"crm-contacts import: {args.file}: {exc.reason}", file=sys.stderr)
        return BAD_FILE
    print(json.dumps(summary.as_json(), indent=2))
    return 1 if summary.failed else 0


async def _run_import(
    settings: ContactsSettings, path: Path, dry_run: bool, chunk: int
) -> ImportSummary:
    runtime = Runtime(settings, tables=core, migrations=MIGRATIONS, topics=[])
    try:
        await runtime.migrate()
        contacts = ContactService(
            runtime.db,
            runtime.events,
            runtime.outbox,
            runtime.registry,
            utcnow,
            vault=with_vault(runtime, settings.erasure_secret),
        )
        return await Importer(contacts, chunk_rows=chunk).run(
            lambda: path.open(encoding="utf-8-sig", newline=""),
            dry_run=dry_run,
            actor="cli",
            on_progress=ProgressLine(sys.stderr),
        )
    finally:
        await runtime.db.dispose()


class ProgressLine:
    """A progress bar redrawn in place (carriage return) after every chunk."""

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        rate = done / max(time.monotonic() - self.started, 1e-6)
        bar = "#" * int(share * self.WIDTH)
        self.out.write(
            f"\r[{bar:<{self.WIDTH}}] {done:,}/{total:,} rows {share:4.0%}  {rate:,.0f} rows/s"
        )
        self.out.write("\n" if done >= total else "")
        self.out.flush()


IMPORT = Command(
    help="upsert contacts from a CSV file (the columns of POST /v1/imports)",
    arguments=_import_arguments,
    run=_import,
)


if __name__ == "__main__":
    sys.exit(cli())
