from crm_shared.store.migrations import run_env
from scoring.store.tables import metadata

run_env(metadata)
