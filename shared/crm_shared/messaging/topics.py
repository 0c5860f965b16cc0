"""Topic names and idempotent topic creation.

Topics are created explicitly, with a fixed partition count, before any client asks for
their metadata: a metadata request for an unknown topic makes some brokers (the embedded
one among them) auto-create it with their own default partition count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

INBOUND = "crm.inbound"
CUSTOMER_EVENTS = "crm.customer-events"
LIFECYCLE = "crm.lifecycle"
SCORES = "crm.scores"
OUTREACH = "crm.outreach"
# Relays write a tiny record here now and then: its offset going back means the broker
# lost its log, and the outbox must be published again.
HEARTBEAT = "crm.heartbeat"

MAIN_TOPICS: tuple[str, ...] = (INBOUND, CUSTOMER_EVENTS, LIFECYCLE, SCORES, OUTREACH)
TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


def dlq_topic(topic: str) -> str:
    """The dead-letter twin of a topic."""
    return f"{topic}.dlq"


def with_dlq(topics: Iterable[str]) -> list[str]:
    """Each topic followed by its dead-letter twin."""
    return [name for topic in topics for name in (topic, dlq_topic(topic))]


ALL_TOPICS: tuple[str, ...] = tuple(with_dlq(MAIN_TOPICS))


async def ensure_topics(
    bootstrap: str, topics: Iterable[str], *, partitions: int, replication: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    wanted = list(dict.fromkeys(topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication) for name in wanted]
        )
    finally:
        await admin.close()
    created = []
    for topic, code, message in _topic_errors(response):
        if code == 0:
            created.append(topic)
        elif code != TOPIC_ALREADY_EXISTS:
            raise RuntimeError(f"cannot create topic {topic}: error {code} {message}")
    if created:
        log.info("created topics", extra={"topics": created, "partitions": partitions})
    return created


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    return [(t[0], t[1], t[2] if len(t) > 2 else None) for t in response.topic_errors]  # type: ignore[attr-defined]
