from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from crm_shared.app.settings import ServiceSettings
from scoring.domain.risk import RiskWeights


class ScoringSettings(ServiceSettings):
    """Scoring settings: the common CRM_* variables, the clock, model and publishing knobs."""

    service_name: ClassVar[str] = "scoring"
    default_port: ClassVar[int] = 8003

    clock: Literal["wall", "event-time"] = "wall"
    tier_percentiles: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default={"A": 0.9, "B": 0.7, "C": 0.4},
        description="a customer is in the highest tier whose lifetime-value percentile they reach",
    )
    lowest_tier: str = "D"
    horizon_months: int = Field(default=12, ge=1, le=120)
    monthly_discount_rate: float = Field(default=0.01, ge=0, le=1)
    risk_weights: RiskWeights = RiskWeights()
    risk_step: float = Field(default=0.1, gt=0, le=1, description="publish a risk move this big")
    value_step: float = Field(
        default=0.25, gt=0, description="publish a relative CLV move this big"
    )
    min_buyers_for_fit: int = Field(default=50, ge=10)
    refit_interval_h: float = Field(default=24.0, gt=0)
    rescore_interval_h: float = Field(default=24.0, gt=0)
