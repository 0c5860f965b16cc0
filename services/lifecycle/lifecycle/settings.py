from __future__ import annotations

from typing import ClassVar

from crm_shared.app.settings import ServiceSettings


class LifecycleSettings(ServiceSettings):
    """Lifecycle settings: the common CRM_* variables (see the README)."""

    service_name: ClassVar[str] = "lifecycle"
    default_port: ClassVar[int] = 8002
