"""The scoring model fitted from the incremental statistics reproduces the published fit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scoring.domain.clv import Horizon
from scoring.domain.model import fit, prior, quintile, score, score_many, tier_of
from scoring.domain.risk import RiskWeights
from scoring.domain.stats import CustomerStats, apply
from tests.support.cdnow import load_sample

CALIBRATION_END = datetime(1997, 9, 30, tzinfo=UTC)
TIERS = {"A": 0.9, "B": 0.7, "C": 0.4}


@pytest.fixture(scope="module")
def calibration() -> list[CustomerStats]:
    stats: dict[str, CustomerStats] = {}
    for purchase in load_sample():
        if purchase.time <= CALIBRATION_END:
            stats[purchase.customer_id] = apply(
                stats.get(purchase.customer_id),
                purchase.customer_id,
                "crm.purchase.completed.v1",
                purchase.time,
                {"amount": str(purchase.dollar_value)},
            )
    return list(stats.values())


def test_statistics_folded_event_by_event_give_the_published_cdnow_parameters(
    calibration: list[CustomerStats],
) -> None:
    model = fit(
        calibration, CALIBRATION_END, version="m1", tiers=TIERS, lowest_tier="D", horizon=Horizon()
    )
    values = model.bgnbd.values
    assert (values["r"], values["alpha"], values["a"], values["b"]) == pytest.approx(
        (0.243, 4.414, 0.793, 2.426), abs=1e-3
    )
    assert model.bgnbd.log_likelihood == pytest.approx(-9582.4, abs=0.1)
    spend = model.gamma_gamma.values
    assert (spend["p"], spend["q"], spend["gamma"]) == pytest.approx((6.25, 3.74, 15.44), abs=0.01)
    assert model.gamma_gamma.customers == 946
    assert model.tier_cuts is not None and model.tier_cuts["A"] > model.tier_cuts["B"]


def test_a_customers_score_names_its_model_and_explains_itself(
    calibration: list[CustomerStats],
) -> None:
    model = fit(
        calibration, CALIBRATION_END, version="m1", tiers=TIERS, lowest_tier="D", horizon=Horizon()
    )
    results = {s.customer_id: score(s, model, CALIBRATION_END, RiskWeights()) for s in calibration}
    tiers = [r["tier"] for r in results.values()]
    assert tiers.count("A") == pytest.approx(0.1 * len(tiers), abs=5)
    # The biggest spender bought on 21 days in five weeks, then fell silent for six months:
    # the model gives them up, whatever they spent.
    spender = max(calibration, key=lambda s: s.total_spend)
    assert results[spender.customer_id]["p_alive"] < 0.01
    best = max(calibration, key=lambda s: results[s.customer_id]["clv"])
    result = results[best.customer_id]
    assert result["model_version"] == "m1" and result["tier"] == "A"
    assert 0 < result["p_alive"] <= 1 and result["clv"] > 0
    assert result["churn_risk"] == pytest.approx(
        sum(p["contribution"] for p in result["explanation"]["churn_risk"]), abs=1e-3
    )
    assert result["rfm_segment"] is not None
    later = score(best, model, CALIBRATION_END + timedelta(days=300), RiskWeights())
    assert later["p_alive"] < result["p_alive"]  # silence lowers P(alive)


def test_a_batch_scores_each_customer_as_they_are_scored_alone(
    calibration: list[CustomerStats],
) -> None:
    model = fit(
        calibration, CALIBRATION_END, version="m1", tiers=TIERS, lowest_tier="D", horizon=Horizon()
    )
    never_bought = CustomerStats("c0", first_seen=CALIBRATION_END)
    population = [never_bought, *calibration]
    batch = score_many(population, model, CALIBRATION_END, RiskWeights())
    alone = [score(s, model, CALIBRATION_END, RiskWeights()) for s in population]
    assert [r["customer_id"] for r in batch] == [s.customer_id for s in population]
    for together, single in zip(batch, alone, strict=True):
        # numpy may round the last bit differently over an array than over one value.
        numbers = ("p_alive", "clv", "expected_purchases_90d", "expected_purchases_365d")
        assert {k: together[k] for k in numbers} == pytest.approx(
            {k: single[k] for k in numbers}, rel=1e-12
        )
        others = [k for k in single if k not in numbers]
        assert {k: together[k] for k in others} == {k: single[k] for k in others}


def test_before_any_fit_the_prior_scores_without_tiers_or_rfm() -> None:
    stats = apply(None, "c1", "crm.purchase.completed.v1", CALIBRATION_END, {"amount": "10"})
    result = score(stats, prior(CALIBRATION_END), CALIBRATION_END, RiskWeights())
    assert result["model_version"] == "prior-cdnow"
    assert result["tier"] is None and result["rfm_segment"] is None
    assert result["p_alive"] == pytest.approx(1.0)


def test_quintiles_and_tiers_place_a_value_against_the_cut_points() -> None:
    cuts = [10.0, 20.0, 30.0, 40.0]
    assert [quintile(cuts, v) for v in (5, 10, 15, 45)] == [1, 1, 2, 5]
    assert [quintile(cuts, v, higher_is_better=False) for v in (5, 45)] == [5, 1]
    model = prior(CALIBRATION_END).model_copy(update={"tier_cuts": {"A": 100.0, "B": 50.0}})
    assert [tier_of(model, v) for v in (150, 60, 10)] == ["A", "B", "D"]


def test_a_fit_whose_lifetime_values_are_not_finite_is_refused(
    calibration: list[CustomerStats], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the edge of the models' domains (BG/NBD's a at 1, Gamma-Gamma's q at 1) the
    expected values are not finite: such a fit would store NaN tier cuts."""
    from scoring.domain import model as model_module
    from scoring.domain.bgnbd import FitError
    from scoring.domain.clv import customer_lifetime_value

    def at_the_edge(*args: Any, **kwargs: Any) -> Any:
        values = customer_lifetime_value(*args, **kwargs).astype(float)
        values[0] = float("nan")
        return values

    monkeypatch.setattr(model_module, "customer_lifetime_value", at_the_edge)
    with pytest.raises(FitError, match="no finite lifetime value"):
        fit(
            calibration,
            CALIBRATION_END,
            version="m2",
            tiers=TIERS,
            lowest_tier="D",
            horizon=Horizon(),
        )
