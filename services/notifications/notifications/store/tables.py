"""Notifications's schema: the core tables; its own tables come with its models."""

from __future__ import annotations

from sqlalchemy import MetaData

from crm_shared.store.tables import CoreTables

metadata = MetaData()
core = CoreTables.on(metadata)
