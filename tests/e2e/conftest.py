"""Fixtures of the end-to-end journeys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mailbox import Mailbox, mailbox


@pytest.fixture(scope="module")
def smtp() -> Iterator[Mailbox]:
    """An SMTP server that keeps what it receives, one per test module."""
    with mailbox() as box:
        yield box
