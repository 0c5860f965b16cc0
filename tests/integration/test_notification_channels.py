"""Delivery channels against real local servers: SMTP (aiosmtpd) and HTTP."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from crm_shared.app.logging import JsonFormatter
from notifications.channels.base import Message
from notifications.channels.email import EmailChannel
from notifications.channels.log import LogChannel
from notifications.channels.webhook import WebhookChannel, verify_signature
from tests.support.http_server import Reply, ScriptedHttpServer

SENDER = "Shop CRM <crm@shop.example>"
SECRET = "s3cret-shared-with-the-receiver"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def a_message(**changes: Any) -> Message:
    fields: dict[str, Any] = {
        "delivery_id": "dlv-0001",
        "to": "zoe@example.org",
        "subject": "Happy birthday, Zoë!",
        "body": "Hi Zoë,\n\nEveryone here wishes you a wonderful day.\n",
        "channel": "email",
        "metadata": {"unsubscribe_url": "https://shop.example/u/abc"},
    }
    fields.update(changes)
    return Message(**fields)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- SMTP ---------------------------------------------------------------------------------


class SmtpRecorder:
    """An aiosmtpd handler that keeps every message and answers DATA from a script."""

    def __init__(self, replies: Sequence[str]) -> None:
        self.replies = list(replies)
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return self.replies[min(len(self.envelopes), len(self.replies)) - 1]

    def received(self, index: int = -1) -> EmailMessage:
        content = self.envelopes[index].content
        assert isinstance(content, bytes)
        # Read as a mail program would: SMTP's CRLF line ends become plain newlines.
        plain = content.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(plain, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


def accept_only(login: bytes, password: bytes) -> Callable[..., AuthResult]:
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (login, password)
        # handled=False: aiosmtpd answers 235 or 535 itself.
        return AuthResult(success=ok, handled=False)

    return authenticate


class SmtpServer:
    def __init__(self, recorder: SmtpRecorder, port: int) -> None:
        self.recorder = recorder
        self.port = port

    def channel(self, **options: Any) -> EmailChannel:
        return EmailChannel("127.0.0.1", self.port, SENDER, timeout=5, **options)


async def start_smtp(replies: Sequence[str], **smtp_options: Any) -> tuple[SmtpServer, Any]:
    recorder = SmtpRecorder(replies)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, hostname="mx.test", loop=loop, **smtp_options), "127.0.0.1", 0
    )
    return SmtpServer(recorder, server.sockets[0].getsockname()[1]), server


@pytest_asyncio.fixture(loop_scope="session")
async def smtp() -> AsyncIterator[Callable[..., Any]]:
    """Starts real SMTP servers on free ports; stops them after the test."""
    servers: list[asyncio.Server] = []

    async def start(replies: Sequence[str] = ("250 OK queued",), **options: Any) -> SmtpServer:
        started, server = await start_smtp(replies, **options)
        servers.append(server)
        return started

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_an_email_arrives_with_its_headers_and_plain_text_body(smtp: Any) -> None:
    server = await smtp()

    result = await server.channel().send(a_message())

    assert result.ok, result.detail
    envelope = server.recorder.envelopes[0]
    assert envelope.mail_from == "crm@shop.example"
    assert envelope.rcpt_tos == ["zoe@example.org"]
    received = server.recorder.received()
    assert received["From"] == SENDER
    assert received["To"] == "zoe@example.org"
    assert received["Subject"] == "Happy birthday, Zoë!"
    assert received["Message-ID"] == "<dlv-0001@shop.example>"
    assert received["List-Unsubscribe"] == "<https://shop.example/u/abc>"
    assert received["Date"]
    assert received.get_content_type() == "text/plain"
    assert received.get_content() == "Hi Zoë,\n\nEveryone here wishes you a wonderful day.\n"


async def test_an_email_without_an_unsubscribe_url_has_no_list_unsubscribe_header(
    smtp: Any,
) -> None:
    server = await smtp()

    await server.channel().send(a_message(metadata={}))

    assert "List-Unsubscribe" not in server.recorder.received()


async def test_a_delivery_id_with_unusual_characters_still_makes_a_valid_message_id(
    smtp: Any,
) -> None:
    server = await smtp()

    await server.channel().send(a_message(delivery_id="rule 7/cust@42"))

    assert server.recorder.received()["Message-ID"] == "<rule=207=2Fcust=4042@shop.example>"


async def test_a_temporary_smtp_refusal_is_retryable_and_the_retry_keeps_its_message_id(
    smtp: Any,
) -> None:
    server = await smtp(["451 4.3.0 Try again later", "250 OK queued"])
    channel = server.channel()

    first = await channel.send(a_message())
    second = await channel.send(a_message())

    assert (first.ok, first.retryable) == (False, True)
    assert "451" in first.detail
    assert second.ok
    message_ids = {server.recorder.received(i)["Message-ID"] for i in (0, 1)}
    assert message_ids == {"<dlv-0001@shop.example>"}


async def test_a_permanent_smtp_refusal_is_not_retryable(smtp: Any) -> None:
    server = await smtp(["550 5.1.1 No such user here"])

    result = await server.channel().send(a_message())

    assert (result.ok, result.retryable) == (False, False)
    assert "550" in result.detail


async def test_an_unreachable_smtp_server_is_a_retryable_failure_not_an_exception() -> None:
    channel = EmailChannel("127.0.0.1", closed_port(), SENDER, timeout=2)

    result = await channel.send(a_message())

    assert (result.ok, result.retryable) == (False, True)


async def test_the_email_channel_logs_in_with_its_credentials(smtp: Any) -> None:
    auth = {"authenticator": accept_only(b"crm", b"pw"), "auth_require_tls": False}
    server = await smtp(**auth)

    good = await server.channel(username="crm", password="pw").send(a_message())
    bad = await server.channel(username="crm", password="wrong").send(a_message())

    assert good.ok, good.detail
    assert (bad.ok, bad.retryable) == (False, False)
    assert len(server.recorder.envelopes) == 1


async def test_a_recipient_with_a_line_break_is_refused_without_reaching_the_server(
    smtp: Any,
) -> None:
    server = await smtp()

    result = await server.channel().send(a_message(to="zoe@example.org\r\nBcc: all@example.org"))

    assert (result.ok, result.retryable) == (False, False)
    assert server.recorder.envelopes == []


# --- log ----------------------------------------------------------------------------------


async def test_the_log_channel_writes_one_json_line_per_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="crm.outreach"):
        result = await LogChannel().send(a_message())

    assert result.ok
    records = [r for r in caplog.records if r.name == "crm.outreach"]
    assert len(records) == 1
    line = JsonFormatter("notifications").format(records[0])
    assert "\n" not in line
    logged = json.loads(line)
    assert logged["delivery_id"] == "dlv-0001"
    assert logged["to"] == "zoe@example.org"
    assert logged["body"].startswith("Hi Zoë")


# --- webhook ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingSleep:
    """Records the delays the channel asks for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class HighestJitter(random.Random):
    """Always draws the top of the jitter range, so the backoff's ceiling shows."""

    def random(self) -> float:
        return 1.0


