"""What every benchmark run records about itself, and how it writes its JSON result."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiokafka

RESULTS = Path(__file__).resolve().parent / "results"


_SECRET = re.compile("SECRET|PASSWORD|TOKEN|KEY", re.IGNORECASE)


def machine() -> dict[str, Any]:
    """CPUs, platform, versions and the git state the numbers belong to."""

    def git(*argv: str) -> str:
        try:
            out = subprocess.run(["git", *argv], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiokafka": aiokafka.__version__,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": len(git("status", "--porcelain").splitlines()),
        # The services started by a run inherit these (secrets left out).
        "crm_environment": {
            name: value
            for name, value in sorted(os.environ.items())
            if name.startswith("CRM_") and not _SECRET.search(name)
        },
    }


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options, JSON-ready."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def save(result: dict[str, Any], results_dir: Path, name: str, stamp: str) -> Path:
    """Write `<results_dir>/<name>-<stamp>.json` atomically; its path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path


def run_to_end(
    execute: Coroutine[Any, Any, dict[str, Any]],
    partial: Any,
    result: dict[str, Any],
    *,
    workdir: Path,
    keep_data: bool,
) -> dict[str, Any]:
    """Run a benchmark; on failure or Ctrl-C keep what it measured so far (`partial()`),
    and always remove its working directory unless asked to keep it."""
    try:
        result |= asyncio.run(execute)
    except (Exception, KeyboardInterrupt) as exc:
        print(f"benchmark aborted: {exc!r}; partial results follow", file=sys.stderr)
        result |= partial() | {"aborted": repr(exc)[:2000]}
    finally:
        result["finished_at"] = datetime.now(UTC).isoformat()
        if keep_data:
            print(f"databases and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result
