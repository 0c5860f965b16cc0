"""SQLite's WAL checkpoints on a thread of their own.

A checkpoint copies the pages written to the WAL back into the database file. SQLite runs
one inside the commit that brings the WAL to `wal_autocheckpoint` pages, on the committing
connection: with the inline driver, on the event loop's thread, which stops for the copy.
Contacts, sent single POSTs, stalled 50-95 ms every ~1,000 of them (20,000 pages), long
enough to be the 99th percentile of the POST-to-stage latency.

`Checkpointer` checkpoints from a connection of its own, every `poll` seconds:

- PASSIVE copies what is in the WAL without waiting for or blocking readers and writers
  (the sqlite3 module lets go of the GIL while SQLite works, so the copy runs beside the
  loop). It also says how many frames the WAL holds.
- Once that is `pages` or more: PASSIVE again (for what came in meanwhile), then RESTART,
  which copies the rest holding the write lock (a few milliseconds) and makes sure no
  reader is left in the WAL, so that the next writer starts it over from the beginning.
  Under a steady stream of writes a checkpoint seldom ends between two of them, and
  without RESTART the WAL would only start over when a committing connection checkpointed
  it after all. RESTART runs without a busy timeout, so it never waits holding writers
  off; it is retried while a writer or a reader is in the way.

The service's connections keep an automatic checkpoint at twice `pages`, in case this
thread falls behind or stops.

It never opens SQLite's files itself: closing any descriptor of a file drops every POSIX
lock the process holds on it, SQLite's included, and a connection opened afterwards would
take itself for the only one and reset the WAL index under the others (a SIGBUS).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

log = logging.getLogger(__name__)

# RESTART is tried this often, this far apart, and again at a later round if it never
# finds the WAL free.
RESTART_TRIES = 50
RESTART_PAUSE = 0.002


class Checkpointer:
    """Checkpoints one database file's WAL from a daemon thread (see the module)."""

    def __init__(self, path: str, *, pages: int, poll: float = 0.25) -> None:
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

    def _run(self, stop: threading.Event) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while not stop.wait(self.poll):
                if not os.path.exists(self.path):
                    return  # the database went away (a test's directory, say)
                try:
                    if connection is None:
                        connection = sqlite3.connect(self.path, isolation_level=None)
                        connection.execute("PRAGMA busy_timeout=0")
                    _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                    if frames >= self.pages:
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        self.restarts += self._restart(connection, stop)
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed", extra={"error": repr(exc)})
        finally:
            if connection is not None:
                connection.close()

    def _restart(self, connection: sqlite3.Connection, stop: threading.Event) -> int:
        """RESTART until it finds neither a writer nor a reader in the way (then 1), or gives
        up for this round (0); in the way, it does what PASSIVE does."""
        for _ in range(RESTART_TRIES):
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:
                return 1
            if stop.wait(RESTART_PAUSE):
                break
        return 0