def webhook(server: ScriptedHttpServer, **options: Any) -> WebhookChannel:
    defaults: dict[str, Any] = {
        "sleep": RecordingSleep(),
        "rng": random.Random(7),
        "wall_clock": lambda: T0,
        "timeout": 2.0,
    }
    defaults.update(options)
    return WebhookChannel(server.url, SECRET, **defaults)


async def test_a_webhook_failing_twice_then_recovering_gets_the_message_after_backoff() -> None:
    sleep = RecordingSleep()
    async with ScriptedHttpServer([Reply(500), Reply(500), Reply(204)]) as server:
        channel = webhook(server, sleep=sleep, rng=HighestJitter(), max_delay=0.5)
        result = await channel.send(a_message())
        await channel.aclose()

    assert result.ok, result.detail
    assert len(server.requests) == 3
    assert len({r.body for r in server.requests}) == 1
    assert sleep.delays == [0.2, 0.4]
    assert all(0 < delay <= 0.5 for delay in sleep.delays)


async def test_backoff_delays_are_jittered_and_never_exceed_max_delay() -> None:
    sleep = RecordingSleep()
    async with ScriptedHttpServer([Reply(503)]) as server:
        channel = webhook(server, sleep=sleep, max_attempts=8, max_delay=1.0)
        result = await channel.send(a_message())
        await channel.aclose()

    assert (result.ok, result.retryable) == (False, True)
    assert len(server.requests) == 8
    ceilings = [min(1.0, 0.2 * 2**n) for n in range(7)]
    assert len(sleep.delays) == 7
    assert all(0 <= d <= c for d, c in zip(sleep.delays, ceilings, strict=True))
    assert len(set(sleep.delays)) == 7  # jittered, not a fixed schedule


async def test_a_webhook_request_carries_a_signature_the_receiver_can_verify() -> None:
    async with ScriptedHttpServer([Reply(200)]) as server:
        channel = webhook(server)
        await channel.send(a_message(channel="sms", to="+4915112345678", subject=None))
        await channel.aclose()

    request = server.requests[0]
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-crm-delivery"] == "dlv-0001"
    assert request.headers["x-crm-timestamp"] == str(int(T0.timestamp()))
    signature = request.headers["x-crm-signature"]
    assert signature.startswith("sha256=")
    assert verify_signature(SECRET, request.body, signature)
    assert not verify_signature("another secret", request.body, signature)
    assert not verify_signature(SECRET, request.body.replace(b"+49", b"+44"), signature)
    assert not verify_signature(SECRET, request.body, None)
    assert json.loads(request.body) == {
        "delivery_id": "dlv-0001",
        "to": "+4915112345678",
        "subject": None,
        "body": "Hi Zoë,\n\nEveryone here wishes you a wonderful day.\n",
        "channel": "sms",
        "metadata": {"unsubscribe_url": "https://shop.example/u/abc"},
    }


