"""`crm import FILE`: upload a CSV of contacts to contacts' `POST /v1/imports`, streamed
with a progress bar, and report the rows that failed."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from crm_shared.ops.api import Api
from crm_shared.ops.command import FAILURE, OK, Command, UsageError
from crm_shared.ops.config import OpsConfig
from crm_shared.ops.progress import Bar, Spinner, human_bytes

CHUNK_BYTES = 64 * 1024
SCOPE = "contacts:write"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="UTF-8 CSV with a header row")
    parser.add_argument("--dry-run", action="store_true", help="validate and count; write nothing")
    parser.add_argument(
        "--errors",
        type=_count,
        default=10,
        metavar="N",
        help="failed rows to list (default 10; the rest are counted)",
    )
    parser.add_argument(
        "--actor", default="crm-cli", help="who imports, kept in the contacts' history"
    )


def _count(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number")
    return int(raw)


async def _run(args: argparse.Namespace, config: OpsConfig) -> int:
    path: Path = args.file
    size = await asyncio.to_thread(_size, path)
    spinner = Spinner("contacts is importing")
    started = time.monotonic()
    async with Api(config, "contacts", scope=SCOPE, read_timeout=None) as api:
        try:
            result = await api.call(
                "POST",
                "/v1/imports",
                params={"dry_run": "true" if args.dry_run else "false"},
                headers={
                    "Content-Type": "text/csv; charset=utf-8",
                    # Declared, so an oversized file is refused before it is sent.
                    "Content-Length": str(size),
                    "X-Actor": args.actor,
                },
                content=_upload(path, size, spinner),
            )
        finally:
            await spinner.stop()
    print(summary(result, shown=args.errors, seconds=time.monotonic() - started))
    return FAILURE if result["failed"] else OK


def _size(path: Path) -> int:
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    return path.stat().st_size


async def _upload(path: Path, size: int, spinner: Spinner) -> AsyncIterator[bytes]:
    """The file in chunks, drawing the bytes sent; then a spinner while contacts works."""
    bar = Bar(size, label=f"uploading {path.name}", fmt=human_bytes)
    sent = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk
            sent += len(chunk)
            bar.update(sent)
    bar.finish()
    spinner.start()


def summary(result: dict[str, Any], *, shown: int, seconds: float) -> str:
    lines = [
        ("dry run, nothing written: " if result["dry_run"] else "")
        + f"{result['rows']} row(s) in {seconds:.1f}s: {result['created']} created, "
        f"{result['updated']} updated, {result['unchanged']} unchanged, "
        f"{result['failed']} failed"
    ]
    errors = result.get("errors", [])
    lines.extend(f"  row {e['row']}: {e['error']}" for e in errors[:shown])
    hidden = max(0, len(errors) - shown) + int(result.get("more_errors", 0))
    if hidden > 0:
        lines.append(f"  ... and {hidden} more failed row(s)")
    return "\n".join(lines)


COMMAND = Command(
    name="import",
    help="import contacts from a CSV file",
    description="Upload a CSV to contacts (POST /v1/imports, scope contacts:write), which "
    "upserts a contact per row by email, phone or external id. The columns are those of "
    "the API (first_name, last_name, email, phone, country, tags, external_id, "
    "attr.<name>, ...). Prints the counts and the first failed rows; exits 1 if a row "
    "failed.",
    arguments=_arguments,
    run=_run,
)
