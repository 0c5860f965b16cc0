"""SQLite's WAL checkpoints on a thread of their own.

A checkpoint copies the pages written to the WAL back into the database file. SQLite runs
one inside the commit that brings the WAL to `wal_autocheckpoint` pages, on the committing
connection: with the inline driver, on the event loop's thread, which stops for the copy.
Contacts, sent single POSTs, stalled 50-95 ms every ~1,000 of them (20,000 pages), long
enough to be the 99th percentile of the POST-to-stage latency.

`Checkpointer` checkpoints from a connection of its own, in a thread, every `poll` seconds,
in PASSIVE mode: it copies what is in the WAL without waiting for or blocking readers and
writers (the sqlite3 module lets go of the GIL while SQLite works, so the copy runs beside
the loop), and says how many frames the WAL holds.

Copying is not enough: the WAL starts over only when a write begins with every frame
copied and no reader left in it, and under a steady stream of writes a copy seldom ends
between two of them. So once the WAL holds `pages` frames the thread copies once more and
asks for a RESTART (`restart_wanted`), which `Database.transaction` runs between two
writes, on the loop, holding the process's write turn: `restart_here` copies the few
frames written since (a RESTART holds the write lock while it does) and makes sure no
reader is in the WAL, so that the next write starts it over. It does not wait: with a
reader in the WAL it tries again after the next write.

The service's connections keep an automatic checkpoint at twice `pages`, in case this
falls behind or stops.

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


class Checkpointer:
    """Checkpoints one database file's WAL from a daemon thread (see the module)."""

    def __init__(self, path: str, *, pages: int, poll: float = 0.25) -> None:
        self.path = path
        self.pages = pages
        self.poll = poll
        self.checkpoints = 0
        self.restarts = 0
        self.restart_wanted = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._here: sqlite3.Connection | None = None  # the loop's, for `restart_here`

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
        here, self._here = self._here, None
        if here is not None:
            here.close()

    def restart_here(self) -> bool:
        """RESTART now, from the caller's thread, between two writes of this process (see
        the module); whether the WAL will start over."""
        if self._here is None:
            self._here = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._here.execute("PRAGMA busy_timeout=0")
        try:
            busy, _, _ = self._here.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:
            log.warning("WAL restart failed", extra={"error": repr(exc)})
            return False
        if busy:
            return False
        self.restart_wanted = False
        self.restarts += 1
        return True

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
                        self.restart_wanted = True
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed", extra={"error": repr(exc)})
        finally:
            if connection is not None:
                connection.close()
