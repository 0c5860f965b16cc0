"""The `crm.outreach` events that tell the customer's timeline what happened to a message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from crm_shared import tracecontext
from crm_shared.events import CloudEvent, new_event
from crm_shared.messaging.topics import OUTREACH
from crm_shared.store.outbox import OutgoingMessage
from crm_shared.tracecontext import TraceContext

SOURCE = "crm/notifications"
TYPES = {
    "sent": "crm.outreach.sent.v1",
    "suppressed": "crm.outreach.suppressed.v1",
    "failed": "crm.outreach.failed.v1",
}


def outreach_event(
    delivery: dict[str, Any],
    outcome: Literal["sent", "suppressed", "failed"],
    *,
    reason: str | None = None,
    error: str | None = None,
    at: datetime | None = None,
) -> CloudEvent:
    data: dict[str, Any] = {
        "delivery_id": delivery["id"],
        "rule_id": delivery["rule_id"],
        "channel": delivery["channel"],
    }
    if outcome == "sent":
        data["template"] = delivery["template"]
    elif outcome == "suppressed":
        data["reason"] = (reason or "suppressed")[:500]
    else:
        data["error"] = (error or "failed")[:2000]
    return new_event(
        type=TYPES[outcome],
        source=SOURCE,
        subject=delivery["customer_id"],
        time=at or datetime.now(UTC),
        id=f"{delivery['id']}:{outcome}",
        data=data,
        trace=delivery_trace(delivery),
    )


def suppressed_message(
    delivery: dict[str, Any], reason: str | None, *, at: datetime | None = None
) -> OutgoingMessage:
    """The `crm.outreach.suppressed.v1` message for a delivery, keyed by its customer."""
    event = outreach_event(delivery, "suppressed", reason=reason, at=at)
    return OutgoingMessage(OUTREACH, delivery["customer_id"], event)


def delivery_trace(delivery: dict[str, Any]) -> TraceContext | None:
    """The trace of the event that triggered the message, kept with the delivery."""
    trigger = (delivery.get("context") or {}).get("trigger") or {}
    return tracecontext.parse(trigger.get("traceparent"))
