"""The CRM services as child processes: start, wait for readiness, stop, kill, restart.

Used by the end-to-end tests and by the dev runner. Each service runs as
`python -m <svc>.main serve`, configured only through `CRM_*` environment variables,
in its own process group and (on Linux) with a parent-death signal; see
`crm_shared.testing.broker` for why children must be started from a long-lived thread.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from crm_shared.app.auth import issue_token
from crm_shared.testing.broker import (
    DEFAULT_HOST,
    free_ports,
    kill,
    log_tail,
    port_is_free,
    signal_group,
    spawn,
)

SERVICES: tuple[str, ...] = ("contacts", "lifecycle", "scoring", "notifications")
DEFAULT_PORTS: dict[str, int] = {
    "contacts": 8001,
    "lifecycle": 8002,
    "scoring": 8003,
    "notifications": 8004,
}
_POLL_INTERVAL = 0.05
# Services take up to 10 s to finish the batch in hand, and a consumer that is leaving
# during a rebalance on the embedded broker can add ~5 s more: leave them headroom.
STOP_TIMEOUT = 20.0


class ServiceError(RuntimeError):
    """A service did not start, did not become ready, or died."""


def sqlite_url(path: Path) -> str:
    """The async SQLAlchemy URL of a SQLite file (absolute, so the child's cwd is moot)."""
    return f"sqlite:///{path.resolve()}"


class ServiceProcess:
    """One service as a child process."""

    def __init__(
        self,
        name: str,
        *,
        port: int,
        bootstrap: str,
        database_url: str,
        log_path: Path,
        host: str = DEFAULT_HOST,
        env: Mapping[str, str] | None = None,
        module: str | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.name = name
        self.port = port
        self.host = host
        self.bootstrap = bootstrap
        self.database_url = database_url
        self.log_path = log_path
        self.module = module or f"{name}.main"
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._starts = 0
        self._term_sent = False
        self._last_probe = "no answer yet"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def docs_url(self) -> str:
        return f"{self.url}/docs"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def environment(self) -> dict[str, str]:
        """The child's environment: ours, the extra variables, then the service settings."""
        env = {**os.environ, **self._extra_env}
        env.update(
            CRM_HTTP_HOST=self.host,
            CRM_HTTP_PORT=str(self.port),
            CRM_DATABASE_URL=self.database_url,
            CRM_KAFKA_BOOTSTRAP=self.bootstrap,
            # Without it a crash's last words can stay in a buffer and miss the log.
            PYTHONUNBUFFERED="1",
        )
        return env

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module, "serve"]

    def start(self) -> None:
        """Spawn the process without waiting for it to be ready."""
        if self.running:
            return
        if not port_is_free(self.host, self.port):
            raise ServiceError(f"{self.name}: port {self.host}:{self.port} is already in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Restarts append, so a fault test keeps the history of the earlier runs.
        with self.log_path.open("ab" if self._starts else "wb") as log:
            if self._starts:
                log.write(f"\n--- restart {self._starts} ---\n".encode())
            self._log_offset = log.tell()
            self._proc = spawn(self.argv(), log=log, env=self.environment())
        self._starts += 1
        self._term_sent = False
        self._last_probe = "no answer yet"

    def wait_ready(self, within: float | None = None) -> None:
        """Block until `GET /readyz` answers 200; raise with the log tail otherwise."""
        deadline = time.monotonic() + (within or self.ready_timeout)
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while True:
                self._raise_if_dead("exited during start-up")
                try:
                    if self._is_ready(client.get(f"{self.url}/readyz")):
                        return
                except httpx.HTTPError as error:
                    self._last_probe = repr(error)
                if time.monotonic() >= deadline:
                    raise self._not_ready_error(within)
                time.sleep(_POLL_INTERVAL)

    async def wait_ready_async(self, within: float | None = None) -> None:
        """Wait until `GET /readyz` answers 200 without blocking the event loop."""
        deadline = time.monotonic() + (within or self.ready_timeout)
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            while True:
                self._raise_if_dead("exited during start-up")
                try:
                    if self._is_ready(await client.get(f"{self.url}/readyz")):
                        return
                except httpx.HTTPError as error:
                    self._last_probe = repr(error)
                if time.monotonic() >= deadline:
                    raise self._not_ready_error(within)
                await asyncio.sleep(_POLL_INTERVAL)

    def request_stop(self) -> None:
        """Send SIGTERM once: a second one would make the server skip its graceful exit."""
        if self._proc is not None and self._proc.poll() is None and not self._term_sent:
            signal_group(self._proc, signal.SIGTERM)
            self._term_sent = True

    def stop(self, within: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL if still alive after `within` seconds; the exit code."""
        if self._proc is None:
            return None
        self.request_stop()
        try:
            self._proc.wait(within or self.stop_timeout)
        except subprocess.TimeoutExpired:
            pass
        return kill(self._proc)

    async def stop_async(self, within: float | None = None) -> int | None:
        """Like `stop`, without blocking the event loop."""
        if self._proc is None:
            return None
        self.request_stop()
        deadline = time.monotonic() + (within or self.stop_timeout)
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            await asyncio.sleep(_POLL_INTERVAL)
        return kill(self._proc)

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash would."""
        return kill(self._proc) if self._proc is not None else None

    def restart(self, *, hard: bool = False, within: float | None = None) -> None:
        """Stop (or kill, if `hard`), start again on the same port and wait until ready."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()
        self.wait_ready(within)

    async def restart_async(self, *, hard: bool = False, within: float | None = None) -> None:
        """Like `restart`, without blocking the event loop."""
        if hard:
            self.kill()
        else:
            await self.stop_async()
        self.start()
        await self.wait_ready_async(within)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the current run's output."""
        return log_tail(self.log_path, lines=lines, offset=self._log_offset)

    def __repr__(self) -> str:
        return f"ServiceProcess({self.name}, {self.url}, pid={self.pid}, rc={self.returncode})"

    # --- internals ---

    def _is_ready(self, response: httpx.Response) -> bool:
        # Kept for the timeout message: a 503 body usually says what is missing.
        self._last_probe = f"{response.status_code} {response.text[:200]}"
        if response.status_code != 200:
            return False
        answered = response.json().get("service")
        if answered != self.name:
            # Another process holds our port: its readiness must not pass for ours.
            raise ServiceError(f"{self.name}: {self.url} is answered by {answered!r}")
        return True

    def _raise_if_dead(self, what: str) -> None:
        if self._proc is None:
            raise ServiceError(f"{self.name}: not started")
        code = self._proc.poll()
        if code is not None:
            raise ServiceError(
                f"{self.name} {what} with exit code {code}; log {self.log_path}:\n{self.log_tail()}"
            )

    def _not_ready_error(self, within: float | None) -> ServiceError:
        seconds = within or self.ready_timeout
        return ServiceError(
            f"{self.name} was not ready at {self.url}/readyz within {seconds:.0f}s "
            f"(last answer: {self._last_probe}); log {self.log_path}:\n{self.log_tail()}"
        )


class Stack:
    """A chosen set of services sharing one broker, with a SQLite file each by default."""

    def __init__(
        self,
        services: Iterable[str] = SERVICES,
        *,
        bootstrap: str,
        data_dir: Path,
        ports: Mapping[str, int] | None = None,
        host: str = DEFAULT_HOST,
        log_dir: Path | None = None,
        database_urls: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = STOP_TIMEOUT,
        auth_secret: str | None = None,
    ) -> None:
        names = list(dict.fromkeys(services))
        unknown = sorted(set(names) - set(SERVICES))
        if unknown:
            raise ValueError(f"unknown services {unknown}; known: {', '.join(SERVICES)}")
        self.bootstrap = bootstrap
        self.data_dir = data_dir.resolve()
        self.log_dir = (log_dir or self.data_dir / "logs").resolve()
        chosen = dict(ports or {})
        unchosen = [name for name in names if not chosen.get(name)]
        chosen.update(zip(unchosen, free_ports(len(unchosen), host), strict=True))
        urls = database_urls or {}
        # Services derive default paths from it; keep them inside this stack's directory.
        env = {"CRM_DATA_DIR": str(self.data_dir), **(env or {})}
        # The services check HS256 tokens signed with this secret; `token` is one of them.
        self.auth_secret = (
            auth_secret
            or env.get("CRM_AUTH_JWT_SECRET")
            or os.environ.get("CRM_AUTH_JWT_SECRET")
            or secrets.token_urlsafe(32)
        )
        env["CRM_AUTH_JWT_SECRET"] = self.auth_secret
        self.processes: dict[str, ServiceProcess] = {
            name: ServiceProcess(
                name,
                port=chosen[name],
                host=host,
                bootstrap=bootstrap,
                database_url=urls.get(name) or sqlite_url(self.data_dir / f"{name}.db"),
                log_path=self.log_dir / f"{name}.log",
                env=env,
                ready_timeout=ready_timeout,
                stop_timeout=stop_timeout,
            )
            for name in names
        }

    @property
    def names(self) -> list[str]:
        return list(self.processes)

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.processes[name]

    def url(self, name: str) -> str:
        """Base URL of a service, e.g. `http://127.0.0.1:8001`."""
        return self.processes[name].url

    def token(self, *, scopes: Iterable[str] | None = None, ttl_s: float = 86_400.0) -> str:
        """A bearer token the services accept (every scope unless `scopes` is given)."""
        if scopes is None:
            return issue_token(self.auth_secret, ttl_s=ttl_s)
        return issue_token(self.auth_secret, scopes=scopes, ttl_s=ttl_s)

    @property
    def headers(self) -> dict[str, str]:
        """`Authorization` with an every-scope token, for clients of the services."""
        return {"Authorization": f"Bearer {self.token()}"}

    def client(self, name: str, **options: object) -> httpx.AsyncClient:
        """An HTTP client of one service, authenticated with every scope."""
        return httpx.AsyncClient(
            base_url=self.url(name),
            headers=self.headers,
            trust_env=False,
            **options,  # type: ignore[arg-type]
        )

    def dead(self) -> list[ServiceProcess]:
        """The services whose process has exited."""
        return [p for p in self.processes.values() if p.returncode is not None]

    def start(self) -> Self:
        """Start every service and wait until all are ready; on failure stop them all."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for process in self.processes.values():
                process.start()
            # All start in parallel, so waiting one after the other costs only the slowest.
            for process in self.processes.values():
                process.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def start_async(self) -> Self:
        """Like `start`, without blocking the event loop."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for process in self.processes.values():
                process.start()
            await asyncio.gather(*(p.wait_ready_async() for p in self.processes.values()))
        except BaseException:
            await self.stop_async()
            raise
        return self

    def stop(self) -> None:
        """Stop every service: SIGTERM to all at once, SIGKILL to the ones that linger."""
        for process in self.processes.values():
            process.request_stop()
        for process in self.processes.values():
            process.stop()

    async def stop_async(self) -> None:
        """Like `stop`, without blocking the event loop."""
        await asyncio.gather(*(p.stop_async() for p in self.processes.values()))

    def kill(self) -> None:
        """SIGKILL every service at once."""
        for process in self.processes.values():
            process.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()
