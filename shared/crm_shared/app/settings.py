"""Settings every service reads from the environment (prefix `CRM_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Common settings; each service subclasses it with its name and default port."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore", populate_by_name=True)

    service_name: ClassVar[str] = "service"
    default_port: ClassVar[int] = 8000

    http_host: str = "127.0.0.1"
    http_port: int = 0
    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("CRM_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy URL; default: a SQLite file <data_dir>/<service>.db",
    )
    data_dir: str = "var"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_partitions: int = Field(default=4, ge=1)
    topic_prefix: str = Field(
        default="", max_length=100, description="put before every topic name (e.g. staging.)"
    )
    create_topics: bool = True
    fetch_max_wait_ms: int = Field(default=20, ge=1, le=5000)
    consumer_max_records: int = Field(default=2000, ge=1, le=10_000)
    consumer_group: str = ""
    relay_batch_size: int = Field(default=500, ge=1, le=10_000)
    relay_poll_interval_ms: int = Field(default=100, ge=1)
    heartbeat_interval_s: float = Field(
        default=5.0, gt=0, description="how often the relay checks the broker kept its log"
    )
    migrate_on_start: bool = True
    log_level: str = "INFO"
    log_json: bool = True
    shutdown_timeout_s: float = 10.0

    def model_post_init(self, _context: object) -> None:
        if not self.http_port:
            self.http_port = self.default_port
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir}/{self.service_name}.db"
        if not self.consumer_group:
            self.consumer_group = f"{self.topic_prefix}crm-{self.service_name}"
