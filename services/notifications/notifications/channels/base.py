"""What every delivery channel takes and gives back.

A channel turns one rendered `Message` into one delivery attempt (with whatever retries
it does inside) and answers with a `SendResult`. It never raises for a delivery problem
(a refused recipient, a server that is down, a paused endpoint): the dispatcher decides
from `ok` and `retryable` whether to record the delivery as sent, schedule it again or
give it up. An exception out of `send` means a programming error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class Message:
    """One rendered notification for one recipient on one channel."""

    delivery_id: str
    to: str
    subject: str | None
    body: str
    channel: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    """How a send went; `retryable` says whether the same message may succeed later."""

    ok: bool
    detail: str
    retryable: bool

    @classmethod
    def sent(cls, detail: str) -> SendResult:
        return cls(ok=True, detail=detail, retryable=False)

    @classmethod
    def failed(cls, detail: str, *, retryable: bool) -> SendResult:
        return cls(ok=False, detail=detail, retryable=retryable)


class Channel(Protocol):
    """A way to reach a recipient: email, a webhook, an SMS or push gateway, the log."""

    name: str

    async def send(self, message: Message) -> SendResult:
        """Deliver `message`; answer how it went instead of raising."""
        ...


class ChannelPaused(Exception):
    """A channel's endpoint is paused after repeated failures.

    Channels themselves answer a retryable `SendResult` while paused; this is for callers
    that would rather stop a whole batch than hand each message to a paused channel.
    """

    def __init__(self, channel: str, until: datetime) -> None:
        super().__init__(f"channel {channel} paused until {until.isoformat()}")
        self.channel = channel
        self.until = until
