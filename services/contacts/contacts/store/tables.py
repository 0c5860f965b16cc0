"""Contacts' schema: the core tables (the event store is the customer timeline)."""

from __future__ import annotations

from crm_shared.store.tables import CoreTables
from sqlalchemy import MetaData

metadata = MetaData()
core = CoreTables.on(metadata)
