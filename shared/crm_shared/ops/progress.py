"""Progress on stderr for long work: a bar or a spinner redrawn in place on a terminal;
elsewhere (a log file, CI, a pipe) a plain line now and then, so logs stay readable."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

CLEAR_LINE = "\x1b[K"
REDRAW_S = 0.1
PLAIN_EVERY_S = 5.0


def is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def count(value: float) -> str:
    return f"{value:,.0f}"


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Bar:
    """Progress towards a known total."""

    WIDTH = 30

    def __init__(
        self,
        total: int,
        *,
        label: str,
        unit: str = "",
        fmt: Callable[[float], str] = count,
        out: TextIO | None = None,
        plain_every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.fmt = fmt
        self.out = out or sys.stderr
        self.tty = is_tty(self.out)
        self.plain_every_s = plain_every_s
        self.started = time.monotonic()
        # Off a terminal the first line waits a period: short work prints only its result.
        self._drawn_at = float("-inf") if self.tty else self.started
        self._done = 0

    def update(self, done: int, note: str = "") -> None:
        self._done = done
        now = time.monotonic()
        if now - self._drawn_at >= (REDRAW_S if self.tty else self.plain_every_s):
            self._drawn_at = now
            self._draw(note, final=False)

    def finish(self, note: str = "") -> None:
        self._draw(note, final=True)

    def line(self, note: str = "") -> str:
        done, total = self._done, self.total
        share = min(done / total, 1.0) if total else 1.0
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        bar = "#" * int(share * self.WIDTH)
        text = (
            f"{self.label} [{bar:<{self.WIDTH}}] {self.fmt(done)}/{self.fmt(total)}{self.unit} "
            f"{share:4.0%}  {self.fmt(rate)}{self.unit}/s"
        )
        if 0 < done < total:
            text += f"  ~{(total - done) / rate:,.0f}s left"
        return f"{text}  {note}" if note else text

    def _draw(self, note: str, *, final: bool) -> None:
        if self.tty:
            self.out.write(f"\r{self.line(note)}{CLEAR_LINE}" + ("\n" if final else ""))
        else:
            self.out.write(self.line(note) + "\n")
        self.out.flush()


class Spinner:
    """Work of unknown length: a spinner with the elapsed time (an `async with` block, or
    `start()` then `await stop()`)."""

    FRAMES = "|/-\\"

    def __init__(
        self, label: str, *, out: TextIO | None = None, plain_every_s: float = PLAIN_EVERY_S
    ) -> None:
        self.label = label
        self.out = out or sys.stderr
        self.tty = is_tty(self.out)
        self.plain_every_s = plain_every_s
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def start(self) -> None:
        if self._task is None:
            self.started = time.monotonic()
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self.tty:
            self.out.write(f"\r{CLEAR_LINE}")
            self.out.flush()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        frame = 0
        while True:
            if self.tty:
                spin = self.FRAMES[frame % len(self.FRAMES)]
                self.out.write(f"\r{spin} {self.label} {self.elapsed:.1f}s{CLEAR_LINE}")
                frame += 1
                await asyncio.sleep(REDRAW_S)
            else:
                await asyncio.sleep(self.plain_every_s)
                self.out.write(f"{self.label}: still working, {self.elapsed:.0f}s\n")
            self.out.flush()
