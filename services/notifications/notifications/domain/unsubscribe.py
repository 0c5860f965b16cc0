"""Signed unsubscribe tokens: a link in every marketing message that records the opt-out
without a login, and cannot be forged for another customer."""

from __future__ import annotations

import base64
import hashlib
import hmac


class BadToken(ValueError):
    pass


def make_token(secret: str, customer_id: str, channel: str = "email") -> str:
    payload = f"{customer_id}\n{channel}".encode()
    signature = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
    return _b64(payload) + "." + _b64(signature)


def read_token(secret: str, token: str) -> tuple[str, str]:
    """(customer id, channel) of a genuine token; BadToken otherwise."""
    try:
        payload_part, signature_part = token.split(".", 1)
        payload, signature = _unb64(payload_part), _unb64(signature_part)
    except ValueError:
        raise BadToken("not an unsubscribe token") from None
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(signature, expected):
        raise BadToken("the token's signature does not match")
    customer_id, _, channel = payload.decode().partition("\n")
    return customer_id, channel


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