async def test_a_webhook_answering_400_is_not_retried() -> None:
    sleep = RecordingSleep()
    async with ScriptedHttpServer([Reply(400, b"bad phone number")]) as server:
        channel = webhook(server, sleep=sleep)
        result = await channel.send(a_message())
        await channel.aclose()

    assert (result.ok, result.retryable) == (False, False)
    assert result.detail == "HTTP 400: bad phone number"
    assert len(server.requests) == 1
    assert sleep.delays == []


async def test_a_webhook_answering_429_is_retried_after_the_time_it_asks_for() -> None:
    sleep = RecordingSleep()
    async with ScriptedHttpServer([Reply(429, headers={"Retry-After": "2"}), Reply(200)]) as server:
        channel = webhook(server, sleep=sleep)
        result = await channel.send(a_message())
        await channel.aclose()

    assert result.ok
    assert sleep.delays == [2.0]


async def test_a_retry_after_longer_than_max_delay_is_cut_to_max_delay() -> None:
    sleep = RecordingSleep()
    async with ScriptedHttpServer(
        [Reply(503, headers={"Retry-After": "3600"}), Reply(200)]
    ) as server:
        channel = webhook(server, sleep=sleep, max_delay=1.5)
        result = await channel.send(a_message())
        await channel.aclose()

    assert result.ok
    assert sleep.delays == [1.5]


async def test_a_webhook_that_does_not_answer_in_time_is_retried() -> None:
    async with ScriptedHttpServer([Reply(hang=True), Reply(200)]) as server:
        channel = webhook(server, timeout=0.2)
        result = await channel.send(a_message())
        await channel.aclose()

    assert result.ok, result.detail
    assert len(server.requests) == 2


async def test_an_unreachable_webhook_is_a_retryable_failure_not_an_exception() -> None:
    sleep = RecordingSleep()
    channel = WebhookChannel(
        f"http://127.0.0.1:{closed_port()}/hook", SECRET, max_attempts=2, sleep=sleep
    )

    result = await channel.send(a_message())
    await channel.aclose()

    assert (result.ok, result.retryable) == (False, True)
    assert "connection" in result.detail
    assert len(sleep.delays) == 1


async def test_a_failing_endpoint_is_paused_visibly_and_tried_again_after_the_pause() -> None:
    clock = FakeClock()
    script = [Reply(500, b"down")] * 3 + [Reply(200)]
    async with ScriptedHttpServer(script) as server:
        url = server.url
        channel = webhook(server, clock=clock, max_attempts=1, pause_after=3, pause_for=60.0)
        for _ in range(3):
            assert not (await channel.send(a_message())).ok
        paused = await channel.send(a_message())
        status = channel.status()
        clock.now += 60.0
        resumed = await channel.send(a_message())
        await channel.aclose()

    assert (paused.ok, paused.retryable) == (False, True)
    assert paused.detail.startswith("endpoint paused until 2026-11-23T09:01:00+00:00")
    assert status == {
        "name": "webhook",
        "url": url,
        "paused_until": (T0 + timedelta(seconds=60)).isoformat(),
        "consecutive_failures": 3,
        "last_error": "HTTP 500: down",
    }
    assert len(server.requests) == 4  # the paused send never reached the endpoint
    assert resumed.ok
    assert channel.status()["paused_until"] is None
    assert channel.status()["consecutive_failures"] == 0


async def test_a_failure_after_the_pause_pauses_the_endpoint_again() -> None:
    clock = FakeClock()
    async with ScriptedHttpServer([Reply(503)]) as server:
        channel = webhook(server, clock=clock, max_attempts=1, pause_after=2, pause_for=30.0)
        for _ in range(2):
            await channel.send(a_message())
        clock.now += 30.0
        await channel.send(a_message())
        again = await channel.send(a_message())
        await channel.aclose()

    assert again.detail.startswith("endpoint paused")
    assert len(server.requests) == 3
    assert channel.status()["consecutive_failures"] == 3


async def test_the_status_of_a_gateway_hides_credentials_in_its_url() -> None:
    channel = WebhookChannel("https://crm:pw@sms.example/send?api_key=abc", SECRET, name="sms")

    status = channel.status()
    await channel.aclose()

    assert status["name"] == "sms"
    assert status["url"] == "https://sms.example/send"
    assert status["paused_until"] is None
