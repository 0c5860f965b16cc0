"""Sampling profiles of service processes with py-spy, summarised into hot spots.

py-spy is not a dependency of the workspace (it is not in the lock). Install it beside it,
e.g. `uv tool install py-spy` (puts it in ~/.local/bin) or `uv pip install py-spy` into
.venv (a later `uv sync` removes it again). `--nonblocking` keeps the targets running while
they are sampled, so the profile disturbs the numbers little, at some loss of accuracy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crm_shared.testing.broker import kill, spawn

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")
_PROJECT = ("crm_shared", "contacts", "lifecycle", "scoring", "notifications")


def find_py_spy() -> str | None:
    """py-spy next to this Python, on PATH, or where `uv tool install` puts it."""
    beside = Path(sys.executable).parent / "py-spy"
    candidates = [beside, shutil.which("py-spy"), Path.home() / ".local/bin/py-spy"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@dataclass
class Recording:
    name: str
    output: Path
    proc: subprocess.Popen[bytes]
    log: Path


def start_recording(
    py_spy: str,
    name: str,
    pid: int,
    out_dir: Path,
    *,
    rate: int,
    idle: bool = False,
    native: bool = False,
) -> Recording:
    """Sample `pid` until `stop_recording`; collapsed stacks go to `<out_dir>/<name>.txt`.

    `idle` keeps the samples of threads that wait (on a lock, a socket, a sleep), to see
    where time goes that is not CPU. `native` adds C frames (SQLite, uvloop, pydantic-core);
    it has to pause the process for each sample, so it disturbs the timing more.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    output, log = out_dir / f"{name}.txt", out_dir / f"{name}.py-spy.log"
    output.unlink(missing_ok=True)  # a file left by an earlier run must not pass for this one
    argv = [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    argv += ["--full-filenames", "--threads", "--duration", "3600"]
    argv += ["--native"] if native else ["--nonblocking"]
    argv += ["--output", str(output), *(["--idle"] if idle else [])]
    with log.open("wb") as stream:
        proc = spawn(argv, log=stream)
    return Recording(name, output, proc, log)


def stop_recording(recording: Recording, within: float = 20.0) -> Path | None:
    """Ask py-spy to write its profile (SIGINT, as Ctrl-C); the file, if it wrote one."""
    proc = recording.proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(within)
        except subprocess.TimeoutExpired:
            kill(proc)
    return recording.output if recording.output.exists() else None


def start_profiles(
    phase: str,
    pids: Mapping[str, int],
    out_dir: Path | None,
    *,
    rate: int,
    idle: bool = False,
    native: bool = False,
) -> list[Recording]:
    """Sample each of `pids` (name -> pid) as `<phase>-<name>`; none if py-spy is missing.

    `out_dir` None: a fresh temporary directory (kept, so the stacks can be looked at).
    """
    py_spy = find_py_spy()
    if py_spy is None:
        print(
            "profile: py-spy not found; `uv tool install py-spy` or `uv pip install py-spy`",
            file=sys.stderr,
        )
        return []
    out = out_dir or Path(tempfile.mkdtemp(prefix="crm-bench-profile-"))
    return [
        start_recording(py_spy, f"{phase}-{name}", pid, out, rate=rate, idle=idle, native=native)
        for name, pid in pids.items()
    ]


def stop_profiles(recordings: list[Recording]) -> dict[str, Any]:
    """Stop every recording; per process its file and hot spots, or py-spy's error."""
    out: dict[str, Any] = {}
    for recording in recordings:
        path = stop_recording(recording)
        if path is None:
            out[recording.name] = {"error": recording.log.read_text()[-500:]}
        else:
            out[recording.name] = {"file": str(path), **summarize(path)}
    return out


# --- summary ---


def parse_frame(frame: str) -> tuple[str, str]:
    """(`function (short/file.py)`, package) of one py-spy frame `func (path:line)`."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, "other"
    path = match["file"]
    short, package = _shorten(path)
    return f"{match['func']} ({short})", package


def _shorten(path: str) -> tuple[str, str]:
    if "site-packages/" in path:
        short = path.split("site-packages/", 1)[1]
        return short, short.split("/", 1)[0].removesuffix(".py")
    for project in _PROJECT:
        marker = f"/{project}/"
        if marker in path:
            short = project + "/" + path.rsplit(marker, 1)[1]
            return short, project
    if "/lib/python3" in path:
        short = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return short, "stdlib:" + short.split("/", 1)[0].removesuffix(".py")
    return path, "other"


def read_stacks(path: Path) -> Iterable[tuple[list[str], int]]:
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def summarize(path: Path, *, top: int = 15) -> dict[str, Any]:
    """Shares of samples: self time by function and by package, inclusive by function.

    `roots` gives the outermost frame of the stacks: SQLAlchemy's async bridge runs each
    statement's sync part in a greenlet, whose stack starts at `Connection.execute` and does
    not show which query called it; coroutines resumed by uvloop's C code start mid-stack.
    """
    self_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    incl_project: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    roots: Counter[str] = Counter()
    total = 0
    for frames, count in read_stacks(path):
        if frames and frames[0].startswith(("thread (", "process ")):
            threads[frames[0]] += count
            frames = frames[1:]
        if not frames:
            continue
        total += count
        parsed = [parse_frame(f) for f in frames]
        roots[parsed[0][0]] += count
        name, package = parsed[-1]
        self_fn[name] += count
        self_pkg[package] += count
        for seen in {n for n, _ in parsed}:
            incl_fn[seen] += count
        for seen in {n for n, p in parsed if p in _PROJECT}:
            incl_project[seen] += count

    def shares(counter: Counter[str], n: int = top) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)] if total else []

    return {
        "samples": total,
        "threads": shares(threads, 8),
        "roots": shares(roots, 8),
        "self_by_package": shares(self_pkg),
        "self_by_function": shares(self_fn),
        "inclusive_by_function": shares(incl_fn, top + 10),
        "inclusive_project_functions": shares(incl_project, top + 10),
    }
