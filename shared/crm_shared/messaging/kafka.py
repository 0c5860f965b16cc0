"""Kafka clients configured the way every service uses them.

Idempotent and transactional producers are not used: the embedded broker does not support
them, and exactly-once effects come from the outbox and inbox instead.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

HEADER_SEQ = "crm-seq"
HEADER_CONTENT_TYPE = "content-type"


def make_producer(bootstrap: str, *, client_id: str, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 1,
        "request_timeout_ms": 10_000,
        "max_request_size": 1_048_576,
        # A relay round (500 ~370-byte records) fits one batch per partition, not three
        # that wait for each other (bench/relay.py: relay 22 against 25 us a message).
        "max_batch_size": 131_072,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    topics: list[str],
    *,
    bootstrap: str,
    group_id: str,
    client_id: str,
    fetch_max_wait_ms: int,
    max_records: int,
    **overrides: Any,
) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "client_id": client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "max_poll_records": max_records,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 2_000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def set_fetch_wait(consumer: AIOKafkaConsumer, ms: int) -> bool:
    """Change how long the broker may hold the consumer's next fetch requests (aiokafka
    reads its fetcher's `_fetch_max_wait_ms` for every request it builds and offers no
    public setter). False if this aiokafka has no such attribute: the wait stays as made."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        return False
    fetcher._fetch_max_wait_ms = ms
    return True


def encode_headers(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    return [(name, value.encode()) for name, value in headers.items()]


def decode_headers(headers: Any) -> dict[str, str]:
    """Header values as text (a null value, which Kafka allows, as empty)."""
    return {name: (value or b"").decode(errors="replace") for name, value in (headers or ())}
