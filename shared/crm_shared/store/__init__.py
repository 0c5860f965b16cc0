from sqlalchemy.dialects import registry

# `sqlite+inline://`: SQLite on the event loop's thread (see `sqlite_inline`).
registry.register("sqlite.inline", "crm_shared.store.sqlite_inline", "SQLiteDialect_inline")
