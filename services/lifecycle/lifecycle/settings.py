from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from crm_shared.app.settings import ServiceSettings


class LifecycleSettings(ServiceSettings):
    """Lifecycle settings: the common CRM_* variables, the clock and the policy."""

    service_name: ClassVar[str] = "lifecycle"
    default_port: ClassVar[int] = 8002

    clock: Literal["wall", "event-time"] = Field(
        default="wall",
        description="wall: now is the wall clock; event-time: the highest event time seen",
    )
    lifecycle_policy: str = Field(default="", description="path of a policy JSON file")
    sweep_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="wall clock: how often customers whose silence is due are moved",
    )
