"""The customer lifecycle as a pure replay: a customer's facts, a policy and a clock give
their stage and every transition, each at the event time it happened.

Replaying the whole history of a customer is what makes late and out-of-order events, merges
and policy changes simple: the new history is compared with the one published before, and the
difference is published as corrections. Events that arrive in order (the common case) need
not replay anything: `fold` continues from the stored state and gives the same result (see
`Lifecycle.recompute` for when it may).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from lifecycle.domain.policy import Policy

Stage = Literal["prospect", "new", "active", "dormant", "churned"]
Kind = Literal["seen", "purchase", "churn", "erased"]
# Contacts erased the customer's personal data: the history up to then stays, nothing after.
ERASED_TYPE = "crm.contact.erased.v1"
STAGES: tuple[Stage, ...] = ("prospect", "new", "active", "dormant", "churned")


@dataclass(frozen=True, slots=True)
class Fact:
    """What the lifecycle needs of an event: whose, which, what kind, when."""

    customer_id: str
    event_id: str
    kind: Kind
    time: datetime


@dataclass(frozen=True, slots=True)
class Transition:
    customer_id: str
    from_stage: Stage | None
    to_stage: Stage
    reason: str
    caused_by: str
    occurred_at: datetime

    @property
    def key(self) -> tuple[object, ...]:
        return (self.from_stage, self.to_stage, self.reason, self.caused_by, self.occurred_at)


@dataclass(frozen=True, slots=True)
class CustomerState:
    customer_id: str
    stage: Stage
    stage_since: datetime
    purchases: int = 0
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    next_due: datetime | None = None
    erased: bool = False


def kind_of(event_type: str, policy: Policy) -> Kind:
    if event_type == ERASED_TYPE:
        return "erased"
    if event_type in policy.purchase_types:
        return "purchase"
    if event_type in policy.churn_types:
        return "churn"
    return "seen"


def replay(
    facts: Sequence[Fact], policy: Policy, now: datetime
) -> tuple[CustomerState | None, list[Transition]]:
    """A customer's state as of `now` and all their transitions up to then."""
    ordered = sorted((f for f in facts if f.time <= now), key=order)
    return fold(None, ordered, policy, now)


def order(fact: Fact) -> tuple[datetime, str]:
    """The order facts are folded in."""
    return (fact.time, fact.event_id)


def fold(
    state: CustomerState | None, ordered: Sequence[Fact], policy: Policy, now: datetime
) -> tuple[CustomerState | None, list[Transition]]:
    """Continue from `state` (None: nothing known yet) with these facts, in `order` and none
    after `now`: the state as of `now` and the transitions this added."""
    transitions: list[Transition] = []
    for fact in ordered:
        if state is not None and state.erased:
            break  # an erased customer's story ends there
        if fact.kind == "erased" and state is None:
            continue  # nothing was known: nothing to close
        state = _age(state, fact.time, policy, transitions)
        state = _apply(state, fact, policy, transitions)
    state = _age(state, now, policy, transitions)
    return (_with_due(state, policy) if state else None), transitions


def _apply(
    state: CustomerState | None, fact: Fact, policy: Policy, out: list[Transition]
) -> CustomerState:
    if state is None:
        state = CustomerState(fact.customer_id, "prospect", fact.time)
        out.append(
            Transition(fact.customer_id, None, "prospect", "identified", fact.event_id, fact.time)
        )
    if fact.kind == "purchase":
        return _purchase(state, fact, policy, out)
    if fact.kind == "erased":
        if state.stage != "churned":
            state = _move(state, "churned", "erased", fact.event_id, fact.time, out)
        return replace(state, erased=True)
    if fact.kind == "churn" and state.stage not in ("prospect", "churned"):
        return _move(state, "churned", "cancelled", fact.event_id, fact.time, out)
    return state


def _purchase(
    state: CustomerState, fact: Fact, policy: Policy, out: list[Transition]
) -> CustomerState:
    state = replace(
        state,
        purchases=state.purchases + 1,
        last_purchase_at=fact.time,
        first_purchase_at=state.first_purchase_at or fact.time,
    )
    reached = state.purchases >= policy.active_after_purchases
    if state.stage == "prospect":
        return _move(state, "new", "first_purchase", fact.event_id, fact.time, out)
    if state.stage in ("dormant", "churned"):
        return _move(
            state, "active" if reached else "new", "won_back", fact.event_id, fact.time, out
        )
    if state.stage == "new" and reached:
        return _move(state, "active", "repeat_purchase", fact.event_id, fact.time, out)
    return state


def _age(
    state: CustomerState | None, until: datetime, policy: Policy, out: list[Transition]
) -> CustomerState | None:
    """Silence up to `until`: new/active -> dormant -> churned, at their due times."""
    while state is not None:
        due = _due(state, policy)
        if due is None or due > until:
            return state
        target: Stage = "churned" if state.stage == "dormant" else "dormant"
        state = _move(state, target, "inactivity", f"clock:{due.isoformat()}", due, out)
    return state


def _due(state: CustomerState, policy: Policy) -> datetime | None:
    if state.last_purchase_at is None or state.erased or state.stage in ("prospect", "churned"):
        return None
    gap = mean_gap_days(state)
    after = policy.churn_after(gap) if state.stage == "dormant" else policy.dormant_after(gap)
    try:
        return state.last_purchase_at + after
    except OverflowError:  # after the year 9999: never
        return None


def mean_gap_days(state: CustomerState) -> float | None:
    if state.purchases < 2 or state.first_purchase_at is None or state.last_purchase_at is None:
        return None
    span = state.last_purchase_at - state.first_purchase_at
    return span.total_seconds() / 86400 / (state.purchases - 1)


def _move(
    state: CustomerState,
    target: Stage,
    reason: str,
    cause: str,
    at: datetime,
    out: list[Transition],
) -> CustomerState:
    out.append(Transition(state.customer_id, state.stage, target, reason, cause, at))
    return replace(state, stage=target, stage_since=at)


def _with_due(state: CustomerState, policy: Policy) -> CustomerState:
    return replace(state, next_due=_due(state, policy))
