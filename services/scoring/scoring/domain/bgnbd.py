"""The BG/NBD model of repeat purchasing (Fader, Hardie and Lee 2005, "Counting Your
Customers the Easy Way: An Alternative to the Pareto/NBD Model", Marketing Science 24(2)).

While active, a customer buys at a Poisson rate lambda ~ Gamma(r, alpha); right after each
repeat purchase they drop out for good with probability p ~ Beta(a, b). A customer is
summarised by x (repeat purchases), t_x (time of the last purchase) and T (age), both times
counted from the first purchase in one time unit (weeks in the literature).

Every function takes scalars or numpy arrays (broadcast together) and returns a float array
(0-d for scalars: `float()` it). Pure: no I/O, no clock; `simulate` takes its random
generator as an argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1

FloatArray = npt.NDArray[np.float64]
Data = TypeVar("Data")

# exp(+-15) spans 3e-7 .. 3e6: wide enough for any real population, narrow enough that a wild
# line-search step cannot overflow the gamma functions.
LOG_BOUNDS = (-15.0, 15.0)
# Largest |d mean log-likelihood / d log-parameter| accepted as the optimum.
CONVERGED_GRADIENT = 1e-6


class FitError(RuntimeError):
    """The optimiser did not converge; the message says why."""


@dataclass(frozen=True, slots=True)
class BgNbdParams:
    """Fitted parameters, with what they were fitted on.

    Parameters taken from elsewhere (a paper, a stored fit) leave the fit fields unknown.
    """

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = math.nan
    customers: int = 0
    time_unit: str = "weeks"


@dataclass(frozen=True, slots=True)
class Population:
    """(x, t_x, T) rows, each weighted by how many customers it stands for; the rows are
    distinct once `merged`."""

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    weights: FloatArray

    @property
    def customers(self) -> float:
        return float(self.weights.sum())


def log_likelihood(
    params: BgNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> FloatArray:
    """Each customer's log-likelihood, ln L(r, alpha, a, b | x, t_x, T) (FHL 2005, eq. 6)."""
    x_, t_x_, T_ = _floats(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    alive, dropped = _row_terms(r, alpha, a, b, x_, t_x_, T_)
    return _x_terms(r, alpha, a, b, x_) + np.logaddexp(alive, dropped)


def p_alive(
    params: BgNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> FloatArray:
    """P(still active at T | x, t_x, T) (FHL 2005, eq. 11); 1 for x = 0, who cannot have
    dropped out yet since dropping out only happens right after a repeat purchase."""
    x_, t_x_, T_ = _floats(x, t_x, T)
    return np.asarray(expit(-_log_odds_dropped(params, x_, t_x_, T_)), dtype=np.float64)


def expected_purchases(
    params: BgNbdParams,
    t: npt.ArrayLike,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
) -> FloatArray:
    """E[purchases in (T, T + t] | x, t_x, T] (FHL 2005, eq. 10).

    With x = t_x = T = 0 it is the expected repeat purchases of a new customer in their first
    t periods (eq. 9). Undefined at exactly a = 1 (a removable singularity of the formula).
    """
    t_, x_, t_x_, T_ = _floats(t, x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    z = t_ / (alpha + T_ + t_)
    # Euler's transformation of 2F1(r+x, b+x; a+b+x-1; z) times (1-z)^(r+x): the same value,
    # but with small first parameters, so it neither overflows nor loses digits for large x.
    survival = (1 - z) ** (a - 1) * hyp2f1(a + b - 1 - r, a - 1, a + b + x_ - 1, z)
    if_alive = (a + b + x_ - 1) / (a - 1) * (1 - survival)
    return np.asarray(if_alive * p_alive(params, x_, t_x_, T_), dtype=np.float64)


def simulate(
    params: BgNbdParams, T: npt.ArrayLike, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """Draws (x, t_x) from the model for customers of ages T, in continuous time."""
    T_ = np.ravel(np.asarray(T, dtype=np.float64))
    rate = rng.gamma(params.r, 1 / params.alpha, T_.size)
    dropout = rng.beta(params.a, params.b, T_.size)
    # Were they active throughout, they would buy Poisson(rate T) times; they stop right after
    # the Geometric(dropout)-th repeat purchase instead, if that comes first.
    arrivals = rng.poisson(rate * T_)
    x = np.minimum(arrivals, rng.geometric(dropout))
    # Given n purchases in (0, T], their times are n sorted uniforms, the x-th of which is
    # T * Beta(x, n - x + 1): no need to draw the purchases one by one.
    t_x = np.zeros_like(T_)
    bought = x > 0
    t_x[bought] = T_[bought] * rng.beta(x[bought], arrivals[bought] - x[bought] + 1)
    return x.astype(np.float64), t_x


def fit(
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    merge: bool = True,
    time_unit: str = "weeks",
) -> BgNbdParams:
    """Maximum-likelihood parameters for customers (x, t_x, T), optionally weighted.

    Identical rows are merged first (`merge`): a population's (x, t_x, T) come from purchase
    days, so a million customers shrink to a few hundred thousand rows or fewer.
    """
    population = checked_population(x, t_x, T, weights)
    if merge:
        population = merged(population)
    data = _ByX.of(population)
    log_params = maximum_likelihood(_mean_negative_log_likelihood, 4, data, "BG/NBD")
    r, alpha, a, b = (float(v) for v in np.exp(log_params))
    total = _total_log_likelihood(log_params, data)
    customers = round(population.customers)
    return BgNbdParams(r, alpha, a, b, total, customers, time_unit)


def checked_population(
    x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> Population:
    """The rows as a population, or a ValueError naming what is wrong with them."""
    x_, t_x_, T_ = (np.ravel(v) for v in _floats(x, t_x, T))
    if x_.size == 0:
        raise ValueError("no customers to fit")
    if np.any(x_ < 0) or np.any(x_ != np.floor(x_)):
        raise ValueError("x (repeat purchases) must be whole numbers >= 0")
    if np.any(t_x_ < 0) or np.any(t_x_ > T_):
        raise ValueError("recency t_x must lie in [0, T]")
    if np.any((x_ == 0) & (t_x_ != 0)):
        raise ValueError("a customer without repeat purchases has t_x = 0")
    return Population(x_, t_x_, T_, checked_weights(weights, x_.size))


def checked_weights(weights: npt.ArrayLike | None, customers: int) -> FloatArray:
    """One weight per customer (1 each by default), or a ValueError."""
    if weights is None:
        return np.ones(customers)
    w = np.ravel(np.asarray(weights, dtype=np.float64))
    if w.size != customers:
        raise ValueError(f"weights has {w.size} entries for {customers} customers")
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError("weights must be finite, >= 0, and not all 0")
    return w


def merged(population: Population) -> Population:
    """The same population with identical (x, t_x, T) rows merged, weights added up."""
    # Sort then cut where a row differs from the one before: ~6x faster than
    # np.unique(axis=0), which compares rows as opaque byte strings.
    order = np.lexsort((population.T, population.t_x, population.x))
    rows = np.column_stack([population.x, population.t_x, population.T])[order]
    starts = np.flatnonzero(np.r_[True, np.any(rows[1:] != rows[:-1], axis=1)])
    weights = np.add.reduceat(population.weights[order], starts)
    distinct = rows[starts]
    return Population(distinct[:, 0], distinct[:, 1], distinct[:, 2], weights)


@dataclass(frozen=True, slots=True)
class _ByX:
    """A population with the total weight of each distinct x, for the terms in x alone."""

    population: Population
    xs: FloatArray
    x_weights: FloatArray

    @classmethod
    def of(cls, population: Population) -> _ByX:
        xs, x_index = np.unique(population.x, return_inverse=True)
        x_weights = np.bincount(x_index.ravel(), weights=population.weights)
        return cls(population, xs, np.asarray(x_weights, dtype=np.float64))


def maximum_likelihood(
    objective: Callable[[FloatArray, Data], tuple[float, FloatArray]],
    parameters: int,
    data: Data,
    model: str,
) -> FloatArray:
    """The log-parameters minimising `objective` (a mean negative log-likelihood and its
    gradient), from all parameters = 1, or FitError."""
    result = minimize(
        objective,
        x0=np.zeros(parameters),
        args=(data,),
        jac=True,
        method="L-BFGS-B",
        bounds=[LOG_BOUNDS] * parameters,
        # The objective is a mean, so these tolerances do not depend on the population's
        # size; they pin the parameters well beyond their published decimals.
        options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 1000},
    )
    # So close to the optimum the line search can run out of floating-point precision before
    # gtol is met ("ABNORMAL"); the gradient tells whether it stopped at the top anyway.
    if not (result.success or np.max(np.abs(result.jac)) < CONVERGED_GRADIENT):
        raise FitError(f"{model} fit did not converge: {result.message}")
    return np.asarray(result.x, dtype=np.float64)


def _total_log_likelihood(log_params: FloatArray, data: _ByX) -> float:
    mean_nll, _ = _mean_negative_log_likelihood(log_params, data)
    return -mean_nll * data.population.customers


def _mean_negative_log_likelihood(log_params: FloatArray, data: _ByX) -> tuple[float, FloatArray]:
    """-mean ln L and its gradient in log-parameters, the x-only terms once per distinct x."""
    r, alpha, a, b = np.exp(log_params)
    population, xs, x_weights = data.population, data.xs, data.x_weights
    row_ll, row_grad = _row_part(r, alpha, a, b, population)
    w = population.weights
    ll = weighted_sum(_x_terms(r, alpha, a, b, xs), x_weights) + weighted_sum(row_ll, w)
    grad = weighted_sum(_x_gradient(r, alpha, a, b, xs), x_weights) + weighted_sum(row_grad, w)
    scale = -1.0 / population.customers
    return float(ll * scale), grad * np.exp(log_params) * scale


def _x_terms(r: float, alpha: float, a: float, b: float, x: FloatArray) -> FloatArray:
    """ln[Gamma(r+x) alpha^r / Gamma(r)] + ln[B(a, b+x) / B(a, b)]: the x-only terms."""
    nbd = gammaln(r + x) - gammaln(r) + r * math.log(alpha)
    return np.asarray(nbd + betaln(a, b + x) - betaln(a, b), dtype=np.float64)


def _row_terms(
    r: float, alpha: float, a: float, b: float, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """The logs of the two ways to see (x, t_x, T): still active at T, or dropped out right
    after the purchase at t_x (impossible without a repeat purchase: -inf)."""
    alive = -(r + x) * np.log(alpha + T)
    # B(a+1, b+x-1) / B(a, b+x) = a / (b+x-1); x is clamped to 1 where the term is void, so
    # b+x-1 stays positive and no warning is raised for a value that np.where drops.
    dropped = np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(alpha + t_x)
    return alive, np.where(x > 0, dropped, -np.inf)


def _row_part(
    r: float, alpha: float, a: float, b: float, population: Population
) -> tuple[FloatArray, FloatArray]:
    """The row terms' log-likelihood and their gradient in (r, alpha, a, b), one per row."""
    x, t_x, T = population.x, population.t_x, population.T
    alive, dropped = _row_terms(r, alpha, a, b, x, t_x, T)
    ll = np.logaddexp(alive, dropped)
    share_dropped = np.exp(dropped - ll)  # posterior weight of the dropped-out explanation
    share_alive = 1 - share_dropped
    d_r = -share_alive * np.log(alpha + T) - share_dropped * np.log(alpha + t_x)
    d_alpha = -(r + x) * (share_alive / (alpha + T) + share_dropped / (alpha + t_x))
    d_a = share_dropped / a
    d_b = -share_dropped / (b + np.maximum(x, 1) - 1)
    return ll, np.vstack([d_r, d_alpha, d_a, d_b])


def _x_gradient(r: float, alpha: float, a: float, b: float, x: FloatArray) -> FloatArray:
    """d/d(r, alpha, a, b) of the x-only terms, one column per distinct x."""
    d_r = digamma(r + x) - digamma(r) + math.log(alpha)
    d_alpha = np.full_like(x, r / alpha)
    d_a = digamma(a + b) - digamma(a + b + x)
    d_b = digamma(b + x) - digamma(b) + d_a
    return np.vstack([d_r, d_alpha, d_a, d_b])


def _log_odds_dropped(
    params: BgNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> FloatArray:
    """ln[P(dropped out at t_x) / P(active at T)] given what was seen; -inf for x = 0."""
    alive, dropped = _row_terms(params.r, params.alpha, params.a, params.b, x, t_x, T)
    return dropped - alive


def weighted_sum(values: FloatArray, weights: FloatArray) -> FloatArray:
    """sum_i values[..., i] * weights[i].

    Not `values @ weights`: that calls BLAS, whose worker threads made fits ~10x slower on a
    busy 2-core machine (they spin, waiting for work, on the core the fit needs).
    """
    return np.asarray(np.einsum("...i,i->...", values, weights), dtype=np.float64)


def _floats(*values: npt.ArrayLike) -> list[FloatArray]:
    return list(np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in values)))
