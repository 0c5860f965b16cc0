"""A customer's sufficient statistics, updated in O(1) per event.

Purchases keep what the value models need (repeat purchase days, first and last purchase,
spend); service signals keep open tickets, the latest NPS and CSAT, and engagement as two
exponentially decayed counters (a short and a long memory) whose ratio is the trend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

SHORT_DAYS = 14.0
LONG_DAYS = 90.0
ENGAGEMENT = ("crm.session.started.v1", "crm.outreach.responded.v1")


@dataclass(frozen=True, slots=True)
class CustomerStats:
    customer_id: str
    first_seen: datetime
    purchases: int = 0
    purchase_days: int = 0
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    first_day_spend: Decimal = Decimal(0)
    total_spend: Decimal = Decimal(0)
    refunds: int = 0
    refunded: Decimal = Decimal(0)
    open_tickets: int = 0
    latest_nps: int | None = None
    latest_csat: int | None = None
    feedback_at: datetime | None = None
    engagement_short: float = 0.0
    engagement_long: float = 0.0
    engagement_at: datetime | None = None
    stage: str | None = None

    @property
    def repeat_purchases(self) -> int:
        """BG/NBD's frequency: purchase days after the first."""
        return max(0, self.purchase_days - 1)

    @property
    def repeat_mean_spend(self) -> Decimal | None:
        """The Gamma-Gamma model's m_x: spend per repeat purchase day (the first day's spend
        left out), the reading that reproduces the published CDNOW fit."""
        if self.repeat_purchases < 1:
            return None
        return (self.total_spend - self.first_day_spend) / self.repeat_purchases

    def engagement_trend(self, now: datetime) -> float | None:
        """Recent engagement rate over long-run rate: above 1 rising, below 1 falling."""
        short, long = decayed(self, now)
        if long <= 0:
            return None
        return (short / SHORT_DAYS) / (long / LONG_DAYS)


def apply(
    stats: CustomerStats | None,
    customer_id: str,
    event_type: str,
    at: datetime,
    data: dict[str, Any],
) -> CustomerStats:
    """One event's effect on the statistics."""
    stats = stats or CustomerStats(customer_id, at)
    if at < stats.first_seen:
        stats = replace(stats, first_seen=at)
    if event_type == "crm.purchase.completed.v1":
        return _purchase(stats, at, Decimal(str(data["amount"])))
    if event_type == "crm.purchase.refunded.v1":
        return replace(
            stats, refunds=stats.refunds + 1, refunded=stats.refunded + Decimal(str(data["amount"]))
        )
    if event_type == "crm.ticket.opened.v1":
        return replace(stats, open_tickets=stats.open_tickets + 1)
    if event_type == "crm.ticket.resolved.v1":
        return replace(stats, open_tickets=max(0, stats.open_tickets - 1))
    if event_type == "crm.feedback.submitted.v1":
        return _feedback(stats, at, data)
    if event_type in ENGAGEMENT:
        return _engaged(stats, at)
    if event_type == "crm.lifecycle.stage_changed.v1":
        return replace(stats, stage=data["to_stage"])
    return stats


def _purchase(stats: CustomerStats, at: datetime, amount: Decimal) -> CustomerStats:
    first, last = stats.first_purchase_at, stats.last_purchase_at
    known_day = (first is not None and at.date() == first.date()) or (
        last is not None and at.date() == last.date()
    )
    if first is None or at.date() < first.date():
        first_at, first_day_spend = at, amount  # a new first day: the old one became a repeat
    else:
        first_at = min(first, at)
        same = at.date() == first.date()
        first_day_spend = stats.first_day_spend + (amount if same else 0)
    return replace(
        stats,
        purchases=stats.purchases + 1,
        purchase_days=stats.purchase_days + (0 if known_day else 1),
        first_purchase_at=first_at,
        first_day_spend=first_day_spend,
        last_purchase_at=at if last is None or at > last else last,
        total_spend=stats.total_spend + amount,
    )


def _feedback(stats: CustomerStats, at: datetime, data: dict[str, Any]) -> CustomerStats:
    if stats.feedback_at is not None and at < stats.feedback_at:
        return stats  # an older answer does not replace the latest one
    nps, csat = data.get("nps"), data.get("csat")
    return replace(
        stats,
        feedback_at=at,
        latest_nps=stats.latest_nps if nps is None else nps,
        latest_csat=stats.latest_csat if csat is None else csat,
    )


def _engaged(stats: CustomerStats, at: datetime) -> CustomerStats:
    if stats.engagement_at is None or at >= stats.engagement_at:
        short, long = decayed(stats, at)
        return replace(
            stats, engagement_short=short + 1, engagement_long=long + 1, engagement_at=at
        )
    # A late event adds what it would weigh now instead of decaying backwards.
    age = (stats.engagement_at - at).total_seconds() / 86400
    return replace(
        stats,
        engagement_short=stats.engagement_short + math.exp(-age / SHORT_DAYS),
        engagement_long=stats.engagement_long + math.exp(-age / LONG_DAYS),
    )


def decayed(stats: CustomerStats, now: datetime) -> tuple[float, float]:
    """The engagement counters decayed to `now`."""
    if stats.engagement_at is None:
        return 0.0, 0.0
    age = max(0.0, (now - stats.engagement_at).total_seconds() / 86400)
    return (
        stats.engagement_short * math.exp(-age / SHORT_DAYS),
        stats.engagement_long * math.exp(-age / LONG_DAYS),
    )


def merged(survivor: CustomerStats, other: CustomerStats) -> CustomerStats:
    """One customer's statistics from two (a merge): counts add up, extremes combine.
    Purchase days that both had count twice: the merge cannot see overlaps in O(1)."""
    first = min(
        (s for s in (survivor, other) if s.first_purchase_at),
        key=lambda s: s.first_purchase_at or s.first_seen,
        default=None,
    )
    lasts = [s.last_purchase_at for s in (survivor, other) if s.last_purchase_at]
    feedback = (
        other
        if (
            other.feedback_at
            and (not survivor.feedback_at or other.feedback_at > survivor.feedback_at)
        )
        else survivor
    )
    moment = max(s.engagement_at or s.first_seen for s in (survivor, other))
    (s_short, s_long), (o_short, o_long) = decayed(survivor, moment), decayed(other, moment)
    return replace(
        survivor,
        first_seen=min(survivor.first_seen, other.first_seen),
        purchases=survivor.purchases + other.purchases,
        purchase_days=survivor.purchase_days + other.purchase_days,
        first_purchase_at=first.first_purchase_at if first else None,
        first_day_spend=first.first_day_spend if first else Decimal(0),
        last_purchase_at=max(lasts, default=None),
        total_spend=survivor.total_spend + other.total_spend,
        refunds=survivor.refunds + other.refunds,
        refunded=survivor.refunded + other.refunded,
        open_tickets=survivor.open_tickets + other.open_tickets,
        latest_nps=feedback.latest_nps,
        latest_csat=feedback.latest_csat,
        feedback_at=feedback.feedback_at,
        engagement_short=s_short + o_short,
        engagement_long=s_long + o_long,
        engagement_at=moment if (survivor.engagement_at or other.engagement_at) else None,
    )
