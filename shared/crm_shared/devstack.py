"""`crm-dev`: run the whole CRM backend locally (what `make run` does).

Starts the embedded broker (unless an external one is configured), creates the topics,
starts the services as child processes with a SQLite file each, waits until all are
ready and then watches them. Ctrl-C or SIGTERM stops the services, then the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from crm_shared.app.auth import issue_token
from crm_shared.messaging.topics import ALL_TOPICS, ensure_topics
from crm_shared.testing.broker import DEFAULT_HOST, Broker, BrokerError, port_is_free
from crm_shared.testing.stack import DEFAULT_PORTS, SERVICES, ServiceError, Stack

DEFAULT_BROKER_PORT = 9092
DEFAULT_PARTITIONS = 4
DEFAULT_DATA_DIR = "var"
TOPICS_TIMEOUT = 30.0
WATCH_INTERVAL = 0.5
# A wrapper (e.g. `uv run`) may pass on the Ctrl-C the terminal already delivered to us.
DOUBLE_SIGNAL_WINDOW = 1.0
DEV_TOKEN_TTL_S = 30 * 86_400.0

HELP_EPILOG = f"""\
environment variables:
  CRM_KAFKA_BOOTSTRAP      use this running Kafka broker (host:port) instead of
                           starting the embedded one
  CRM_BROKER_PORT          port of the embedded broker on {DEFAULT_HOST}
                           (default {DEFAULT_BROKER_PORT})
  CRM_TOPIC_PARTITIONS     partitions of each topic created (default {DEFAULT_PARTITIONS})
  CRM_DATA_DIR             SQLite files <dir>/<service>.db and logs <dir>/logs/
                           (default ./{DEFAULT_DATA_DIR})
  CRM_CONTACTS_PORT        HTTP port of contacts (default {DEFAULT_PORTS["contacts"]})
  CRM_LIFECYCLE_PORT       HTTP port of lifecycle (default {DEFAULT_PORTS["lifecycle"]})
  CRM_SCORING_PORT         HTTP port of scoring (default {DEFAULT_PORTS["scoring"]})
  CRM_NOTIFICATIONS_PORT   HTTP port of notifications (default {DEFAULT_PORTS["notifications"]})
  CRM_<SERVICE>_DATABASE_URL
                           database of one service instead of its SQLite file,
                           e.g. CRM_SCORING_DATABASE_URL=postgresql+asyncpg://...
  CRM_AUTH_JWT_SECRET      HS256 secret the services check tokens with (default: a
                           random one kept in <data dir>/dev-secret)
  CRM_FETCH_MAX_WAIT_MS, CRM_LOG_LEVEL
                           passed through to every service

Every API needs a bearer token: crm-dev writes one with every scope (valid 30 days) to
<data dir>/dev-token and prints it.

