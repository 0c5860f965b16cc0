"""Signed JSON webhooks; SMS and push go through the same class.

Each message is POSTed as JSON ``{delivery_id, to, subject, body, channel, metadata}``
with three headers:

- ``X-CRM-Signature: sha256=<hex>``: HMAC-SHA256 of the exact body bytes, keyed with the
  shared secret. Receivers check it with `verify_signature` before parsing the body.
- ``X-CRM-Timestamp``: Unix seconds of this attempt (not covered by the signature; a
  receiver de-duplicates on the delivery id, which is).
- ``X-CRM-Delivery``: the delivery id, the same on every attempt.

One `send` retries 5xx, 408, 429, timeouts and connection errors up to `max_attempts`
times with exponential backoff and full jitter (a delay drawn uniformly between 0 and
``min(max_delay, base_delay * 2**n)``; a longer ``Retry-After`` is honoured up to
`max_delay`). Other 4xx replies are the message's fault and are not retried.

After `pause_after` consecutive failed sends the endpoint is paused for `pause_for`
seconds: sends answer a retryable "endpoint paused until ..." at once, without calling it,
and `status()` shows the pause so an operator sees it. The first send after the pause
tries the endpoint again; a failure pauses it again, a success clears the failures.
The pause lives in this object (one per process), not in the database.

SMS and push: an SMS or push provider is reached through a gateway that speaks this
webhook (it verifies the signature and relays to the provider), one instance each:
``WebhookChannel(sms_gateway_url, secret, name="sms")``, ``WebhookChannel(push_url,
secret, name="push")``. The recipient (`to`) is then a phone number or a device token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import httpx

from notifications.channels.base import Message, SendResult

SIGNATURE_HEADER = "X-CRM-Signature"
TIMESTAMP_HEADER = "X-CRM-Timestamp"
DELIVERY_HEADER = "X-CRM-Delivery"
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


def sign(secret: str | bytes, body: bytes) -> str:
    """The signature header's value for `body`: ``sha256=<hex digest>``."""
    return "sha256=" + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body` under `secret` (constant time)."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def encode_message(message: Message) -> bytes:
    """The request body; deterministic, so every attempt sends (and signs) the same bytes."""
    payload = {
        "delivery_id": message.delivery_id,
        "to": message.to,
        "subject": message.subject,
        "body": message.body,
        "channel": message.channel,
        "metadata": message.metadata,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _utc_now() -> datetime:
    return datetime.now(UTC)


class EndpointStatus(TypedDict):
    """What `WebhookChannel.status()` shows: ``paused_until`` is ISO 8601 UTC or None."""

    name: str
    url: str
    paused_until: str | None
    consecutive_failures: int
    last_error: str | None


@dataclass(frozen=True)
class _Attempt:
    """One HTTP exchange: its result and how long the endpoint asked us to wait."""

    result: SendResult
    retry_after: float | None = None


class WebhookChannel:
    """POSTs signed messages to one URL, with retries and a pause for a failing endpoint."""

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        name: str = "webhook",
        timeout: float = 5.0,
        max_attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
        pause_after: int = 3,
        pause_for: float = 60.0,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if max_attempts < 1 or pause_after < 1:
            raise ValueError("max_attempts and pause_after must be at least 1")
        self.name = name
        self.url = url
        self._secret = _key(secret)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._pause_after = pause_after
        self._pause_for = pause_for
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self._consecutive_failures = 0
        self._last_error: str | None = None
        # The pause's end on `clock` (monotonic: it decides) and on the wall (shown).
        self._pause: tuple[float, datetime] | None = None

    async def send(self, message: Message) -> SendResult:
        paused_until = self._paused_until()
        if paused_until is not None:
            detail = f"endpoint paused until {paused_until} ({self._last_error})"
            return SendResult.failed(detail, retryable=True)
        result = await self._deliver(encode_message(message), message.delivery_id)
        self._record(result)
        return result

    def status(self) -> EndpointStatus:
        """The endpoint's health for the API: is it paused, and why."""
        return {
            "name": self.name,
            "url": _displayable(self.url),
            "paused_until": self._paused_until(),
            "consecutive_failures": self._consecutive_failures,
            "last_error": self._last_error,
        }

    async def aclose(self) -> None:
        """Close the HTTP client if this channel made it (a passed-in one is the caller's)."""
        if self._owns_client:
            await self._client.aclose()

    async def _deliver(self, body: bytes, delivery_id: str) -> SendResult:
        outcome = await self._attempt(body, delivery_id)
        for attempt in range(1, self._max_attempts):
            if outcome.result.ok or not outcome.result.retryable:
                break
            await self._sleep(self.backoff(attempt, outcome.retry_after))
            outcome = await self._attempt(body, delivery_id)
        return outcome.result

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
        delay = self._rng.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self._max_delay)

    async def _attempt(self, body: bytes, delivery_id: str) -> _Attempt:
        try:
            response = await self._client.post(
                self.url,
                content=body,
                headers=self._headers(body, delivery_id),
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            return _Attempt(SendResult.failed(f"timeout: {exc!r}", retryable=True))
        except httpx.TransportError as exc:
            return _Attempt(SendResult.failed(f"connection error: {exc!r}", retryable=True))
        return _classify(response)

    def _headers(self, body: bytes, delivery_id: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            TIMESTAMP_HEADER: str(int(self._wall_clock().timestamp())),
            DELIVERY_HEADER: delivery_id,
        }

    def _record(self, result: SendResult) -> None:
        if result.ok:
            self._consecutive_failures = 0
            return
        self._consecutive_failures += 1
        self._last_error = result.detail
        if self._consecutive_failures >= self._pause_after:
            wall_end = self._wall_clock() + timedelta(seconds=self._pause_for)
            self._pause = (self._clock() + self._pause_for, wall_end)

    def _paused_until(self) -> str | None:
        """When the pause ends (ISO 8601, UTC), or None when the endpoint is not paused."""
        if self._pause is None or self._clock() >= self._pause[0]:
            return None
        return self._pause[1].isoformat()


def _classify(response: httpx.Response) -> _Attempt:
    status = response.status_code
    if 200 <= status < 300:
        return _Attempt(SendResult.sent(f"HTTP {status}"))
    reason = response.text[:200].strip()
    detail = f"HTTP {status}: {reason}" if reason else f"HTTP {status}"
    retryable = status >= 500 or status in RETRYABLE_CLIENT_ERRORS
    return _Attempt(SendResult.failed(detail, retryable=retryable), _retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, when given as seconds (the HTTP-date form is ignored)."""
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _displayable(url: str) -> str:
    """The URL without credentials or query: gateways often carry an API key there."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))
