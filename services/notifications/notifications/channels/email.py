"""Email over SMTP (aiosmtplib), one connection per message.

The Message-ID is derived from the delivery id, so a retried delivery carries the same
Message-ID as its first attempt and a receiving system can recognise the duplicate.
SMTP's own classes of reply decide `retryable`: 4xx replies, timeouts and connection
problems are transient, 5xx replies are permanent.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import aiosmtplib

from notifications.channels.base import Message, SendResult

# Message-ID's local part must be a dot-atom; keeping only these characters and escaping
# every other byte as =XX (with "=" escaped too) keeps distinct delivery ids distinct.
_MSGID_SAFE = re.compile(r"[A-Za-z0-9_-]")


class EmailChannel:
    """Sends plain-text email through one SMTP server."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 10,
        name: str = "email",
    ) -> None:
        self.name = name
        self._host = host
        self._port = port
        self._sender = sender
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout

    async def send(self, message: Message) -> SendResult:
        try:
            email = build_email(message, self._sender)
        except ValueError as exc:  # e.g. a line break in an address: the data is at fault
            return SendResult.failed(f"invalid message: {exc}", retryable=False)
        try:
            _, reply = await aiosmtplib.send(
                email,
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                start_tls=self._starttls,
                timeout=self._timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            return smtp_failure(exc)
        return SendResult.sent(reply)


def build_email(message: Message, sender: str) -> EmailMessage:
    """The email for `message`: headers, a Message-ID from its delivery id, a text body."""
    email = EmailMessage()
    email["From"] = sender
    email["To"] = message.to
    if message.subject is not None:
        email["Subject"] = message.subject
    email["Date"] = formatdate(localtime=False, usegmt=True)
    email["Message-ID"] = message_id(message.delivery_id, sender)
    unsubscribe = message.metadata.get("unsubscribe_url")
    if unsubscribe:
        email["List-Unsubscribe"] = f"<{unsubscribe}>"
    email.set_content(message.body)
    return email


def message_id(delivery_id: str, sender: str) -> str:
    """`<delivery-id@sender's domain>`: the same for every attempt at one delivery."""
    local = "".join(
        ch if _MSGID_SAFE.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode())
        for ch in delivery_id
    )
    domain = parseaddr(sender)[1].rpartition("@")[2] or "crm.invalid"
    return f"<{local}@{domain}>"


def smtp_failure(exc: Exception) -> SendResult:
    """The result for an SMTP error: transient (4xx, network) or permanent (5xx)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [refused.code for refused in exc.recipients]
        return SendResult.failed(f"recipients refused: {exc}", retryable=all_transient(codes))
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return SendResult.failed(f"SMTP {exc.code}: {exc.message}", retryable=exc.code < 500)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        # The server lacks something we are configured to use (STARTTLS, AUTH): a
        # retry meets the same server, so only a configuration change helps.
        return SendResult.failed(f"SMTP: {exc}", retryable=False)
    return SendResult.failed(f"SMTP unreachable: {exc!r}", retryable=True)


def all_transient(codes: list[int]) -> bool:
    return bool(codes) and all(400 <= code < 500 for code in codes)
