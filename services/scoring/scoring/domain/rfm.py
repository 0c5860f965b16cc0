"""RFM: recency, frequency and monetary scores 1-5 by quintile, and the usual named segments.

Each measure is scored over the population scored together; 5 is the best fifth: the most
recent last purchase (smallest time since it), the most purchases, the highest spend.

Ties: a customer scores 1 + floor(5 * the share of the population strictly worse than them).
Equal values always get equal scores, whatever the input order, and a tied block sits in the
quintile where it starts: when 60% of customers bought once, all of them score F = 1 and no
one scores 2 or 3, rather than a cut through identical customers by their position.

Segments come from R and the combined FM = (F + M) / 2 rounded half up, so a customer strong
on one and middling on the other leans to the stronger (F=5, M=4 gives FM=5). Every (R, FM)
cell has exactly one segment. The grid is the widely used R x F one with FM in place of F,
and its low corner split into hibernating (R = 2) and lost (R = 1):

| segment             | R   | FM  | who                                              |
|---------------------|-----|-----|--------------------------------------------------|
| champions           | 5   | 4-5 | bought very recently, often, and spend the most  |
| loyal customers     | 3-4 | 4-5 | buy often and spend well, lately a little less   |
| potential loyalists | 4-5 | 2-3 | recent, with average frequency and spend         |
| new customers       | 5   | 1   | bought very recently, but little so far          |
| promising           | 4   | 1   | recent, little so far                            |
| need attention      | 3   | 3   | average on everything, slipping                  |
| about to sleep      | 3   | 1-2 | below average, and slipping                      |
| at risk             | 1-2 | 3-4 | bought often and spent well, but long ago        |
| can't lose them     | 1-2 | 5   | among the best, but gone quiet                   |
| hibernating         | 2   | 1-2 | long ago, little                                 |
| lost                | 1   | 1-2 | the longest ago, little                          |

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
QUINTILES = 5


class Segment(StrEnum):
    CHAMPIONS = "champions"
    LOYAL_CUSTOMERS = "loyal customers"
    POTENTIAL_LOYALISTS = "potential loyalists"
    NEW_CUSTOMERS = "new customers"
    PROMISING = "promising"
    NEED_ATTENTION = "need attention"
    ABOUT_TO_SLEEP = "about to sleep"
    AT_RISK = "at risk"
    CANT_LOSE_THEM = "can't lose them"
    HIBERNATING = "hibernating"
    LOST = "lost"


# (segment, R from..to, FM from..to): the module docstring's table.
RULES: tuple[tuple[Segment, tuple[int, int], tuple[int, int]], ...] = (
    (Segment.CHAMPIONS, (5, 5), (4, 5)),
    (Segment.LOYAL_CUSTOMERS, (3, 4), (4, 5)),
    (Segment.POTENTIAL_LOYALISTS, (4, 5), (2, 3)),
    (Segment.NEW_CUSTOMERS, (5, 5), (1, 1)),
    (Segment.PROMISING, (4, 4), (1, 1)),
    (Segment.NEED_ATTENTION, (3, 3), (3, 3)),
    (Segment.ABOUT_TO_SLEEP, (3, 3), (1, 2)),
    (Segment.AT_RISK, (1, 2), (3, 4)),
    (Segment.CANT_LOSE_THEM, (1, 2), (5, 5)),
    (Segment.HIBERNATING, (2, 2), (1, 2)),
    (Segment.LOST, (1, 1), (1, 2)),
)


def _grid() -> dict[tuple[int, int], Segment]:
    """(R, FM) -> segment, refusing rules that overlap or leave a cell out."""
    grid: dict[tuple[int, int], Segment] = {}
    for name, (r_from, r_to), (fm_from, fm_to) in RULES:
        for cell in ((r, fm) for r in range(r_from, r_to + 1) for fm in range(fm_from, fm_to + 1)):
            if cell in grid:
                raise ValueError(f"R, FM = {cell} is both {grid[cell]} and {name}")
            grid[cell] = name
    if len(grid) != QUINTILES * QUINTILES:
        raise ValueError("the RFM rules leave some (R, FM) cells without a segment")
    return grid


SEGMENTS = _grid()


@dataclass(frozen=True, slots=True)
class RfmScores:
    """The three scores (1-5) of each customer, in the order given."""

    recency: IntArray
    frequency: IntArray
    monetary: IntArray

    @property
    def fm(self) -> IntArray:
        """(F + M) / 2 rounded half up."""
        return (self.frequency + self.monetary + 1) // 2

    def segments(self) -> list[Segment]:
        pairs = zip(self.recency.tolist(), self.fm.tolist(), strict=True)
        return [segment(r, fm) for r, fm in pairs]


def rfm_scores(
    since_last_purchase: npt.ArrayLike, frequency: npt.ArrayLike, monetary: npt.ArrayLike
) -> RfmScores:
    """Scores for a population: time since each customer's last purchase (any unit; T - t_x
    in BG/NBD terms), their number of purchases, and their spend (total or mean)."""
    recency = quintile_scores(since_last_purchase, higher_is_better=False)
    scores = RfmScores(recency, quintile_scores(frequency), quintile_scores(monetary))
    if not recency.size == scores.frequency.size == scores.monetary.size:
        raise ValueError("recency, frequency and monetary must have one value per customer")
    return scores


def quintile_scores(values: npt.ArrayLike, *, higher_is_better: bool = True) -> IntArray:
    """1 + floor(5 * share of the population strictly worse), per value (see module doc)."""
    v = np.ravel(np.asarray(values, dtype=np.float64))
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("scores need at least one customer and finite values")
    goodness = v if higher_is_better else -v
    strictly_worse = np.searchsorted(np.sort(goodness), goodness, side="left")
    return np.asarray(1 + QUINTILES * strictly_worse // v.size, dtype=np.int64)


def segment(r: int, fm: int) -> Segment:
    """The named segment of a customer with recency score r and combined score fm (1-5)."""
    if not (1 <= r <= QUINTILES and 1 <= fm <= QUINTILES):
        raise ValueError(f"scores are 1-5, got R={r}, FM={fm}")
    return SEGMENTS[r, fm]
