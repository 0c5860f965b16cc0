"""Scoring's per-customer statistics and churn risk: given events, then numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from scoring.domain.risk import RiskWeights, churn_risk
from scoring.domain.stats import CustomerStats, apply

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
PURCHASE = "crm.purchase.completed.v1"


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def given(*events: tuple[str, float, dict[str, Any]]) -> CustomerStats:
    stats = None
    for kind, day, data in events:
        stats = apply(stats, "c1", kind, at(day), data)
    assert stats is not None
    return stats


def buy(day: float, amount: str) -> tuple[str, float, dict[str, Any]]:
    return (PURCHASE, day, {"amount": amount})


def test_purchases_keep_what_the_value_models_need() -> None:
    stats = given(buy(0, "10"), buy(0.2, "5"), buy(7, "20"), buy(30, "30"))
    assert (stats.purchases, stats.purchase_days, stats.repeat_purchases) == (4, 3, 2)
    assert stats.first_purchase_at == at(0) and stats.last_purchase_at == at(30)
    assert stats.total_spend == Decimal("65")
    assert stats.repeat_mean_spend == Decimal("25")  # day 7 and day 30; day 0 is the first


def test_a_late_purchase_moves_the_first_purchase_back() -> None:
    stats = given(buy(10, "10"), buy(5, "7"))
    assert stats.first_purchase_at == at(5) and stats.first_day_spend == Decimal("7")
    assert stats.last_purchase_at == at(10)


def test_service_signals_count_tickets_and_keep_the_latest_feedback() -> None:
    stats = given(
        ("crm.ticket.opened.v1", 1, {}),
        ("crm.ticket.opened.v1", 2, {}),
        ("crm.ticket.resolved.v1", 3, {}),
        ("crm.ticket.resolved.v1", 4, {}),
        ("crm.ticket.resolved.v1", 5, {}),
        ("crm.feedback.submitted.v1", 6, {"nps": 3}),
        ("crm.feedback.submitted.v1", 2, {"nps": 10}),  # older: ignored
        ("crm.feedback.submitted.v1", 7, {"csat": 4}),
    )
    assert stats.open_tickets == 0
    assert (stats.latest_nps, stats.latest_csat) == (3, 4)


def test_engagement_that_stops_shows_as_a_falling_trend() -> None:
    stats = given(*[("crm.session.started.v1", d, {}) for d in range(0, 90, 3)])
    steady = stats.engagement_trend(at(90))
    stopped = stats.engagement_trend(at(150))
    assert steady is not None and stopped is not None
    assert steady > 0.8 and stopped < 0.5


def test_churn_risk_is_one_minus_p_alive_plus_the_signals_with_their_contributions() -> None:
    quiet = given(buy(0, "10"))
    risk, band, parts = churn_risk(quiet, 0.9, at(1), RiskWeights())
    assert risk == pytest.approx(0.1) and band == "low"
    assert [p.factor for p in parts] == ["p_alive"]
    unhappy = given(
        buy(0, "100"),
        ("crm.purchase.refunded.v1", 1, {"amount": "50"}),
        ("crm.ticket.opened.v1", 2, {}),
        ("crm.feedback.submitted.v1", 3, {"nps": 2}),
    )
    risk, band, parts = churn_risk(unhappy, 0.9, at(4), RiskWeights())
    contributions = {p.factor: p.contribution for p in parts}
    assert contributions == pytest.approx(
        {"p_alive": 0.1, "detractor": 0.15, "open_tickets": 0.05, "refunds": 0.15}
    )
    assert risk == pytest.approx(sum(contributions.values())) and band == "medium"


def test_risk_is_clipped_to_one_and_banded() -> None:
    stats = given(buy(0, "10"), ("crm.feedback.submitted.v1", 1, {"nps": 0, "csat": 1}))
    risk, band, _ = churn_risk(stats, 0.05, at(2), RiskWeights())
    assert risk == 1.0 and band == "high"


def test_only_material_changes_are_published() -> None:
    from scoring.handlers.scoring import material
    from scoring.settings import ScoringSettings

    settings = ScoringSettings(risk_step=0.1, value_step=0.25)
    before = {"tier": "B", "risk_band": "low", "churn_risk": 0.20, "clv": 100.0}
    assert material(None, before, settings) == ["first score"]
    assert material(before, {**before, "churn_risk": 0.29, "clv": 120.0}, settings) == []
    assert material(before, {**before, "tier": "A"}, settings) == ["tier B -> A"]
    assert material(before, {**before, "churn_risk": 0.35, "risk_band": "medium"}, settings) == [
        "risk band low -> medium",
        "churn risk 0.20 -> 0.35",
    ]
    assert material(before, {**before, "clv": 70.0}, settings) == ["lifetime value 100.00 -> 70.00"]
