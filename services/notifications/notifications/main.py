"""`crm-notifications serve | migrate`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from crm_shared.app.cli import service_cli
from notifications.bootstrap import MIGRATIONS, create_app
from notifications.settings import NotificationsSettings


def cli(argv: Sequence[str] | None = None) -> int:
    return service_cli(
        argv,
        settings_type=NotificationsSettings,
        create_app=create_app,  # type: ignore[arg-type]
        migrations=MIGRATIONS,
    )


if __name__ == "__main__":
    sys.exit(cli())
