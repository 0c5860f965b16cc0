from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from crm_shared.app.settings import ServiceSettings
from notifications.domain.decide import Safeguards


class NotificationsSettings(ServiceSettings):
    """Notifications settings: the common CRM_* variables, channels and safeguards."""

    service_name: ClassVar[str] = "notifications"
    default_port: ClassVar[int] = 8004

    clock: Literal["wall", "event-time"] = "wall"
    smtp_host: str = Field(default="", description="unset: email goes to the log channel")
    smtp_port: int = 25
    smtp_sender: str = "crm@localhost"
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    webhook_url: str = ""
    webhook_secret: str = "change-me"
    sms_gateway_url: str = ""
    push_gateway_url: str = ""
    safeguards: Safeguards = Safeguards()
    unsubscribe_secret: str = "change-me-too"
    public_url: str = "http://127.0.0.1:8004"
    dispatch_interval_s: float = Field(default=1.0, gt=0)
    seed_playbooks: bool = True
