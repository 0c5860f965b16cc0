"""A real SMTP server for tests (aiosmtpd) that keeps what it receives."""

from __future__ import annotations

import email
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from crm_shared.testing.stack import Stack


@dataclass
class Mailbox:
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for m in self.received if m["To"] == address]


@contextmanager
def mailbox() -> Iterator[Mailbox]:
    """An SMTP server on a free local port, for the duration of the block."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    box = Mailbox(port=port)
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def journey_env(box: Mailbox, prefix: str) -> dict[str, str]:
    """The settings of a whole-stack journey that mails through `box`: event-time clock,
    millisecond delivery, a dispatcher every 0.2 s and no quiet hours (the clock is today's,
    at whatever hour the test runs); topics under `prefix`."""
    return {
        "CRM_FETCH_MAX_WAIT_MS": "10",
        "CRM_CLOCK": "event-time",
        "CRM_TOPIC_PREFIX": prefix,
        "CRM_SMTP_HOST": box.host,
        "CRM_SMTP_PORT": str(box.port),
        "CRM_DISPATCH_INTERVAL_S": "0.2",
        "CRM_SAFEGUARDS": '{"quiet_start": "00:00", "quiet_end": "00:00"}',
    }


@asynccontextmanager
async def mailing_stack(
    services: list[str], *, bootstrap: str, box: Mailbox, data_dir: Path
) -> AsyncIterator[Stack]:
    """These services as processes, mailing through `box` (`journey_env`), on topics of
    their own."""
    env = journey_env(box, f"j{uuid.uuid4().hex[:8]}.")
    async with Stack(services, bootstrap=bootstrap, data_dir=data_dir, env=env) as stack:
        yield stack
