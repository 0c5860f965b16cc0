"""Pytest plugin of the CRM project: a real broker and fresh databases for every test.

Loaded with `-p crm_shared.testing.plugin` (see the root pyproject.toml).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from crm_shared.testing.databases import configured_backends, fresh_database

# --- broker fixtures (begin) ---
# isort: split
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator

from crm_shared.messaging.topics import ensure_topics, with_dlq
from crm_shared.testing.broker import Broker

TEST_BOOTSTRAP_ENV = "CRM_TEST_KAFKA_BOOTSTRAP"
TEST_TOPIC_PARTITIONS = 3

# Every service built or started in a test checks tokens signed with this secret
# (settings read it from the environment); tests sign theirs with it too.
TEST_AUTH_SECRET = "crm-test-secret-not-for-production-0123456789"
os.environ.setdefault("CRM_AUTH_JWT_SECRET", TEST_AUTH_SECRET)

NewTopics = Callable[..., Awaitable[list[str]]]
"""`await new_topics("orders", "payments", partitions=3)` -> the unique topic names."""


def _unique_suffix() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """The Kafka-compatible broker of this test run, started once.

    `CRM_TEST_KAFKA_BOOTSTRAP=host:port` uses a running broker instead; then
    `broker.managed` is false and fault tests (pause, restart) must skip.
    """
    external = os.environ.get(TEST_BOOTSTRAP_ENV, "").strip()
    if external:
        yield Broker.external(external)
        return
    with Broker() as started:
        yield started


@pytest.fixture
def unique() -> str:
    """A short random string for topic and consumer group names no other test uses."""
    return _unique_suffix()


@pytest.fixture
def new_topics(broker: Broker) -> NewTopics:
    """Creates fresh topics (each with its `.dlq` twin) named after the given bases.

    Tests share one broker for the whole run, so every call gets new names.
    """

    async def create(*bases: str, partitions: int = TEST_TOPIC_PARTITIONS) -> list[str]:
        if not bases:
            raise ValueError("new_topics needs at least one base name")
        suffix = _unique_suffix()
        names = [f"{base}.{suffix}" for base in bases]
        await ensure_topics(broker.bootstrap, with_dlq(names), partitions=partitions)
        return names

    return create


# --- broker fixtures (end) ---


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that takes a database once per configured backend."""
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize("db_backend", configured_backends(), indirect=False, scope="function")


@pytest.hookimpl(tryfirst=True)  # before `-m storage` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "database_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.storage)


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(db_backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a new, empty database on the backend this test run is for."""
    async with fresh_database(db_backend, tmp_path) as url:
        yield url
