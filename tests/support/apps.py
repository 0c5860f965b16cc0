"""Services in-process for API tests: migrated database, no broker, ASGI client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from crm_shared.app.runtime import Runtime
from tests.support.auth import auth_headers


@asynccontextmanager
async def api_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app's HTTP API over ASGI, its database migrated, Kafka not started;
    it sends a token with every scope."""
    runtime: Runtime = app.state.runtime
    await runtime.migrate()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=auth_headers()
        ) as client:
            yield client
    finally:
        await runtime.db.dispose()


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """The app's runtime started (database, Kafka side, consumers) for the block."""
    await app.state.runtime.start()
    try:
        yield app
    finally:
        await app.state.runtime.stop()


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    """A client of the app over ASGI, without starting anything; every scope."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=auth_headers()
    )
