from crm_shared.store.migrations import run_env
from lifecycle.store.tables import metadata

run_env(metadata)
