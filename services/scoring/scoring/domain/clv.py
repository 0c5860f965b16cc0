"""Customer lifetime value from the BG/NBD and Gamma-Gamma models, and what a fit stores.

Over a horizon of K periods of length L (in the BG/NBD time unit, e.g. a month is 52/12
weeks) with a discount rate d per period, a customer seen as (x, t_x, T, m_x) is worth

    CLV = E[M | x, m_x] * sum_{k=1..K} (E[Y(k L)] - E[Y((k-1) L)]) / (1 + d)^k

where E[Y(t)] = E[purchases in (T, T + t] | x, t_x, T] is the BG/NBD conditional expectation
(`bgnbd.expected_purchases`) and E[M | x, m_x] the Gamma-Gamma expected spend per purchase
(`gamma_gamma.expected_spend`). Each period's expected purchases are discounted as if they
all happened at the period's end. Spend and frequency are independent in these models, so
the expected value is the product. For a margin rather than revenue, scale the result.

Pure: no I/O, no clock (fit times are measured by the caller and passed in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt

from scoring.domain.bgnbd import BgNbdParams, FloatArray, expected_purchases
from scoring.domain.gamma_gamma import GammaGammaParams, expected_spend


@dataclass(frozen=True, slots=True)
class Horizon:
    """How far ahead to value customers, and how to discount.

    The defaults are a year of months in weeks at 1% a month (~12.7% a year); from an annual
    rate, the per-period rate is (1 + annual) ** (1 / periods_per_year) - 1.
    """

    periods: int = 12
    period_length: float = 52 / 12
    discount_rate: float = 0.01

    def __post_init__(self) -> None:
        if self.periods < 1:
            raise ValueError("a horizon has at least one period")
        if self.period_length <= 0:
            raise ValueError("a period's length must be > 0")
        if self.discount_rate < 0:
            raise ValueError("the discount rate must be >= 0")


DEFAULT_HORIZON = Horizon()


def customer_lifetime_value(
    transactions: BgNbdParams,
    spend: GammaGammaParams,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    m_x: npt.ArrayLike,
    horizon: Horizon = DEFAULT_HORIZON,
) -> FloatArray:
    """The discounted expected spend of each customer over the horizon (see the module doc)."""
    purchases = discounted_purchases(transactions, x, t_x, T, horizon)
    return np.asarray(purchases * expected_spend(spend, x, m_x), dtype=np.float64)


def discounted_purchases(
    params: BgNbdParams,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    horizon: Horizon,
) -> FloatArray:
    """sum_k (E[Y(k L)] - E[Y((k-1) L)]) / (1 + d)^k: each period's expected purchases,
    discounted to today."""
    # All horizons in one vectorised call: the scoring hot path scores one customer at a
    # time, and a call per period cost twelve times the work.
    k = np.arange(1, horizon.periods + 1, dtype=np.float64)
    shape = np.broadcast_shapes(np.shape(x), np.shape(t_x), np.shape(T))
    t = k.reshape((-1,) + (1,) * len(shape)) * horizon.period_length
    cumulative = expected_purchases(params, t, x, t_x, T)
    per_period = np.diff(cumulative, axis=0, prepend=np.zeros((1, *shape)))
    discount = (1 + horizon.discount_rate) ** k.reshape((-1,) + (1,) * len(shape))
    return np.asarray((per_period / discount).sum(axis=0), dtype=np.float64)


class BgNbdSummary(TypedDict):
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    customers: int
    fit_seconds: float


class GammaGammaSummary(TypedDict):
    p: float
    q: float
    gamma: float
    log_likelihood: float
    customers: int
    fit_seconds: float


class FitSummary(TypedDict):
    time_unit: str
    bgnbd: BgNbdSummary
    gamma_gamma: GammaGammaSummary


def fit_summary(
    transactions: BgNbdParams,
    spend: GammaGammaParams,
    *,
    transactions_seconds: float,
    spend_seconds: float,
) -> FitSummary:
    """What is stored of a fit: parameters named as in the literature, and what they came from."""
    return {
        "time_unit": transactions.time_unit,
        "bgnbd": {
            "r": transactions.r,
            "alpha": transactions.alpha,
            "a": transactions.a,
            "b": transactions.b,
            "log_likelihood": transactions.log_likelihood,
            "customers": transactions.customers,
            "fit_seconds": transactions_seconds,
        },
        "gamma_gamma": {
            "p": spend.p,
            "q": spend.q,
            "gamma": spend.gamma,
            "log_likelihood": spend.log_likelihood,
            "customers": spend.customers,
            "fit_seconds": spend_seconds,
        },
    }
