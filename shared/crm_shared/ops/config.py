"""Where the services and Kafka are, and which token to show them: options, environment,
then defaults (the ports and the token file of `make run`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from crm_shared.ops.command import UsageError

SERVICES: tuple[str, ...] = ("contacts", "lifecycle", "scoring", "notifications")
DEFAULT_PORTS: Mapping[str, int] = {
    "contacts": 8001,
    "lifecycle": 8002,
    "scoring": 8003,
    "notifications": 8004,
}
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_DATA_DIR = "var"
DEFAULT_PARTITIONS = 4


@dataclass(frozen=True)
class OpsConfig:
    urls: Mapping[str, str]
    bootstrap: str
    topic_prefix: str
    topic_partitions: int
    token: str | None
    token_source: str

    def url(self, service: str) -> str:
        return self.urls[service]

    def topic(self, name: str) -> str:
        """The topic's name in this environment (with the prefix)."""
        return self.topic_prefix + name

    def require_token(self) -> str:
        if self.token is None:
            raise UsageError(
                "no bearer token: pass --token, set CRM_TOKEN, or start the services with "
                "`make run`, which writes one to $CRM_DATA_DIR/dev-token (default var/dev-token)"
            )
        return self.token


def add_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes. On subcommands their defaults are suppressed, so
    an option given before the subcommand is not reset by the subcommand's parser."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("where the services and Kafka are")
    for name in SERVICES:
        group.add_argument(
            f"--url-{name}",
            metavar="URL",
            default=default,
            help=f"base URL of {name} (env CRM_{name.upper()}_URL, "
            f"default http://127.0.0.1:{DEFAULT_PORTS[name]})",
        )
    group.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        default=default,
        help=f"Kafka bootstrap servers (env CRM_KAFKA_BOOTSTRAP, default {DEFAULT_BOOTSTRAP})",
    )
    group.add_argument(
        "--topic-prefix",
        metavar="P",
        default=default,
        help="put before every topic name, as the services do (env CRM_TOPIC_PREFIX)",
    )
    group.add_argument(
        "--token",
        default=default,
        help="bearer token (env CRM_TOKEN, else the file $CRM_DATA_DIR/dev-token "
        "that `make run` writes)",
    )


def resolve(args: argparse.Namespace, env: Mapping[str, str], cwd: Path) -> OpsConfig:
    """The configuration of these options and environment."""
    urls = {
        name: _first(
            getattr(args, f"url_{name}", None),
            env.get(f"CRM_{name.upper()}_URL"),
            f"http://127.0.0.1:{DEFAULT_PORTS[name]}",
        ).rstrip("/")
        for name in SERVICES
    }
    token, source = _token(args, env, cwd)
    return OpsConfig(
        urls=urls,
        bootstrap=_first(getattr(args, "bootstrap", None), env.get("CRM_KAFKA_BOOTSTRAP"))
        or DEFAULT_BOOTSTRAP,
        topic_prefix=_first(getattr(args, "topic_prefix", None), env.get("CRM_TOPIC_PREFIX")),
        topic_partitions=_partitions(env),
        token=token,
        token_source=source,
    )


def _token(args: argparse.Namespace, env: Mapping[str, str], cwd: Path) -> tuple[str | None, str]:
    if given := (getattr(args, "token", None) or "").strip():
        return given, "--token"
    if from_env := env.get("CRM_TOKEN", "").strip():
        return from_env, "CRM_TOKEN"
    path = cwd / env.get("CRM_DATA_DIR", DEFAULT_DATA_DIR) / "dev-token"
    try:
        from_file = path.read_text().strip()
    except OSError:
        return None, "none"
    return (from_file or None), str(path)


def _partitions(env: Mapping[str, str]) -> int:
    raw = env.get("CRM_TOPIC_PARTITIONS", "").strip()
    if not raw:
        return DEFAULT_PARTITIONS
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError(f"CRM_TOPIC_PARTITIONS={raw!r} is not a positive whole number")
    return int(raw)


def _first(*values: str | None) -> str:
    """The first value given (empty strings count as not given)."""
    return next((value.strip() for value in values if value and value.strip()), "")
