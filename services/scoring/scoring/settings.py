from __future__ import annotations

from typing import ClassVar

from crm_shared.app.settings import ServiceSettings


class ScoringSettings(ServiceSettings):
    """Scoring settings: the common CRM_* variables (see the README)."""

    service_name: ClassVar[str] = "scoring"
    default_port: ClassVar[int] = 8003
