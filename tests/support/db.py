from __future__ import annotations

from dataclasses import dataclass

from crm_shared.store.db import Database
from crm_shared.store.tables import CoreTables


@dataclass
class CoreDb:
    """A database with the core tables, and the tables' handles."""

    db: Database
    tables: CoreTables
