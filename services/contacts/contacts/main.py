"""`crm-contacts serve | migrate`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from contacts.bootstrap import MIGRATIONS, create_app
from contacts.settings import ContactsSettings
from crm_shared.app.cli import service_cli


def cli(argv: Sequence[str] | None = None) -> int:
    return service_cli(
        argv,
        settings_type=ContactsSettings,
        create_app=create_app,  # type: ignore[arg-type]
        migrations=MIGRATIONS,
    )


if __name__ == "__main__":
    sys.exit(cli())
