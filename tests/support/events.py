"""Builders of test events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_shared.events import CATALOG, CloudEvent, Event, EventData

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def purchase_json(
    customer: str,
    *,
    day: float = 0,
    amount: str = "10.00",
    event_id: str | None = None,
    start: datetime = T0,
) -> dict[str, Any]:
    """A purchase as another system would send it (CloudEvents structured JSON)."""
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "test/shop",
        "type": "crm.purchase.completed.v1",
        "subject": customer,
        "time": (start + timedelta(days=day)).isoformat(),
        "data": {"order_id": uuid.uuid4().hex[:8], "amount": amount, "currency": "EUR"},
    }


def login_json(customer: str, *, day: int = 0) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "test/app",
        "type": "crm.session.started.v1",
        "subject": customer,
        "time": (T0 + timedelta(days=day)).isoformat(),
        "data": {"channel": "web"},
    }


def purchase(customer: str, *, day: int = 0, event_id: str | None = None) -> Event[EventData]:
    return CATALOG.validate(
        CloudEvent.model_validate(purchase_json(customer, day=day, event_id=event_id))
    )


def envelope(customer: str = "c1", *, day: int = 0) -> CloudEvent:
    return CloudEvent.model_validate(purchase_json(customer, day=day))
