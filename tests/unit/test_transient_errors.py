"""Which errors the consumer retries (the database or broker is away) and which narrow a
batch down to the events at fault."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError

from crm_shared.messaging.consumer import is_transient


class PostgresError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("no such table: facts"), False),
        (DBAPIError("SELECT 1", {}, PostgresError("53300")), True),  # too many connections
        (DBAPIError("SELECT 1", {}, PostgresError("57P03")), True),  # starting up
        (DBAPIError("UPDATE", {}, PostgresError("40P01")), True),  # deadlock
        (DBAPIError("UPDATE", {}, PostgresError("40001")), True),  # serialization failure
        (DBAPIError("SELECT 1", {}, PostgresError("08006")), True),  # connection failure
        (IntegrityError("INSERT", {}, PostgresError("23505")), False),  # a duplicate: the data
        (DBAPIError("INSERT", {}, PostgresError("22001")), False),  # a value too long
        (ConnectionResetError(), True),
        (ValueError("bad"), False),
    ],
)
def test_an_error_is_transient_when_a_retry_can_outlive_it(
    error: BaseException, transient: bool
) -> None:
    assert is_transient(error) is transient
