"""Fitting a versioned scoring model from every customer's statistics, and scoring one
customer with it in O(1).

A model holds the BG/NBD and Gamma-Gamma parameters (time unit: weeks), the horizon and
discount rate of lifetime value, and the population cut points the last fit saw: the RFM
quintile boundaries and the lifetime-value percentiles of the tiers. Scoring a customer
places them against those cut points, so one event costs the same whatever the population.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from scoring.domain import bgnbd as transactions_model
from scoring.domain import gamma_gamma as spend_model
from scoring.domain.bgnbd import BgNbdParams
from scoring.domain.clv import Horizon, customer_lifetime_value
from scoring.domain.gamma_gamma import GammaGammaParams
from scoring.domain.rfm import segment
from scoring.domain.risk import RiskWeights, churn_risk
from scoring.domain.stats import CustomerStats

WEEK = 7 * 86400.0
QUANTILES = (0.2, 0.4, 0.6, 0.8)
PRIOR = "prior-cdnow"  # the published CDNOW fit, used until the first fit of our own


class Params(BaseModel):
    model_config = ConfigDict(frozen=True)

    values: dict[str, float]
    log_likelihood: float | None = None
    customers: int = 0


class ScoringModel(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    fitted_at: datetime
    time_unit: str = "weeks"
    bgnbd: Params
    gamma_gamma: Params
    horizon_periods: int = 12
    period_length: float = 52 / 12
    discount_rate: float = 0.01
    rfm_cuts: dict[str, list[float]] | None = None
    tier_cuts: dict[str, float] | None = None
    lowest_tier: str = "D"
    fit_seconds: float = 0.0

    def transactions(self) -> BgNbdParams:
        v = self.bgnbd.values
        return BgNbdParams(v["r"], v["alpha"], v["a"], v["b"])

    def spend(self) -> GammaGammaParams:
        v = self.gamma_gamma.values
        return GammaGammaParams(v["p"], v["q"], v["gamma"])

    def horizon(self) -> Horizon:
        return Horizon(self.horizon_periods, self.period_length, self.discount_rate)


def prior(now: datetime) -> ScoringModel:
    """The published CDNOW parameters: sensible shapes for a store's customers until there
    are enough of our own to fit; no RFM or tiers (they need a population)."""
    return ScoringModel(
        version=PRIOR,
        fitted_at=now,
        bgnbd=Params(values={"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}),
        gamma_gamma=Params(values={"p": 6.25, "q": 3.74, "gamma": 15.44}),
    )


def observed(stats: CustomerStats, now: datetime) -> tuple[float, float, float, float]:
    """(x, t_x, T, m_x) in weeks: repeat purchase days, age at the last one, age now, and
    mean spend per repeat day (0 without repeats)."""
    if stats.first_purchase_at is None or stats.last_purchase_at is None:
        return 0.0, 0.0, 0.0, 0.0
    t_x = (stats.last_purchase_at - stats.first_purchase_at).total_seconds() / WEEK
    T = max(t_x, (now - stats.first_purchase_at).total_seconds() / WEEK)
    m_x = float(stats.repeat_mean_spend or 0)
    return float(stats.repeat_purchases), t_x, T, m_x


def fit(
    population: Sequence[CustomerStats],
    now: datetime,
    *,
    version: str,
    tiers: dict[str, float],
    lowest_tier: str,
    horizon: Horizon,
) -> ScoringModel:
    """Fit both models on the buyers and take the population's cut points."""
    started = time.perf_counter()
    buyers = [s for s in population if s.first_purchase_at is not None]
    if len(buyers) < 10:
        raise ValueError(f"a fit needs at least 10 customers who bought; there are {len(buyers)}")
    x, t_x, T, m_x = (np.array(c) for c in zip(*(observed(s, now) for s in buyers), strict=True))
    transactions = transactions_model.fit(x, t_x, T)
    repeat = (x >= 1) & (m_x > 0)
    spend = spend_model.fit(x[repeat], m_x[repeat])
    model = ScoringModel(
        version=version,
        fitted_at=now,
        horizon_periods=horizon.periods,
        period_length=horizon.period_length,
        discount_rate=horizon.discount_rate,
        bgnbd=Params(
            values={
                "r": transactions.r,
                "alpha": transactions.alpha,
                "a": transactions.a,
                "b": transactions.b,
            },
            log_likelihood=transactions.log_likelihood,
            customers=len(buyers),
        ),
        gamma_gamma=Params(
            values={"p": spend.p, "q": spend.q, "gamma": spend.gamma},
            log_likelihood=spend.log_likelihood,
            customers=spend.customers,
        ),
        lowest_tier=lowest_tier,
    )
    clv = customer_lifetime_value(
        model.transactions(), model.spend(), x, t_x, T, m_x, model.horizon()
    )
    if not np.all(np.isfinite(clv)):  # a fit at the edge of its parameters' domain
        raise transactions_model.FitError(
            "the fitted model gives no finite lifetime value for every customer"
        )
    rfm = _rfm_cuts(buyers, now)
    cuts = {tier: float(np.quantile(clv, share)) for tier, share in tiers.items()}
    return model.model_copy(
        update={"rfm_cuts": rfm, "tier_cuts": cuts, "fit_seconds": time.perf_counter() - started}
    )


