"""The CDNOW master file as purchase CloudEvents: the same loaders the tests use, so a bench
replay and the tests see the same rows, ids and order."""

from __future__ import annotations

from tests.support.cdnow import (
    Purchase,
    load_master,
    master_path,
    purchase_event,
    purchase_events,
    purchase_times_by_customer,
)

__all__ = [
    "Purchase",
    "load_master",
    "master_path",
    "purchase_event",
    "purchase_events",
    "purchase_times_by_customer",
]
