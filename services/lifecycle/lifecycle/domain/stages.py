"""The customer lifecycle as a pure fold: state + event -> state and transitions.

This first policy knows the stages that purchases alone decide: a customer is a `prospect`
from the first event about them, `new` at the first purchase and `active` at the second.
Time-based stages (dormant, churned) and the configurable policy come with the full
lifecycle service.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

Stage = Literal["prospect", "new", "active", "dormant", "churned"]
POLICY_VERSION = "purchases-1"
PURCHASE = "crm.purchase.completed.v1"


@dataclass(frozen=True, slots=True)
class CustomerState:
    customer_id: str
    stage: Stage
    stage_since: datetime
    purchases: int = 0
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    customer_id: str
    from_stage: Stage | None
    to_stage: Stage
    reason: str
    caused_by: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Fact:
    """What the fold needs of an event: who, what, when, which."""

    event_id: str
    customer_id: str
    type: str
    time: datetime


def fold(state: CustomerState | None, fact: Fact) -> tuple[CustomerState, list[Transition]]:
    """Apply one event to a customer's state; return the new state and any transitions."""
    transitions: list[Transition] = []
    if state is None:
        state = CustomerState(fact.customer_id, "prospect", fact.time)
        transitions.append(_transition(None, "prospect", "identified", fact))
    if fact.type != PURCHASE:
        return state, transitions
    state = _count_purchase(state, fact.time)
    target, reason = _stage_after_purchase(state)
    if target != state.stage:
        transitions.append(_transition(state.stage, target, reason, fact))
        state = replace(state, stage=target, stage_since=fact.time)
    return state, transitions


def _count_purchase(state: CustomerState, at: datetime) -> CustomerState:
    first = state.first_purchase_at if state.first_purchase_at else at
    last = max(state.last_purchase_at, at) if state.last_purchase_at else at
    return replace(
        state,
        purchases=state.purchases + 1,
        first_purchase_at=min(first, at),
        last_purchase_at=last,
    )


def _stage_after_purchase(state: CustomerState) -> tuple[Stage, str]:
    if state.purchases == 1:
        return "new", "first_purchase"
    if state.stage == "new":
        return "active", "repeat_purchase"
    return state.stage, ""


def _transition(source: Stage | None, target: Stage, reason: str, fact: Fact) -> Transition:
    return Transition(fact.customer_id, source, target, reason, fact.event_id, fact.time)
