"""A channel that only logs: local runs and demos with no SMTP server or gateway.

Each message becomes one log record on the "crm.outreach" logger with the message's
fields as extras, which the service's JSON formatter writes as one JSON line.
"""

from __future__ import annotations

import logging

from notifications.channels.base import Message, SendResult

log = logging.getLogger("crm.outreach")


class LogChannel:
    """Writes every message to the log and reports it sent."""

    def __init__(self, name: str = "log") -> None:
        self.name = name

    async def send(self, message: Message) -> SendResult:
        log.info(
            "outreach message",
            extra={
                "delivery_id": message.delivery_id,
                "channel": message.channel,
                "to": message.to,
                "subject": message.subject,
                "body": message.body,
                "metadata": message.metadata,
            },
        )
        return SendResult.sent("logged")
