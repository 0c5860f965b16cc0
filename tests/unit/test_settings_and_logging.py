"""Settings from the environment, and JSON logs."""

from __future__ import annotations

import json
import logging

import pytest

from contacts.settings import MAX_EVENT_BYTES, ContactsSettings
from crm_shared.app.logging import JsonFormatter
from lifecycle.settings import LifecycleSettings


def test_defaults_give_each_service_its_port_database_file_and_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CRM_DATABASE_URL", "DATABASE_URL", "CRM_HTTP_PORT", "CRM_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = LifecycleSettings()
    assert settings.http_port == 8002
    assert settings.database_url == "sqlite:///var/lifecycle.db"
    assert settings.consumer_group == "crm-lifecycle"


def test_environment_variables_override_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_HTTP_PORT", "9100")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/contacts")
    monkeypatch.setenv("CRM_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("CRM_INGEST_MAX_EVENTS", "50")
    settings = ContactsSettings()
    assert (settings.http_port, settings.database_url) == (9100, "postgresql://db/contacts")
    assert (settings.kafka_bootstrap, settings.ingest_max_events) == ("kafka:9092", 50)


def test_an_invalid_setting_fails_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRM_FETCH_MAX_WAIT_MS", "0")
    with pytest.raises(ValueError, match="fetch_max_wait_ms"):
        LifecycleSettings()


def test_contacts_refuses_an_event_size_limit_its_broker_messages_could_not_carry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRM_INGEST_MAX_EVENT_BYTES", str(MAX_EVENT_BYTES + 1))
    with pytest.raises(ValueError, match="ingest_max_event_bytes"):
        ContactsSettings()
    monkeypatch.setenv("CRM_INGEST_MAX_EVENT_BYTES", str(MAX_EVENT_BYTES))
    assert ContactsSettings().ingest_max_event_bytes == MAX_EVENT_BYTES


def test_log_records_are_json_objects_with_their_extra_fields() -> None:
    record = logging.LogRecord(
        "crm.test", logging.WARNING, __file__, 1, "batch %s failed", ("b1",), None
    )
    record.consumer = "inbound"
    entry = json.loads(JsonFormatter("contacts").format(record))
    assert entry["message"] == "batch b1 failed" and entry["level"] == "warning"
    assert entry["service"] == "contacts" and entry["consumer"] == "inbound"
