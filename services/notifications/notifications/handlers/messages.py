"""The `crm.outreach` events that tell the customer's timeline what happened to a message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from crm_shared.events import CloudEvent, new_event

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
    )
