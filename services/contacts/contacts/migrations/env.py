from contacts.store.tables import metadata
from crm_shared.store.migrations import run_env

run_env(metadata)
