"""Settings every service reads from the environment (prefix `CRM_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_shared.app.heap import DEFAULT_GEN0_THRESHOLD
from crm_shared.messaging.relay import DEFAULT_MAX_MESSAGE_BYTES


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
    fetch_max_wait_ms: int = Field(
        default=20, ge=1, le=5000, description="how long the broker may hold a fetch"
    )
    fetch_idle_wait_ms: int = Field(
        default=250,
        ge=1,
        le=5000,
        description=(
            "the same once a consumer got nothing for a second (no effect when not above "
            "fetch_max_wait_ms)"
        ),
    )
    consumer_max_records: int = Field(default=2000, ge=1, le=10_000)
    commit_interval_ms: int = Field(
        default=250,
        ge=0,
        le=60_000,
        description=(
            "least time between two offset commits of a consumer while batches keep "
            "coming (idle or stopping, it commits at once)"
        ),
    )
    consumer_group: str = ""
    relay_batch_size: int = Field(default=500, ge=1, le=10_000)
    relay_poll_interval_ms: int = Field(default=100, ge=1)
    relay_max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        le=100 * 1024 * 1024,
        description=(
            "largest message (key, value and headers) the relay sends; a larger one is "
            "parked, not retried (keep it under the broker's message.max.bytes)"
        ),
    )
    heartbeat_interval_s: float = Field(
        default=5.0, gt=0, description="how often the relay checks the broker kept its log"
    )
    migrate_on_start: bool = True
    log_level: str = "INFO"
    log_json: bool = True
    shutdown_timeout_s: float = 10.0
    gc_gen0_threshold: int = Field(
        default=DEFAULT_GEN0_THRESHOLD,
        ge=0,
        description=(
            "objects allocated (net) between young-generation garbage collections (0: the "
            "interpreter's default, 700); the start-up heap is frozen either way"
        ),
    )

    # Authentication: bearer JWTs, HS256 with a shared secret and/or RS256 from a JWKS.
    auth_disabled: bool = Field(
        default=False, description="serve without authentication (never in production)"
    )
    auth_jwt_secret: str = Field(default="", description="HS256 shared secret")
    auth_jwks_url: str = Field(default="", description="RS256 keys: a JWKS document URL")
    auth_jwks_file: str = Field(default="", description="RS256 keys: a JWKS document file")
    auth_issuer: str = Field(default="crm", description="the `iss` every token must carry")
    auth_audience: str = Field(default="crm-api", description="the `aud` tokens must name")
    auth_leeway_s: float = Field(default=30.0, ge=0, le=600, description="clock skew allowed")
    docs_public: bool = Field(
        default=True, description="serve /docs, /openapi.json and /asyncapi.json without a token"
    )
    opentelemetry: bool = Field(
        default=False,
        description=(
            "FastAPI's native OpenTelemetry spans and metrics, for a process that configures an "
            "OpenTelemetry SDK (off: it costs every request a look at the environment)"
        ),
    )
    # Request limits and browsers.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="request body cap")
    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed to call from a browser (JSON list)"
    )

    def model_post_init(self, _context: object) -> None:
        if not self.http_port:
            self.http_port = self.default_port
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir}/{self.service_name}.db"
        if not self.consumer_group:
            self.consumer_group = f"{self.topic_prefix}crm-{self.service_name}"
