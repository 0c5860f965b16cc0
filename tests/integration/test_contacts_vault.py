"""Contacts' key vault on every configured database: keys made once and kept, an erased
contact refused a new key, and what a transaction remembers of keys stays in it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from contacts.bootstrap import create_app
from contacts.settings import ContactsSettings
from contacts.store.tables import contact_keys
from contacts.store.vault import ErasedContact, Vault
from crm_shared.app.runtime import Runtime
from crm_shared.store.db import Database
from tests.support.db import statements_of

NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[Database]:
    runtime: Runtime = create_app(ContactsSettings(database_url=database_url)).state.runtime
    await runtime.migrate()
    try:
        yield runtime.db
    finally:
        await runtime.db.dispose()


async def _stored_keys(db: Database) -> dict[str, bytes]:
    async with db.read() as conn:
        rows = await conn.execute(select(contact_keys.c.contact_id, contact_keys.c.key))
        return {row.contact_id: bytes(row.key) for row in rows}


async def test_keys_are_made_once_stored_and_given_back_the_same(db: Database) -> None:
    vault = Vault(db, lambda: NOW)
    async with db.transaction() as conn:
        made = await vault.keys_creating(conn, ["a", "b"])
        again = await vault.keys_creating(conn, iter(["b", "c"]))  # same transaction
    async with db.transaction() as conn:
        later = await vault.keys_creating(conn, ["a", "c"])
    stored = await _stored_keys(db)
    assert set(made) == {"a", "b"} and set(again) == {"b", "c"}
    assert again["b"] == made["b"]
    assert stored == {"a": made["a"], "b": made["b"], "c": again["c"]}
    assert later == {"a": stored["a"], "c": stored["c"]}


async def test_an_erased_contact_gets_no_new_key_even_after_its_key_was_seen(
    db: Database,
) -> None:
    vault = Vault(db, lambda: NOW)
    async with db.transaction() as conn:
        await vault.keys_creating(conn, ["gone"])
    async with db.transaction() as conn:
        await vault.destroy(conn, ["gone"], erased_with="gone")
    # The key seen in the first transaction must not come back in a later one.
    with pytest.raises(ErasedContact):
        async with db.transaction() as conn:
            await vault.keys_creating(conn, ["gone", "other"])
    async with db.read() as conn:
        count = (await conn.execute(select(func.count()).select_from(contact_keys))).scalar()
    assert count == 0


async def test_a_key_destroyed_in_the_transaction_that_saw_it_is_forgotten(db: Database) -> None:
    vault = Vault(db, lambda: NOW)
    with pytest.raises(ErasedContact):
        async with db.transaction() as conn:
            await vault.keys_creating(conn, ["x"])
            await vault.destroy(conn, ["x"], erased_with="x")
            await vault.keys_creating(conn, ["x"])


async def test_a_transaction_rolled_back_leaves_no_key_behind_for_the_next(db: Database) -> None:
    vault = Vault(db, lambda: NOW)
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            first = await vault.keys_creating(conn, ["y"])
            raise RuntimeError("abort")
    async with db.transaction() as conn:
        second = await vault.keys_creating(conn, ["y"])
    assert second["y"] != first["y"]
    assert (await _stored_keys(db))["y"] == second["y"]


async def test_a_contact_created_in_the_transaction_gets_its_key_without_a_lookup(
    db: Database,
) -> None:
    """A new contact cannot have a key or an erasure yet: its key is made straight away.
    Told so of a contact that had a key after all, the vault keeps the stored one."""
    vault = Vault(db, lambda: NOW)
    async with db.transaction() as conn:
        stored = await vault.keys_creating(conn, ["old"])
    with statements_of(db) as statements:
        async with db.transaction() as conn:
            vault.created(conn, ["new"])
            new = await vault.keys_creating(conn, ["new"])
        made = list(statements)
        async with db.transaction() as conn:
            vault.created(conn, ["old"])
            old = await vault.keys_creating(conn, ["old"])
    assert [s.split()[0] for s in made if "CONTACT_KEYS" in s or "ERASURES" in s] == ["INSERT"]
    assert old == stored
    assert await _stored_keys(db) == {"old": stored["old"], "new": new["new"]}


async def test_only_the_transaction_that_creates_a_contact_skips_the_lookup(
    db: Database,
) -> None:
    vault = Vault(db, lambda: NOW)
    async with db.transaction() as conn:
        vault.created(conn, ["z"])
        await vault.keys_creating(conn, ["z"])
    async with db.transaction() as conn:
        await vault.destroy(conn, ["z"], erased_with="z")
    with pytest.raises(ErasedContact):
        async with db.transaction() as conn:
            await vault.keys_creating(conn, ["z"])


async def test_a_contact_created_and_erased_in_one_transaction_gets_no_new_key(
    db: Database,
) -> None:
    vault = Vault(db, lambda: NOW)
    with pytest.raises(ErasedContact):
        async with db.transaction() as conn:
            vault.created(conn, ["brief"])
            await vault.keys_creating(conn, ["brief"])
            await vault.destroy(conn, ["brief"], erased_with="brief")
            await vault.keys_creating(conn, ["brief"])
