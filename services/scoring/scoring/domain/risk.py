"""Churn risk: 1 - P(alive), adjusted by what the customer's service signals say.

The weights are data (`RiskWeights`), documented here and overridable by configuration:

| factor | when | contribution |
|---|---|---|
| `p_alive` | always | `1 - P(alive)` |
| `detractor` | latest NPS 0-6 | +0.15 (`detractor`) |
| `unhappy` | latest CSAT 1-2 | +0.10 (`unhappy`) |
| `promoter` | latest NPS 9-10 | -0.05 (`promoter`) |
| `open_tickets` | unresolved tickets | +0.05 each (`per_open_ticket`), at most +0.15 |
| `refunds` | refunded share of spend | share x 0.5 (`refund_share`), at most +0.15 |
| `falling_engagement` | engagement trend below 0.5 (`falling_below`) | +0.10 |

The trend is the recent engagement rate over the long-run one. The sum is clipped to
[0, 1]. Bands: low below 0.3, medium below 0.6, high from 0.6. Every score carries each
factor's contribution, so the number can be explained and reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from scoring.domain.stats import CustomerStats

Band = Literal["low", "medium", "high"]


class RiskWeights(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    detractor: float = 0.15
    unhappy: float = 0.10
    promoter: float = -0.05
    per_open_ticket: float = 0.05
    max_open_tickets: float = 0.15
    refund_share: float = 0.5
    max_refunds: float = 0.15
    falling_engagement: float = 0.10
    falling_below: float = 0.5
    medium_from: float = 0.3
    high_from: float = 0.6


@dataclass(frozen=True, slots=True)
class Contribution:
    factor: str
    value: float | int | str | None
    contribution: float


def churn_risk(
    stats: CustomerStats, p_alive: float, now: datetime, weights: RiskWeights
) -> tuple[float, Band, list[Contribution]]:
    """The risk, its band, and the contribution of every factor that counted."""
    parts = [
        Contribution("p_alive", round(p_alive, 4), 1 - p_alive),
        *_signals(stats, now, weights),
    ]
    risk = min(1.0, max(0.0, sum(p.contribution for p in parts)))
    return risk, band_of(risk, weights), [p for p in parts if p.contribution != 0]


def band_of(risk: float, weights: RiskWeights) -> Band:
    if risk >= weights.high_from:
        return "high"
    return "medium" if risk >= weights.medium_from else "low"


def _signals(stats: CustomerStats, now: datetime, w: RiskWeights) -> list[Contribution]:
    parts = []
    if stats.latest_nps is not None and stats.latest_nps <= 6:
        parts.append(Contribution("detractor", stats.latest_nps, w.detractor))
    if stats.latest_nps is not None and stats.latest_nps >= 9:
        parts.append(Contribution("promoter", stats.latest_nps, w.promoter))
    if stats.latest_csat is not None and stats.latest_csat <= 2:
        parts.append(Contribution("unhappy", stats.latest_csat, w.unhappy))
    if stats.open_tickets:
        parts.append(
            Contribution(
                "open_tickets",
                stats.open_tickets,
                min(w.max_open_tickets, w.per_open_ticket * stats.open_tickets),
            )
        )
    if stats.refunded > 0 and stats.total_spend > 0:
        share = min(float(stats.refunded / stats.total_spend), 1.0)
        parts.append(
            Contribution("refunds", round(share, 4), min(w.max_refunds, share * w.refund_share))
        )
    trend = stats.engagement_trend(now)
    if trend is not None and trend < w.falling_below:
        parts.append(Contribution("falling_engagement", round(trend, 4), w.falling_engagement))
    return parts
