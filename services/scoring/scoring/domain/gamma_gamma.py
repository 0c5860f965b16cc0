"""The Gamma-Gamma model of spend per transaction (Fader, Hardie and Lee 2005, "RFM and CLV:
Using Iso-Value Curves for Customer Base Analysis", Journal of Marketing Research 42(4),
after Colombo and Jiang 1999).

A customer's transaction values are Gamma(p, nu) around their own mean p / nu, and nu varies
across customers as Gamma(q, gamma). What is seen of a repeat buyer is x (repeat purchases)
and m_x, the mean value of those x purchases; customers without a repeat purchase carry no
information about their spend and are left out of the fit. The model assumes spend per
transaction does not depend on how often a customer buys.

Pure: no I/O, no clock, no randomness. Functions take scalars or numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import digamma, gammaln

from scoring.domain.bgnbd import checked_weights, maximum_likelihood, weighted_sum

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class GammaGammaParams:
    """Fitted parameters, with what they were fitted on (unknown when taken from elsewhere)."""

    p: float
    q: float
    gamma: float
    log_likelihood: float = math.nan
    customers: int = 0


@dataclass(frozen=True, slots=True)
class RepeatBuyers:
    """Repeat buyers' x >= 1 and m_x > 0, each row weighted by how many customers it stands for."""

    x: FloatArray
    m_x: FloatArray
    weights: FloatArray


def expected_spend(params: GammaGammaParams, x: npt.ArrayLike, m_x: npt.ArrayLike) -> FloatArray:
    """E[mean transaction value | x, m_x]: a credibility-weighted blend of the population mean
    p gamma / (q - 1) and the customer's own mean m_x, trusting m_x more as x grows.

    For x = 0 it is the population mean, whatever m_x is; that mean is finite only for q > 1.
    """
    x_ = np.asarray(x, dtype=np.float64)
    m_x_ = np.asarray(m_x, dtype=np.float64)
    p, q, gamma = params.p, params.q, params.gamma
    own = p * x_ / (p * x_ + q - 1)
    return np.asarray((1 - own) * gamma * p / (q - 1) + own * m_x_, dtype=np.float64)


def log_likelihood(params: GammaGammaParams, x: npt.ArrayLike, m_x: npt.ArrayLike) -> FloatArray:
    """Each repeat buyer's ln f(m_x | p, q, gamma, x), the density of their mean spend."""
    x_ = np.asarray(x, dtype=np.float64)
    m_x_ = np.asarray(m_x, dtype=np.float64)
    return _log_likelihood(params.p, params.q, params.gamma, x_, m_x_)


def fit(
    x: npt.ArrayLike, m_x: npt.ArrayLike, *, weights: npt.ArrayLike | None = None
) -> GammaGammaParams:
    """Maximum-likelihood parameters from the repeat buyers (x >= 1) among the customers given.

    Customers with x = 0 may be passed along (with any m_x): they are skipped.
    """
    buyers = repeat_buyers(x, m_x, weights)
    log_params = maximum_likelihood(_mean_negative_log_likelihood, 3, buyers, "Gamma-Gamma")
    p, q, gamma = (float(v) for v in np.exp(log_params))
    customers = float(buyers.weights.sum())
    mean_nll, _ = _mean_negative_log_likelihood(log_params, buyers)
    return GammaGammaParams(p, q, gamma, -mean_nll * customers, round(customers))


def repeat_buyers(
    x: npt.ArrayLike, m_x: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> RepeatBuyers:
    """The repeat buyers among the customers, or a ValueError naming what is wrong."""
    x_, m_x_ = (np.ravel(v) for v in np.broadcast_arrays(np.asarray(x, dtype=np.float64), m_x))
    w = checked_weights(weights, x_.size)
    repeat = (x_ >= 1) & (w > 0)
    if not repeat.any():
        raise ValueError("no repeat buyers (x >= 1) to fit")
    m_x_ = np.asarray(m_x_[repeat], dtype=np.float64)
    if not (np.isfinite(m_x_).all() and (m_x_ > 0).all()):
        raise ValueError("a repeat buyer's mean transaction value m_x must be > 0")
    return RepeatBuyers(x_[repeat], m_x_, w[repeat])


def _log_likelihood(p: float, q: float, gamma: float, x: FloatArray, m_x: FloatArray) -> FloatArray:
    # The mean of x Gamma(p, nu) values is Gamma(px, nu x); integrating nu ~ Gamma(q, gamma) out
    # leaves this density, whose p x ln x term keeps it a density of m_x rather than of x m_x.
    px = p * x
    norm = gammaln(px + q) - gammaln(px) - gammaln(q) + q * math.log(gamma)
    return np.asarray(
        norm + (px - 1) * np.log(m_x) + px * np.log(x) - (px + q) * np.log(gamma + x * m_x),
        dtype=np.float64,
    )


def _mean_negative_log_likelihood(
    log_params: FloatArray, buyers: RepeatBuyers
) -> tuple[float, FloatArray]:
    """-mean ln f and its gradient in (ln p, ln q, ln gamma)."""
    p, q, gamma = np.exp(log_params)
    x, m_x, w = buyers.x, buyers.m_x, buyers.weights
    ll = _log_likelihood(p, q, gamma, x, m_x)
    log_total = np.log(gamma + x * m_x)
    shared = digamma(p * x + q)
    d_p = x * (shared - digamma(p * x) + np.log(m_x) + np.log(x) - log_total)
    d_q = shared - digamma(q) + math.log(gamma) - log_total
    d_gamma = q / gamma - (p * x + q) / (gamma + x * m_x)
    grad = weighted_sum(np.vstack([d_p, d_q, d_gamma]), w)
    scale = -1.0 / float(w.sum())
    return float(weighted_sum(ll, w)) * scale, grad * np.exp(log_params) * scale