def _rfm_cuts(buyers: Sequence[CustomerStats], now: datetime) -> dict[str, list[float]]:
    recency = [_days_since_last(s, now) for s in buyers]
    frequency = [float(s.purchases) for s in buyers]
    monetary = [float(s.total_spend) for s in buyers]
    return {
        name: [float(v) for v in np.quantile(values, QUANTILES)]
        for name, values in (("recency", recency), ("frequency", frequency), ("monetary", monetary))
    }


def _days_since_last(stats: CustomerStats, now: datetime) -> float:
    assert stats.last_purchase_at is not None
    return max(0.0, (now - stats.last_purchase_at).total_seconds() / 86400)


def quintile(cuts: list[float], value: float, *, higher_is_better: bool = True) -> int:
    """1-5: how many of the four quintile boundaries the value is past."""
    if higher_is_better:
        return 1 + sum(1 for c in cuts if value > c)
    return 1 + sum(1 for c in cuts if value < c)


def tier_of(model: ScoringModel, clv: float) -> str | None:
    if model.tier_cuts is None:
        return None
    for tier, cut in sorted(model.tier_cuts.items(), key=lambda kv: -kv[1]):
        if clv >= cut:
            return tier
    return model.lowest_tier


def score(
    stats: CustomerStats, model: ScoringModel, now: datetime, weights: RiskWeights
) -> dict[str, Any]:
    """One customer's scores and the explanation of each, under `model`."""
    return score_many([stats], model, now, weights)[0]


def score_many(
    population: Sequence[CustomerStats], model: ScoringModel, now: datetime, weights: RiskWeights
) -> list[dict[str, Any]]:
    """`score` of each customer, the models evaluated once over all of them: a consumed
    batch scores hundreds of customers, and numpy's cost is per call, not per customer."""
    if not population:
        return []
    observations = [observed(s, now) for s in population]
    x, t_x, T, m_x = (np.array(c, dtype=np.float64) for c in zip(*observations, strict=True))
    transactions, spend = model.transactions(), model.spend()
    values = zip(
        transactions_model.p_alive(transactions, x, t_x, T).tolist(),
        transactions_model.expected_purchases(transactions, 90 / 7, x, t_x, T).tolist(),
        transactions_model.expected_purchases(transactions, 365 / 7, x, t_x, T).tolist(),
        spend_model.expected_spend(spend, x, m_x).tolist(),
        customer_lifetime_value(transactions, spend, x, t_x, T, m_x, model.horizon()).tolist(),
        strict=True,
    )
    return [
        _scored(stats, seen, Predicted(*predicted), model, now, weights)
        for stats, seen, predicted in zip(population, observations, values, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class Predicted:
    """What the models predict for one customer."""

    p_alive: float
    purchases_90d: float
    purchases_365d: float
    spend: float
    clv: float


def _scored(
    stats: CustomerStats,
    seen: tuple[float, float, float, float],
    predicted: Predicted,
    model: ScoringModel,
    now: datetime,
    weights: RiskWeights,
) -> dict[str, Any]:
    x, t_x, T, m_x = seen
    clv = predicted.clv
    risk, band, parts = churn_risk(stats, predicted.p_alive, now, weights)
    return {
        "customer_id": stats.customer_id,
        "model_version": model.version,
        "computed_at": now,
        "p_alive": _finite(predicted.p_alive),
        "expected_purchases_90d": _finite(predicted.purchases_90d),
        "expected_purchases_365d": _finite(predicted.purchases_365d),
        "clv": _finite(clv),
        "churn_risk": risk,
        "risk_band": band,
        "tier": tier_of(model, clv),
        **_rfm(stats, model, now),
        "stage": stats.stage,
        "explanation": {
            "churn_risk": [
                {"factor": p.factor, "value": p.value, "contribution": round(p.contribution, 4)}
                for p in parts
            ],
            "value": {
                "x": x,
                "t_x_weeks": round(t_x, 3),
                "T_weeks": round(T, 3),
                "m_x": round(m_x, 2),
                "expected_spend": round(predicted.spend, 2),
                "expected_purchases_365d": round(predicted.purchases_365d, 4),
                "horizon_periods": model.horizon_periods,
                "discount_rate": model.discount_rate,
            },
            "tier": {"clv": round(clv, 2), "cuts": model.tier_cuts},
            "rfm": {"cuts": model.rfm_cuts},
        },
    }


def _rfm(stats: CustomerStats, model: ScoringModel, now: datetime) -> dict[str, Any]:
    cuts = model.rfm_cuts
    if cuts is None or stats.last_purchase_at is None:
        return {"rfm_r": None, "rfm_f": None, "rfm_m": None, "rfm_segment": None}
    r = quintile(cuts["recency"], _days_since_last(stats, now), higher_is_better=False)
    f = quintile(cuts["frequency"], float(stats.purchases))
    m = quintile(cuts["monetary"], float(stats.total_spend))
    fm = int((Decimal(f + m) / 2).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return {"rfm_r": r, "rfm_f": f, "rfm_m": m, "rfm_segment": str(segment(r, fm))}


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
