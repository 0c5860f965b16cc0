"""Lifecycle's fold: given events, then stages and transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lifecycle.domain.stages import PURCHASE, CustomerState, Fact, Transition, fold

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fact(kind: str, day: int, event_id: str = "e") -> Fact:
    return Fact(f"{event_id}{day}", "c1", kind, T0 + timedelta(days=day))


def run(*facts: Fact) -> tuple[CustomerState, list[Transition]]:
    state, transitions = None, []
    for f in facts:
        state, changes = fold(state, f)
        transitions += changes
    assert state is not None
    return state, transitions


def moves(transitions: list[Transition]) -> list[tuple[str | None, str, str]]:
    return [(t.from_stage, t.to_stage, t.reason) for t in transitions]


def test_a_customer_first_seen_without_buying_is_a_prospect() -> None:
    state, transitions = run(fact("crm.session.started.v1", 0))
    assert state.stage == "prospect" and state.purchases == 0
    assert moves(transitions) == [(None, "prospect", "identified")]


def test_the_first_purchase_makes_a_new_customer_and_the_second_an_active_one() -> None:
    state, transitions = run(
        fact("crm.session.started.v1", 0), fact(PURCHASE, 2), fact(PURCHASE, 9)
    )
    assert moves(transitions) == [
        (None, "prospect", "identified"),
        ("prospect", "new", "first_purchase"),
        ("new", "active", "repeat_purchase"),
    ]
    assert state.stage == "active" and state.purchases == 2
    assert state.stage_since == T0 + timedelta(days=9)
    assert transitions[-1].caused_by == "e9"


def test_further_purchases_keep_an_active_customer_active_and_count() -> None:
    state, transitions = run(fact(PURCHASE, 0), fact(PURCHASE, 1), fact(PURCHASE, 5))
    assert state.stage == "active" and state.purchases == 3 and len(transitions) == 3
    assert state.first_purchase_at == T0 and state.last_purchase_at == T0 + timedelta(days=5)


def test_transitions_carry_event_time_not_processing_time() -> None:
    _, transitions = run(fact(PURCHASE, 30))
    assert {t.occurred_at for t in transitions} == {T0 + timedelta(days=30)}
