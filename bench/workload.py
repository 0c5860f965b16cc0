"""The events a benchmark sends: purchases as a shop would post them.

Every event has a fresh id. Event `i` of a workload belongs to customer `i % customers` and
is that customer's `i // customers`-th purchase, with event times increasing per customer,
so each batch spreads over many customers and each customer's events stay in time order.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_shared.events import CloudEvent

# Recent times: the services run on the wall clock, and old purchases would read as churned.
T0 = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
PURCHASE = "crm.purchase.completed.v1"
SOURCE = "https://shop.example.com/checkout"


def purchase(customer: str, seq: int = 0) -> dict[str, Any]:
    """One purchase CloudEvent (structured JSON), the `seq`-th of its customer."""
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": SOURCE,
        "type": PURCHASE,
        "subject": customer,
        "time": (T0 + timedelta(minutes=seq)).isoformat(),
        "datacontenttype": "application/json",
        "data": {
            "order_id": f"ord-2026-{uuid.uuid4().hex[:24]}",
            "amount": "49.90",
            "currency": "EUR",
            "channel": "web",
        },
    }


def customer_id(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


@dataclass(frozen=True)
class Workload:
    """`events` purchases spread over `customers` customers whose ids start with `prefix`."""

    prefix: str
    events: int
    customers: int

    @property
    def distinct_customers(self) -> int:
        return min(max(1, self.customers), self.events)

    def generate(self) -> list[dict[str, Any]]:
        customers = max(1, self.customers)
        return [
            purchase(customer_id(self.prefix, i % customers), i // customers)
            for i in range(self.events)
        ]


def http_batches(events: list[dict[str, Any]], size: int) -> list[tuple[int, bytes]]:
    """Request bodies of `application/cloudevents-batch+json`: (event count, JSON array)."""
    return [
        (len(chunk), json.dumps(chunk).encode())
        for chunk in (events[i : i + size] for i in range(0, len(events), size))
    ]


def kafka_records(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs for `crm.inbound`: key = customer id, value = the JSON event."""
    return [(e["subject"].encode(), json.dumps(e).encode()) for e in events]


def canonical_records(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs exactly as contacts' relay publishes them to crm.customer-events."""
    return [(e["subject"].encode(), CloudEvent.model_validate(e).to_json()) for e in events]


def sizes(events: list[dict[str, Any]]) -> dict[str, float]:
    """Mean bytes of one event as posted over HTTP and as published by contacts."""
    sample = events[: min(len(events), 200)] or [purchase("sample-000000")]
    posted = [len(json.dumps(e)) for e in sample]
    published = [len(v) for _, v in canonical_records(sample)]
    return {
        "http_json_bytes": round(sum(posted) / len(posted), 1),
        "published_bytes": round(sum(published) / len(published), 1),
    }
