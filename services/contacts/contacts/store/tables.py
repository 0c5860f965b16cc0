"""Contacts' schema: the core tables (the event store is the customer timeline)."""

from __future__ import annotations

from sqlalchemy import MetaData

from crm_shared.store.tables import CoreTables

metadata = MetaData()
core = CoreTables.on(metadata)
