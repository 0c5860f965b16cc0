"""Lifecycle's replay: given a customer's events and a clock, then stages and transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lifecycle.domain.policy import Policy
from lifecycle.domain.stages import Fact, Kind, Transition, replay

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy()  # dormant after max(90 d, 3 x mean gap), churned after max(180 d, 6 x gap)


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def fact(kind: Kind, day: float, event_id: str | None = None) -> Fact:
    return Fact("c1", event_id or f"{kind}-{day}", kind, at(day))


def buys(*days: float) -> list[Fact]:
    return [fact("purchase", d) for d in days]


def moves(transitions: list[Transition]) -> list[tuple[str | None, str, str, datetime]]:
    return [(t.from_stage, t.to_stage, t.reason, t.occurred_at) for t in transitions]


def stage(facts: list[Fact], now_day: float, policy: Policy = POLICY) -> str:
    state, _ = replay(facts, policy, at(now_day))
    assert state is not None
    return state.stage


def test_a_customer_first_seen_without_buying_is_a_prospect_and_stays_one() -> None:
    state, transitions = replay([fact("seen", 0)], POLICY, at(1000))
    assert state is not None and state.stage == "prospect" and state.next_due is None
    assert moves(transitions) == [(None, "prospect", "identified", at(0))]


def test_the_first_purchase_makes_a_new_customer_and_the_second_an_active_one() -> None:
    _, transitions = replay([fact("seen", 0), *buys(2, 9)], POLICY, at(10))
    assert moves(transitions) == [
        (None, "prospect", "identified", at(0)),
        ("prospect", "new", "first_purchase", at(2)),
        ("new", "active", "repeat_purchase", at(9)),
    ]
    assert transitions[-1].caused_by == "purchase-9"


def test_a_policy_can_ask_for_more_purchases_before_active() -> None:
    policy = Policy(active_after_purchases=3)
    assert stage(buys(0, 1), 2, policy) == "new"
    assert stage(buys(0, 1, 2), 3, policy) == "active"


def test_a_new_customer_goes_dormant_after_the_minimum_silence() -> None:
    assert stage(buys(0), 89.9) == "new"
    _, transitions = replay(buys(0), POLICY, at(90))
    assert moves(transitions)[-1] == ("new", "dormant", "inactivity", at(90))


def test_silence_is_measured_against_the_customers_own_cadence() -> None:
    history = buys(0, 40, 80)  # a purchase every 40 days: dormant after 120, churned after 240
    assert stage(history, 80 + 119) == "active"
    assert stage(history, 80 + 120) == "dormant"
    assert stage(history, 80 + 239) == "dormant"
    _, transitions = replay(history, POLICY, at(80 + 240))
    assert moves(transitions)[-2:] == [
        ("active", "dormant", "inactivity", at(200)),
        ("dormant", "churned", "inactivity", at(320)),
    ]


def test_a_purchase_by_a_dormant_or_churned_customer_wins_them_back() -> None:
    _, from_dormant = replay(buys(0, 10, 150), POLICY, at(150))
    assert moves(from_dormant)[-2:] == [
        ("active", "dormant", "inactivity", at(100)),
        ("dormant", "active", "won_back", at(150)),
    ]
    _, from_churned = replay(buys(0, 400), POLICY, at(400))
    assert [m[:3] for m in moves(from_churned)][-3:] == [
        ("new", "dormant", "inactivity"),
        ("dormant", "churned", "inactivity"),
        ("churned", "active", "won_back"),
    ]


def test_won_back_below_the_active_threshold_is_new_again() -> None:
    policy = Policy(active_after_purchases=3)
    _, transitions = replay(buys(0, 100), policy, at(100))
    assert moves(transitions)[-1] == ("dormant", "new", "won_back", at(100))


def test_a_cancelled_subscription_churns_at_once() -> None:
    _, transitions = replay([*buys(0, 5), fact("churn", 7)], POLICY, at(8))
    assert moves(transitions)[-1] == ("active", "churned", "cancelled", at(7))
    assert stage([fact("churn", 0)], 1) == "prospect"  # nothing to cancel yet


def test_events_are_folded_in_event_time_whatever_order_they_arrive_in() -> None:
    in_order = replay(buys(0, 10, 150), POLICY, at(200))
    shuffled = replay(list(reversed(buys(0, 10, 150))), POLICY, at(200))
    assert in_order == shuffled


def test_events_after_the_clock_are_not_folded_yet() -> None:
    state, _ = replay(buys(0, 50), POLICY, at(20))
    assert state is not None and state.purchases == 1


def test_a_late_purchase_changes_history_from_the_point_it_belongs_to() -> None:
    _, before = replay(buys(0, 200), POLICY, at(200))
    _, after = replay(buys(0, 60, 200), POLICY, at(200))  # a purchase on day 60 arrived late
    assert [m[1] for m in moves(before)] == ["prospect", "new", "dormant", "churned", "active"]
    assert [m[1] for m in moves(after)] == ["prospect", "new", "active"]  # cadence 60 days


def test_the_next_due_time_is_when_silence_would_move_the_customer() -> None:
    state, _ = replay(buys(0, 40), POLICY, at(41))
    assert state is not None and state.next_due == at(40 + 120)
    dormant, _ = replay(buys(0, 40), POLICY, at(170))
    assert dormant is not None and dormant.next_due == at(40 + 240)


@pytest.mark.parametrize(
    "bad",
    [
        {"churn_min_days": 60},
        {"churn_factor": 1},
        {"active_after_purchases": 1},
        {"colour": "red"},
        {"churn_factor": 44_444_445},  # due dates past any calendar
        {"churn_min_days": 40_000},
    ],
)
def test_a_policy_with_churn_before_dormancy_or_a_value_out_of_bounds_is_refused(
    bad: dict[str, object],
) -> None:
    with pytest.raises(ValueError):
        Policy.model_validate(bad)


def test_an_erased_customer_is_churned_for_reason_erased_and_nothing_moves_them_after() -> None:
    facts = [*buys(0, 10), fact("erased", 20, "erase-1"), *buys(30)]
    state, transitions = replay(facts, POLICY, at(1000))
    assert moves(transitions)[-1] == ("active", "churned", "erased", at(20))
    assert transitions[-1].caused_by == "erase-1"
    assert state is not None and state.stage == "churned" and state.next_due is None
    assert state.purchases == 2  # the non-personal history up to the erasure stays


def test_erasing_a_churned_customer_adds_no_transition_and_stops_win_backs() -> None:
    facts = [*buys(0), fact("erased", 400), *buys(401)]
    state, transitions = replay(facts, POLICY, at(500))
    reasons = ["identified", "first_purchase", "inactivity", "inactivity"]
    assert [t.reason for t in transitions] == reasons
    assert state is not None and state.stage == "churned"


def test_erasing_a_customer_lifecycle_never_saw_records_nothing() -> None:
    state, transitions = replay([fact("erased", 5)], POLICY, at(10))
    assert state is None and transitions == []
