"""`crm-dev` arguments and environment -> configuration (a pure function)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_shared import devstack
from crm_shared.devstack import ConfigError, DevConfig, build_parser, parse_config
from crm_shared.testing.stack import SERVICES

CWD = Path("/srv/crm")


def config(*argv: str, **env: str) -> DevConfig:
    return parse_config(list(argv), env, CWD)


def test_defaults_run_everything_on_the_documented_ports() -> None:
    parsed = config()

    assert parsed.services == SERVICES
    assert parsed.ports == {
        "contacts": 8001,
        "lifecycle": 8002,
        "scoring": 8003,
        "notifications": 8004,
    }
    assert parsed.embedded_broker
    assert parsed.bootstrap == "127.0.0.1:9092"
    assert parsed.partitions == 4
    assert parsed.data_dir == CWD / "var"
    assert parsed.log_dir == CWD / "var" / "logs"
    assert parsed.database_urls == {}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--services", "lifecycle"], ("lifecycle",)),
        (["--services", "lifecycle,scoring"], ("lifecycle", "scoring")),
        (["--services", "scoring", "contacts"], ("scoring", "contacts")),
        (["--services", "scoring,", "scoring"], ("scoring",)),
    ],
)
def test_a_subset_of_services(argv: list[str], expected: tuple[str, ...]) -> None:
    parsed = config(*argv)

    assert parsed.services == expected
    assert set(parsed.ports) == set(expected)


def test_unknown_services_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown service.*billing"):
        config("--services", "lifecycle,billing")


def test_environment_overrides() -> None:
    parsed = config(
        CRM_BROKER_PORT="19092",
        CRM_TOPIC_PARTITIONS="8",
        CRM_DATA_DIR="data/dev",
        CRM_CONTACTS_PORT="9001",
        CRM_NOTIFICATIONS_PORT="9004",
        CRM_SCORING_DATABASE_URL="postgresql+asyncpg://crm@db/scoring",
    )

    assert parsed.bootstrap == "127.0.0.1:19092"
    assert parsed.partitions == 8
    assert parsed.data_dir == CWD / "data" / "dev"
    assert parsed.ports["contacts"] == 9001
    assert parsed.ports["lifecycle"] == 8002
    assert parsed.ports["notifications"] == 9004
    assert parsed.database_urls == {"scoring": "postgresql+asyncpg://crm@db/scoring"}


def test_an_absolute_data_dir_is_kept() -> None:
    assert config(CRM_DATA_DIR="/tmp/crm-data").data_dir == Path("/tmp/crm-data")


def test_an_external_broker_replaces_the_embedded_one() -> None:
    parsed = config(CRM_KAFKA_BOOTSTRAP="kafka:9092", CRM_BROKER_PORT="8001")

    assert not parsed.embedded_broker
    assert parsed.bootstrap == "kafka:9092"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CRM_BROKER_PORT", "ninety", "not an integer"),
        ("CRM_CONTACTS_PORT", "0", "at least 1"),
        ("CRM_SCORING_PORT", "70000", "not a TCP port"),
        ("CRM_TOPIC_PARTITIONS", "-2", "at least 1"),
    ],
)
def test_invalid_numbers_are_refused(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}.*{message}"):
        config(**{name: value})


def test_blank_variables_mean_the_default() -> None:
    parsed = config(CRM_BROKER_PORT=" ", CRM_KAFKA_BOOTSTRAP="")

    assert parsed.embedded_broker
    assert parsed.broker_port == 9092


def test_two_services_on_one_port_are_refused() -> None:
    with pytest.raises(ConfigError, match="8002: contacts, lifecycle"):
        config(CRM_CONTACTS_PORT="8002")


def test_a_service_on_the_broker_port_is_refused_only_with_the_embedded_broker() -> None:
    with pytest.raises(ConfigError, match=r"9092: .*broker"):
        config(CRM_SCORING_PORT="9092")

    assert config(CRM_SCORING_PORT="9092", CRM_KAFKA_BOOTSTRAP="kafka:9092").ports["scoring"]


def test_help_documents_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])

    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    variables = [
        "CRM_KAFKA_BOOTSTRAP",
        "CRM_BROKER_PORT",
        "CRM_TOPIC_PARTITIONS",
        "CRM_DATA_DIR",
        *(f"CRM_{name.upper()}_PORT" for name in SERVICES),
    ]
    assert [name for name in variables if name not in text] == []


def test_the_development_secret_is_made_once_kept_private_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRM_AUTH_JWT_SECRET", raising=False)
    secret = devstack._dev_secret(tmp_path)
    assert len(secret) >= 32 and devstack._dev_secret(tmp_path) == secret
    assert (tmp_path / "dev-secret").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("CRM_AUTH_JWT_SECRET", "from-the-environment-" + "x" * 20)
    assert devstack._dev_secret(tmp_path).startswith("from-the-environment-")
