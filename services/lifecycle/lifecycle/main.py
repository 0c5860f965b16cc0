"""`crm-lifecycle serve | migrate`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from crm_shared.app.cli import service_cli
from lifecycle.bootstrap import MIGRATIONS, create_app
from lifecycle.settings import LifecycleSettings


def cli(argv: Sequence[str] | None = None) -> int:
    return service_cli(
        argv,
        settings_type=LifecycleSettings,
        create_app=create_app,  # type: ignore[arg-type]
        migrations=MIGRATIONS,
    )


if __name__ == "__main__":
    sys.exit(cli())
