from crm_shared.store.migrations import run_env
from notifications.store.tables import metadata

run_env(metadata)
