"""Notifications's schema: the core tables; its own tables come with its models."""

from __future__ import annotations

from crm_shared.store.tables import CoreTables
from sqlalchemy import MetaData

metadata = MetaData()
core = CoreTables.on(metadata)
