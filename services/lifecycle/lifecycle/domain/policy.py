"""The lifecycle policy: the rules that turn events into stages, as versioned data.

See the service's README for the rules in words. A policy is loaded from a JSON file
(`CRM_LIFECYCLE_POLICY`) or is the default; every transition names the version it came from.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_VERSION = "default-1"
MAX_DAYS = 36_500
MAX_FACTOR = 100


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(default=DEFAULT_VERSION, min_length=1, max_length=50)
    active_after_purchases: int = Field(default=2, ge=2, le=100)
    # Bounded so that a due time stays a date: a century of silence, a hundred mean gaps.
    dormant_min_days: float = Field(default=90, gt=0, le=MAX_DAYS)
    dormant_factor: float = Field(default=3.0, ge=0, le=MAX_FACTOR)
    churn_min_days: float = Field(default=180, gt=0, le=MAX_DAYS)
    churn_factor: float = Field(default=6.0, ge=0, le=MAX_FACTOR)
    purchase_types: tuple[str, ...] = ("crm.purchase.completed.v1",)
    churn_types: tuple[str, ...] = ("crm.subscription.cancelled.v1",)

    @model_validator(mode="after")
    def _churn_after_dormancy(self) -> Policy:
        if self.churn_min_days <= self.dormant_min_days or self.churn_factor < self.dormant_factor:
            raise ValueError(
                "churn must come after dormancy: churn_min_days > dormant_min_days "
                "and churn_factor >= dormant_factor"
            )
        return self

    def dormant_after(self, mean_gap_days: float | None) -> timedelta:
        return _after(self.dormant_min_days, self.dormant_factor, mean_gap_days)

    def churn_after(self, mean_gap_days: float | None) -> timedelta:
        return _after(self.churn_min_days, self.churn_factor, mean_gap_days)


def _after(minimum: float, factor: float, mean_gap_days: float | None) -> timedelta:
    days = minimum if mean_gap_days is None else max(minimum, factor * mean_gap_days)
    return timedelta(days=days)


def load_policy(path: str | None) -> Policy:
    """The policy in the JSON file at `path`, or the default one."""
    if not path:
        return Policy()
    return Policy.model_validate(json.loads(Path(path).read_text()))