The embedded broker keeps everything in memory: stopping crm-dev loses all topics and
records, while the services' databases under CRM_DATA_DIR persist.
"""


class ConfigError(ValueError):
    """The environment or the arguments describe an impossible set-up."""


@dataclass(frozen=True)
class DevConfig:
    """Everything `crm-dev` needs, parsed from the arguments and the environment."""

    services: tuple[str, ...]
    data_dir: Path
    ports: Mapping[str, int]
    broker_port: int = DEFAULT_BROKER_PORT
    partitions: int = DEFAULT_PARTITIONS
    external_bootstrap: str | None = None
    database_urls: Mapping[str, str] = field(default_factory=dict)
    host: str = DEFAULT_HOST

    @property
    def embedded_broker(self) -> bool:
        return self.external_bootstrap is None

    @property
    def bootstrap(self) -> str:
        return self.external_bootstrap or f"{self.host}:{self.broker_port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-dev",
        description="Run the CRM services locally with an embedded Kafka-compatible broker.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--services",
        nargs="+",
        metavar="SERVICE",
        default=list(SERVICES),
        help=f"services to run, space- or comma-separated (default: all of {', '.join(SERVICES)})",
    )
    return parser


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str], cwd: Path) -> DevConfig:
    """The configuration for these arguments and environment (no side effects)."""
    args = build_parser().parse_args(argv)
    services = _parse_services(args.services)
    data_dir = (cwd / env.get("CRM_DATA_DIR", DEFAULT_DATA_DIR)).resolve()
    ports = {name: _port(env, f"CRM_{name.upper()}_PORT", DEFAULT_PORTS[name]) for name in services}
    external = env.get("CRM_KAFKA_BOOTSTRAP", "").strip() or None
    config = DevConfig(
        services=services,
        data_dir=data_dir,
        ports=ports,
        broker_port=_port(env, "CRM_BROKER_PORT", DEFAULT_BROKER_PORT),
        partitions=_positive_int(env, "CRM_TOPIC_PARTITIONS", DEFAULT_PARTITIONS),
        external_bootstrap=external,
        database_urls=_database_urls(env, services),
    )
    _check_distinct_ports(config)
    return config


def _parse_services(values: Sequence[str]) -> tuple[str, ...]:
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        raise ConfigError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    if not names:
        raise ConfigError("--services needs at least one service")
    return tuple(dict.fromkeys(names))


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise ConfigError(f"{name}={raw!r} must be at least 1")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    port = _positive_int(env, name, default)
    if port > 65535:
        raise ConfigError(f"{name}={port} is not a TCP port")
    return port


def _database_urls(env: Mapping[str, str], services: Sequence[str]) -> dict[str, str]:
    urls = {name: env.get(f"CRM_{name.upper()}_DATABASE_URL", "").strip() for name in services}
    return {name: url for name, url in urls.items() if url}


def _check_distinct_ports(config: DevConfig) -> None:
    owners: dict[int, list[str]] = {}
    for name, port in config.ports.items():
        owners.setdefault(port, []).append(name)
    if config.embedded_broker:
        owners.setdefault(config.broker_port, []).append("broker")
    clashes = [f"{port}: {', '.join(names)}" for port, names in owners.items() if len(names) > 1]
    if clashes:
        raise ConfigError(f"the same port is configured twice ({'; '.join(clashes)})")


# --- running ---


class _StopRequested(BaseException):
    """The first Ctrl-C / SIGTERM: stop gracefully."""


class _ForceStop(BaseException):
    """A later Ctrl-C / SIGTERM while stopping: kill at once."""


class _Signals:
    """Turns SIGINT/SIGTERM into exceptions in the main thread, by shutdown phase."""

    def __init__(self) -> None:
        self.phase = "running"
        self._stopping_since = 0.0

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def begin_stop(self) -> None:
        if self.phase == "running":
            self.phase = "stopping"
            self._stopping_since = time.monotonic()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.phase == "running":
            self.begin_stop()
            raise _StopRequested(signum)
        recent = time.monotonic() - self._stopping_since < DOUBLE_SIGNAL_WINDOW
        if self.phase == "stopping" and not recent:
            self.phase = "killing"
            raise _ForceStop(signum)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    try:
        config = parse_config(argv, os.environ, Path.cwd())
    except ConfigError as error:
        parser.error(str(error))
    sys.exit(run(config))


def run(config: DevConfig) -> int:
    """Start everything, watch it, stop it; the exit status."""
    signals = _Signals()
    signals.install()
    broker: Broker | None = None
    stack: Stack | None = None
    status = 0
    try:
        _check_ports_free(config)
        broker = _start_broker(config)
        _create_topics(config)
        secret = _dev_secret(config.data_dir)
        stack = Stack(
            config.services,
            bootstrap=config.bootstrap,
            data_dir=config.data_dir,
            ports=config.ports,
            host=config.host,
            log_dir=config.log_dir,
            database_urls=config.database_urls,
            # Services create their topics too: make them agree with the ones made here.
            env={"CRM_TOPIC_PARTITIONS": str(config.partitions)},
            auth_secret=secret,
        )
        status = _start_and_watch(config, stack, broker)
    except _StopRequested:
        _say("stopping")
    except _ForceStop:
        pass
    except (ConfigError, BrokerError, ServiceError) as error:
        _say(f"error: {error}")
        status = 1
    finally:
        _shutdown(stack, broker, signals)
    _say("stopped")
    return status


def _dev_secret(data_dir: Path) -> str:
    """The signing secret of this development set-up: the environment's, or one made
    once and kept (owner-only) so tokens stay valid across restarts."""
    configured = os.environ.get("CRM_AUTH_JWT_SECRET", "").strip()
    if configured:
        return configured
    path = data_dir / "dev-secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


def _write_dev_token(config: DevConfig, stack: Stack) -> Path:
    path = config.data_dir / "dev-token"
    path.touch(mode=0o600)
    path.write_text(issue_token(stack.auth_secret, ttl_s=DEV_TOKEN_TTL_S) + "\n")
    return path


def _check_ports_free(config: DevConfig) -> None:
    wanted = [(f"CRM_{name.upper()}_PORT", port) for name, port in config.ports.items()]
    if config.embedded_broker:
        wanted.insert(0, ("CRM_BROKER_PORT", config.broker_port))
    taken = [f"{port} ({var})" for var, port in wanted if not port_is_free(config.host, port)]
    if not taken:
        return
    hint = "stop whatever uses them or choose other ports with the variables named"
    if config.embedded_broker and not port_is_free(config.host, config.broker_port):
        hint += (
            f"; to use a broker already running on {config.bootstrap}, "
            f"set CRM_KAFKA_BOOTSTRAP={config.bootstrap}"
        )
    raise ConfigError(f"ports already in use on {config.host}: {', '.join(taken)}; {hint}")


def _start_broker(config: DevConfig) -> Broker:
    if not config.embedded_broker:
        _say(f"using the broker at {config.bootstrap}")
        return Broker.external(config.bootstrap)
    _say(f"starting the embedded broker on {config.bootstrap}")
    return Broker(
        config.broker_port, host=config.host, log_path=config.log_dir / "broker.log"
    ).start()


def _create_topics(config: DevConfig) -> None:
    _say(f"creating {len(ALL_TOPICS)} topics with {config.partitions} partitions each")
    try:
        asyncio.run(_ensure_topics(config))
    except Exception as error:
        raise BrokerError(f"cannot create the topics on {config.bootstrap}: {error!r}") from error


async def _ensure_topics(config: DevConfig) -> None:
    async with asyncio.timeout(TOPICS_TIMEOUT):
        await ensure_topics(config.bootstrap, ALL_TOPICS, partitions=config.partitions)


def _start_and_watch(config: DevConfig, stack: Stack, broker: Broker) -> int:
    _say(f"starting {', '.join(config.services)} (logs in {config.log_dir})")
    started = time.monotonic()
    stack.start()
    _say(f"ready in {time.monotonic() - started:.1f}s")
    token_path = _write_dev_token(config, stack)
    print(_summary(config, stack, broker, token_path), flush=True)
    return _watch(stack, broker)


def _watch(stack: Stack, broker: Broker) -> int:
    """Sleep until a signal arrives (exception) or a child dies (status 1)."""
    while True:
        dead = stack.dead()
        for process in dead:
            _say(
                f"{process.name} exited unexpectedly with code {process.returncode}; "
                f"end of {process.log_path}:\n{process.log_tail()}"
            )
        if not broker.running:
            _say(f"the broker exited unexpectedly; end of {broker.log_path}:\n{broker.log_tail()}")
        if dead or not broker.running:
            _say("stopping everything")
            return 1
        time.sleep(WATCH_INTERVAL)


def _summary(config: DevConfig, stack: Stack, broker: Broker, token_path: Path) -> str:
    rows = [("service", "url", "docs", "log")]
    rows += [(p.name, p.url, p.docs_url, str(p.log_path)) for p in stack.processes.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["", *("  " + _row(row, widths) for row in rows), ""]
    if broker.managed:
        lines.append(f"  broker   {broker.bootstrap}  (embedded, memory only)")
        lines.append(f"           log {broker.log_path}")
    else:
        lines.append(f"  broker   {broker.bootstrap}  (external)")
    lines.append(f"  data     {config.data_dir}")
    token = token_path.read_text().strip()
    lines += [
        "",
        f"  token    every scope, 30 days, also in {token_path}:",
        f"           {token}",
        f'  try      curl -H "Authorization: Bearer $(cat {token_path})" '
        f"{stack.url(stack.names[0])}/v1/...",
        "",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def _row(row: tuple[str, ...], widths: Sequence[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
    return "  ".join([*padded, row[-1]])


def _shutdown(stack: Stack | None, broker: Broker | None, signals: _Signals) -> None:
    """Services first (they flush to the broker), then the broker; kill on a 2nd signal."""
    signals.begin_stop()
    try:
        if signals.phase == "stopping":
            if stack is not None:
                stack.stop()
            if broker is not None:
                broker.stop()
            return
    except _ForceStop:
        _say("killing")
    if stack is not None:
        stack.kill()
    if broker is not None and broker.managed:
        broker.kill()


def _say(message: str) -> None:
    print(f"crm-dev: {message}", file=sys.stderr, flush=True)
