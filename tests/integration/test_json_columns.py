"""JSON columns on every configured database: written and read through orjson, with the
json module's exact reading of integers beyond 64 bits."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, Table, select, text

from tests.support.db import database_with

metadata = MetaData()
documents = Table(
    "documents", metadata, Column("n", Integer, primary_key=True), Column("body", JSON)
)

BODIES: list[Any] = [
    {},
    [],
    {"plan": "gold", "seats": 5, "ratio": 0.1, "ok": True, "none": None},
    {"name": "Zoë Ångström 東京", "nested": {"list": [1, 2.5, "x", [None]]}},
    {"big": 123456789012345678901234567890, "edges": [2**63 - 1, -(2**63), 2**64 - 1, 2**64]},
    {"phone": "+441234567890123456789", "long_fraction": 0.12345678901234567890123},
]


async def test_json_documents_read_back_exactly_as_written(database_url: str) -> None:
    db = await database_with(database_url, metadata)
    try:
        async with db.transaction() as conn:
            await conn.execute(
                documents.insert(), [{"n": n, "body": b} for n, b in enumerate(BODIES)]
            )
            await conn.execute(documents.insert().values(n=100, body={1: "int key"}))
        async with db.read() as conn:
            rows = dict((await conn.execute(select(documents.c.n, documents.c.body))).all())
    finally:
        await db.dispose()
    assert [rows[n] for n in range(len(BODIES))] == BODIES
    assert isinstance(rows[4]["big"], int) and isinstance(rows[4]["edges"][3], int)
    assert rows[100] == {"1": "int key"}


async def test_a_sqlite_document_written_with_nan_by_the_json_module_still_reads(
    tmp_path: Path,
) -> None:
    """Databases written before orjson may hold NaN and Infinity (the json module's tokens);
    orjson refuses them, so they are read by json."""
    db = await database_with(f"sqlite:///{tmp_path / 'db.sqlite'}", metadata)
    stored = json.dumps({"nan": math.nan, "inf": math.inf})
    try:
        async with db.transaction() as conn:
            insert = text("INSERT INTO documents (n, body) VALUES (1, :b)")
            await conn.execute(insert, {"b": stored})
        async with db.read() as conn:
            body = (await conn.execute(select(documents.c.body))).scalar_one()
    finally:
        await db.dispose()
    assert math.isnan(body["nan"]) and body["inf"] == math.inf


@pytest.mark.parametrize("value", [math.nan, math.inf])
async def test_nan_and_infinity_are_written_as_null(database_url: str, value: float) -> None:
    """PostgreSQL refuses NaN and Infinity in JSON; they are stored as null everywhere."""
    db = await database_with(database_url, metadata)
    try:
        async with db.transaction() as conn:
            await conn.execute(documents.insert().values(n=1, body={"x": value}))
        async with db.read() as conn:
            body = (await conn.execute(select(documents.c.body))).scalar_one()
    finally:
        await db.dispose()
    assert body == {"x": None}
