"""SQLite's WAL checkpoints on a thread of their own.

A checkpoint copies the pages written to the WAL back into the database file. SQLite runs
one inside the commit that brings the WAL to `wal_autocheckpoint` pages, on the committing
connection: with the inline driver, on the event loop's thread, which stops for the copy.
Contacts, sent single POSTs, stalled 50-95 ms every ~1,000 of them (20,000 pages), long
enough to be the 99th percentile of the POST-to-stage latency.

`Checkpointer` reads the WAL index header (the `-shm` file; its layout is documented in
SQLite's walformat.html) every `poll` seconds and, once the WAL holds `pages` frames,
checkpoints it from a connection of its own, in two steps:

- PASSIVE: copies what is there without waiting for or blocking readers and writers (the
  sqlite3 module lets go of the GIL while SQLite works, so the copy runs beside the loop);
- RESTART: copies what writers added meanwhile, holding the write lock for that (a few
  milliseconds), and waits for readers to leave the WAL, so that the next writer starts it
  over from the beginning. Without it, under a steady stream of writes the WAL never
  starts over, and a committing connection would checkpoint it after all.

The service's connections keep an automatic checkpoint at twice `pages`, in case this
thread falls behind or stops.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading

log = logging.getLogger(__name__)

WAL_INDEX_VERSION = 3007000
# The WAL index header starts with iVersion, unused, iChange, isInit, bigEndCksum, szPage
# and mxFrame (frames in the WAL), in the host's byte order.
_HEADER = struct.Struct("=IIIBBHI")
_INDEX_BYTES = 48
# RESTART is tried this often, this far apart, and again at a later poll if it never
# finds the WAL free.
RESTART_TRIES = 50
RESTART_PAUSE = 0.002


def wal_frames(shm_path: str) -> int | None:
    """Frames in the WAL since it last started over, from the WAL index; None when there
    is no index (yet) or it is not one this code knows."""
    try:
        with open(shm_path, "rb") as shm:
            raw = shm.read(_INDEX_BYTES)
    except FileNotFoundError:
        return None
    if len(raw) < _INDEX_BYTES:
        return None
    version, _, _, _, _, _, frames = _HEADER.unpack_from(raw, 0)
    if version != WAL_INDEX_VERSION:
        return None
    return int(frames)


class Checkpointer:
    """Checkpoints one database file's WAL from a daemon thread (see the module)."""

    def __init__(self, path: str, *, pages: int, poll: float = 0.1) -> None:
        self.path = path
        self.pages = pages
        self.poll = poll
        self.checkpoints = 0
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread unless it runs already."""
        with self._lock:
            if self.running:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="crm-sqlite-checkpoint", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _restart(self, connection: sqlite3.Connection, stop: threading.Event) -> int:
        """Try RESTART until it gets the write lock with no reader left in the WAL: without a
        busy timeout it never waits (and so never holds writers off while it waits); when a
        writer or a reader is there it does what it can, as PASSIVE, and says so."""
        for _ in range(RESTART_TRIES):
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:
                return 1
            if stop.wait(RESTART_PAUSE):
                break
        return 0

    def _run(self, stop: threading.Event) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while not stop.wait(self.poll):
                frames = wal_frames(self.path + "-shm")
                if frames is None or frames < self.pages:
                    continue
                if not os.path.exists(self.path):
                    return  # the database went away (a test's directory, say)
                try:
                    if connection is None:
                        connection = sqlite3.connect(self.path, isolation_level=None)
                        connection.execute("PRAGMA busy_timeout=0")
                    # The second PASSIVE copies what came in during the first, so that
                    # RESTART, which holds writers off, has little left to copy.
                    for _ in range(2):
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                    self.restarts += self._restart(connection, stop)
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed", extra={"error": repr(exc)})
        finally:
            if connection is not None:
                connection.close()
