"""A reference implementation of the lifecycle policy, written from services/lifecycle/README.md.

It exists to check the service against the text, so it shares no code with the service and is
written for obviousness, not speed: one customer at a time, purchase by purchase, each rule a
line or two that can be read next to the README. Only histories made of purchases are covered
(no logins, refunds or cancellations), so the first purchase is also the first event.

Reading choices where the README leaves room (see the tests for each):
- days are exact: a mean gap of 30.5 days gives a dormant_after of 91.5 days, not 91 or 92;
- one silence check applies the dormant rule, then the churn rule, so a long silence moves
  `new`/`active` -> `dormant` -> `churned` in one check;
- "the count reaches the threshold" means count >= threshold, and the purchase rules are
  alternatives (the first purchase only makes a customer `new`, whatever the threshold);
- `now` is inclusive: purchases at or before `now` count, later ones are not known yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

STAGES = ("prospect", "new", "active", "dormant", "churned")

Transition = tuple[str | None, str, str, datetime]
"""(from stage, to stage, reason, when), as the README's transitions."""


@dataclass(frozen=True)
class ReferencePolicy:
    """The README's policy fields with its defaults (`default-1`)."""

    version: str = "default-1"
    active_after_purchases: int = 2
    dormant_min_days: float = 90
    dormant_factor: float = 3
    churn_min_days: float = 180
    churn_factor: float = 6
    purchase_types: tuple[str, ...] = ("crm.purchase.completed.v1",)
    churn_types: tuple[str, ...] = ("crm.subscription.cancelled.v1",)


DEFAULT_POLICY = ReferencePolicy()


@dataclass
class _Customer:
    """One customer part-way through the fold."""

    policy: ReferencePolicy
    stage: str | None = None
    purchases: list[datetime] = field(default_factory=list)
    log: list[Transition] = field(default_factory=list)

    def move(self, to: str, reason: str, at: datetime) -> None:
        self.log.append((self.stage, to, reason, at))
        self.stage = to

    def mean_gap(self) -> timedelta | None:
        """(last purchase - first purchase) / (purchases - 1); none below two purchases."""
        if len(self.purchases) < 2:
            return None
        return (self.purchases[-1] - self.purchases[0]) / (len(self.purchases) - 1)

    def after(self, min_days: float, factor: float) -> timedelta:
        """max(min_days, factor x mean gap), or just min_days without a mean gap."""
        gap = self.mean_gap()
        if gap is None:
            return timedelta(days=min_days)
        return max(timedelta(days=min_days), factor * gap)

    def check_silence(self, point: datetime) -> None:
        """README rule 2: dormant, then churned, each only if due at or before `point`."""
        if not self.purchases:
            return
        last = self.purchases[-1]
        dormant_after = self.after(self.policy.dormant_min_days, self.policy.dormant_factor)
        if self.stage in ("new", "active") and point - last >= dormant_after:
            self.move("dormant", "inactivity", last + dormant_after)
        churn_after = self.after(self.policy.churn_min_days, self.policy.churn_factor)
        if self.stage == "dormant" and point - last >= churn_after:
            self.move("churned", "inactivity", last + churn_after)

    def purchase(self, t: datetime) -> None:
        """README rules 1 to 3 for a purchase at `t`."""
        if self.stage is None:
            self.move("prospect", "identified", t)
        self.check_silence(t)
        self.purchases.append(t)
        count, threshold = len(self.purchases), self.policy.active_after_purchases
        if count == 1:
            self.move("new", "first_purchase", t)
        elif self.stage in ("dormant", "churned"):
            self.move("active" if count >= threshold else "new", "won_back", t)
        elif self.stage == "new" and count >= threshold:
            self.move("active", "repeat_purchase", t)


def transitions(
    purchase_times: Sequence[datetime], now: datetime, policy: ReferencePolicy = DEFAULT_POLICY
) -> list[Transition]:
    """Every transition of a customer who only ever purchased, up to `now`, oldest first."""
    customer = _Customer(policy)
    for t in sorted(t for t in purchase_times if t <= now):
        customer.purchase(t)
    customer.check_silence(now)
    return customer.log


def stage_at(
    purchase_times: Sequence[datetime], now: datetime, policy: ReferencePolicy = DEFAULT_POLICY
) -> str:
    """The customer's stage at `now`; a customer with no purchase by then is not known."""
    log = transitions(purchase_times, now, policy)
    if not log:
        raise ValueError(f"no purchase at or before {now.isoformat()}: the customer is unknown")
    return log[-1][1]


def stage_from_transitions(log: Sequence[Transition], as_of: datetime) -> str | None:
    """The stage as of a past time, read off transitions: the last one at or before it."""
    stage = None
    for _from, to, _reason, at in log:
        if at <= as_of:
            stage = to
    return stage


def stage_counts(
    purchases_by_customer: Mapping[str, Sequence[datetime]],
    now: datetime,
    policy: ReferencePolicy = DEFAULT_POLICY,
) -> dict[str, int]:
    """How many known customers are in each of the five stages at `now`."""
    counts = dict.fromkeys(STAGES, 0)
    for times in purchases_by_customer.values():
        if any(t <= now for t in times):
            counts[stage_at(times, now, policy)] += 1
    return counts
