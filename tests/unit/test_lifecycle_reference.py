"""The lifecycle reference (tests/support/lifecycle_reference.py) against the README's text, and
the CDNOW loader the replay test feeds it with."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest

from crm_shared.events import CATALOG, CloudEvent
from tests.support.cdnow import (
    load_master,
    load_sample,
    master_path,
    purchase_events,
    purchase_times_by_customer,
)
from tests.support.lifecycle_reference import (
    DEFAULT_POLICY,
    STAGES,
    ReferencePolicy,
    stage_at,
    stage_counts,
    stage_from_transitions,
    transitions,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
THRESHOLD_3 = ReferencePolicy(active_after_purchases=3)


def days(*offsets: float) -> list[datetime]:
    return [T0 + timedelta(days=d) for d in offsets]


def moves(
    purchases: list[datetime], now: datetime, policy: ReferencePolicy = DEFAULT_POLICY
) -> list[tuple[str, str, int]]:
    """(to stage, reason, day) of each transition, days counted from T0."""
    log = transitions(purchases, now, policy)
    return [(to, reason, (at - T0).days) for _from, to, reason, at in log]


# --- a single purchase, then silence: dormant after 90 days, churned after 180 ---


@pytest.mark.parametrize(
    ("silent_days", "stage"),
    [(89, "new"), (90, "dormant"), (179, "dormant"), (180, "churned"), (181, "churned")],
)
def test_a_one_time_buyer_goes_dormant_at_90_days_and_churns_at_180(
    silent_days: int, stage: str
) -> None:
    # given one purchase, when `silent_days` pass without another, then:
    assert stage_at(days(0), T0 + timedelta(days=silent_days)) == stage


def test_a_long_silence_records_dormant_and_churned_at_their_due_times_not_at_now() -> None:
    assert moves(days(0), T0 + timedelta(days=400)) == [
        ("prospect", "identified", 0),
        ("new", "first_purchase", 0),
        ("dormant", "inactivity", 90),
        ("churned", "inactivity", 180),
    ]


# --- repeat buyers: the thresholds grow with the mean gap between purchases ---


def test_a_buyer_every_10_days_goes_dormant_after_max_of_90_and_30_days() -> None:
    purchases = days(*range(0, 101, 10))  # mean gap 10: 3 x 10 = 30 < 90
    assert stage_at(purchases, T0 + timedelta(days=100 + 89)) == "active"
    assert stage_at(purchases, T0 + timedelta(days=100 + 90)) == "dormant"
    assert stage_at(purchases, T0 + timedelta(days=100 + 180)) == "churned"


@pytest.mark.parametrize(
    ("silent_days", "stage"),
    [(119, "active"), (120, "dormant"), (239, "dormant"), (240, "churned")],
)
def test_a_buyer_with_a_40_day_mean_gap_is_dormant_after_120_and_churned_after_240(
    silent_days: int, stage: str
) -> None:
    purchases = days(0, 40, 80)  # dormant: max(90, 3 x 40); churned: max(180, 6 x 40)
    assert stage_at(purchases, T0 + timedelta(days=80 + silent_days)) == stage


def test_mean_gaps_are_exact_days_so_a_due_time_can_fall_at_noon() -> None:
    purchases = days(0, 30, 61)  # mean gap 30.5 days, dormant after 91.5 days
    assert stage_at(purchases, T0 + timedelta(days=61 + 91)) == "active"
    assert transitions(purchases, T0 + timedelta(days=61 + 92))[-1] == (
        "active",
        "dormant",
        "inactivity",
        T0 + timedelta(days=61 + 91.5),
    )


def test_the_second_purchase_makes_a_new_customer_active() -> None:
    assert moves(days(0, 5), T0 + timedelta(days=5)) == [
        ("prospect", "identified", 0),
        ("new", "first_purchase", 0),
        ("active", "repeat_purchase", 5),
    ]


def test_two_purchases_on_one_day_make_an_active_customer_with_the_minimum_thresholds() -> None:
    # mean gap 0: dormant after max(90, 0) days
    assert stage_at(days(0, 0), T0 + timedelta(days=89)) == "active"
    assert stage_at(days(0, 0), T0 + timedelta(days=90)) == "dormant"


# --- winning customers back ---


def test_a_purchase_by_a_dormant_customer_wins_them_back_to_active() -> None:
    assert moves(days(0, 10, 120), T0 + timedelta(days=120))[2:] == [
        ("active", "repeat_purchase", 10),
        ("dormant", "inactivity", 100),
        ("active", "won_back", 120),
    ]


def test_a_purchase_by_a_churned_customer_wins_them_back_to_active() -> None:
    assert moves(days(0, 200), T0 + timedelta(days=200))[2:] == [
        ("dormant", "inactivity", 90),
        ("churned", "inactivity", 180),
        ("active", "won_back", 200),
    ]


def test_a_customer_won_back_below_the_active_threshold_is_new_until_they_reach_it() -> None:
    assert moves(days(0, 100, 110), T0 + timedelta(days=110), THRESHOLD_3)[2:] == [
        ("dormant", "inactivity", 90),
        ("new", "won_back", 100),
        ("active", "repeat_purchase", 110),
    ]


def test_the_long_silence_before_a_win_back_counts_in_the_mean_gap() -> None:
    purchases = days(0, 10, 20, 120)  # mean gap (120 - 0) / 3 = 40: dormant after 120 days
    assert stage_at(purchases, T0 + timedelta(days=120 + 119)) == "active"
    assert stage_at(purchases, T0 + timedelta(days=120 + 120)) == "dormant"


# --- a transition whose time is <= the point checked happens ---


def test_a_purchase_exactly_when_dormancy_falls_due_comes_after_it_and_wins_back() -> None:
    assert moves(days(0, 10, 100), T0 + timedelta(days=100))[-2:] == [
        ("dormant", "inactivity", 100),
        ("active", "won_back", 100),
    ]


def test_a_purchase_a_moment_before_dormancy_falls_due_keeps_the_customer_active() -> None:
    purchases = [*days(0, 10), T0 + timedelta(days=100) - timedelta(microseconds=1)]
    assert [to for to, _reason, _day in moves(purchases, T0 + timedelta(days=100))] == [
        "prospect",
        "new",
        "active",
    ]


def test_a_purchase_exactly_when_churn_falls_due_comes_after_it() -> None:
    assert moves(days(0, 180), T0 + timedelta(days=180))[-2:] == [
        ("churned", "inactivity", 180),
        ("active", "won_back", 180),
    ]


def test_policy_fields_move_the_thresholds() -> None:
    policy = ReferencePolicy(dormant_min_days=10, churn_min_days=20)
    assert stage_at(days(0), T0 + timedelta(days=10), policy) == "dormant"
    assert stage_at(days(0), T0 + timedelta(days=20), policy) == "churned"


def test_the_default_policy_is_the_readmes() -> None:
    policy = ReferencePolicy()
    assert (policy.version, policy.active_after_purchases) == ("default-1", 2)
    assert (policy.dormant_min_days, policy.dormant_factor) == (90, 3)
    assert (policy.churn_min_days, policy.churn_factor) == (180, 6)
    assert policy.purchase_types == ("crm.purchase.completed.v1",)
    assert policy.churn_types == ("crm.subscription.cancelled.v1",)


# --- what `now` knows ---


def test_purchases_after_now_are_not_known_yet() -> None:
    assert stage_at(days(0, 50), T0 + timedelta(days=49)) == "new"


def test_a_customer_with_no_purchase_by_now_has_no_stage() -> None:
    with pytest.raises(ValueError, match="unknown"):
        stage_at(days(5), T0)


def test_stage_counts_name_all_five_stages_and_count_only_known_customers() -> None:
    history = {
        "bought once, 100 days ago": days(0),
        "mean gap 10, last 90 days ago": days(0, 10),
        "bought 5 days ago": days(95),
        "bought 200 days ago": days(-100),
        "bought 50 days ago, twice": days(0, 50),
        "not seen yet": days(101),
    }
    counts = stage_counts(history, T0 + timedelta(days=100))
    assert counts == {"prospect": 0, "new": 1, "active": 1, "dormant": 2, "churned": 1}
    assert list(counts) == list(STAGES)


def test_the_stage_read_off_past_transitions_is_the_stage_of_the_history_up_to_then() -> None:
    # What the replay test relies on for `?as_of=`, checked on every CDNOW customer.
    history = purchase_times_by_customer(load_sample())
    end = datetime(1998, 6, 30, tzinfo=UTC)
    full = {customer: transitions(times, end) for customer, times in history.items()}
    for as_of in [datetime(1997, m, 30, tzinfo=UTC) for m in (4, 6, 9, 11)]:
        for customer, times in history.items():
            assert stage_from_transitions(full[customer], as_of) == stage_at(times, as_of)


# --- the CDNOW sample ---


def test_the_cdnow_sample_has_6919_purchases_by_2357_customers_over_18_months() -> None:
    purchases = load_sample()
    assert len(purchases) == 6_919
    assert len({p.customer_id for p in purchases}) == 2_357
    assert min(p.day for p in purchases) == date(1997, 1, 1)
    assert max(p.day for p in purchases) == date(1998, 6, 30)


def test_cdnow_rows_become_purchases_of_cdnow_customers() -> None:
    first = load_sample()[0]  # " 00004 0001 19970101  2   29.33"
    assert (first.customer_id, first.day, first.number_of_cds) == ("cdnow-4", date(1997, 1, 1), 2)
    assert str(first.dollar_value) == "29.33"
    assert first.time == datetime(1997, 1, 1, tzinfo=UTC)


def test_cdnow_events_have_unique_deterministic_ids_and_come_in_time_order() -> None:
    events = purchase_events(load_sample())
    ids = [e["id"] for e in events]
    assert len(set(ids)) == 6_919
    assert ids == [e["id"] for e in purchase_events(load_sample())]
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    assert (events[0]["time"], events[-1]["time"]) == (
        "1997-01-01T00:00:00Z",
        "1998-06-30T00:00:00Z",
    )


def test_several_purchases_by_one_customer_on_one_day_are_numbered() -> None:
    ids = {e["id"] for e in purchase_events(load_sample())}
    per_day = Counter(event_id.rsplit("-", 1)[0] for event_id in ids)
    repeats = [day for day, count in per_day.items() if count > 1]
    assert len(repeats) > 0
    assert all(f"{day}-2" in ids for day in repeats)


def test_cdnow_events_are_valid_purchases_in_us_dollars() -> None:
    events = purchase_events(load_sample())
    parsed = [CATALOG.validate(CloudEvent.model_validate(e)) for e in events]
    assert {(e.type, e.data.currency) for e in parsed} == {("crm.purchase.completed.v1", "USD")}  # type: ignore[attr-defined]
    assert all(e["subject"] == e["id"].rsplit("-", 2)[0] for e in events)
    assert sum(int(e["data"]["item_count"]) for e in events) == sum(
        p.number_of_cds for p in load_sample()
    )


@pytest.mark.skipif(not master_path().exists(), reason="the CDNOW master file is not there")
def test_the_master_file_holds_every_sample_purchase_under_the_same_customer_id() -> None:
    master = load_master()
    assert len(master) == 69_659
    assert len({p.customer_id for p in master}) == 23_570
    assert not Counter(load_sample()) - Counter(master)
