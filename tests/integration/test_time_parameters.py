"""Times given as query parameters: every operation that takes one answers a time without
an offset with a 422 naming the parameter, and any valid RFC 3339 time, never with a 500
(the HTTP fuzzing found one: a time in year 1 with a positive offset is in year 0 in UTC,
which Python cannot represent)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.apps import SERVICES, api_client, service_app

# (service, path, parameter) for every operation with a time parameter.
OPERATIONS = [
    ("contacts", "/v1/contacts", "created_after"),
    ("contacts", "/v1/contacts", "created_before"),
    ("contacts", "/v1/contacts/c-1", "as_of"),
    ("contacts", "/v1/contacts/c-1/timeline", "after"),
    ("contacts", "/v1/contacts/c-1/timeline", "before"),
    ("lifecycle", "/v1/customers/c-1/stage", "as_of"),
    ("lifecycle", "/v1/stages/summary", "as_of"),
    ("lifecycle", "/v1/transitions", "after"),
    ("lifecycle", "/v1/transitions", "before"),
    ("lifecycle", "/v1/reports/flow", "after"),
    ("lifecycle", "/v1/reports/flow", "before"),
    ("scoring", "/v1/customers/c-1/score", "as_of"),
]
NAIVE = "2026-11-01T10:00:00"
# Valid RFC 3339, but in year 0 and in year 10000 once in UTC.
BEYOND = ["0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-01:00"]


def test_the_list_covers_every_operation_with_a_time_parameter() -> None:
    listed = {(service, path, name) for service, path, name in OPERATIONS}
    found = set()
    for service in SERVICES:
        schema = service_app(service, "sqlite+aiosqlite://").openapi()
        for path, item in schema["paths"].items():
            for parameter in item.get("get", {}).get("parameters", []):
                types = parameter["schema"].get("anyOf", [parameter["schema"]])
                if parameter["in"] == "query" and {"format": "date-time", "type": "string"} in [
                    {k: t.get(k) for k in ("format", "type")} for t in types
                ]:
                    found.add((service, path, parameter["name"]))
    concrete = {(s, p.replace("c-1", "{id}"), n) for s, p, n in listed}
    assert {(s, _generic(p), n) for s, p, n in found} == concrete


def _generic(path: str) -> str:
    """`/v1/contacts/{contact_id}` -> `/v1/contacts/{id}`."""
    return "/".join("{id}" if part.startswith("{") else part for part in path.split("/"))


@pytest.mark.parametrize(("service", "path", "name"), OPERATIONS)
async def test_a_time_without_an_offset_is_a_422_naming_the_parameter(
    service: str, path: str, name: str, tmp_path: Path
) -> None:
    async with api_client(service_app(service, f"sqlite+aiosqlite:///{tmp_path}/t.db")) as api:
        response = await api.get(f"{path}?{name}={quote(NAIVE)}")
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["field"] == name
    assert problem["detail"] == f"{name}: give a time zone offset (RFC 3339)"


@pytest.mark.parametrize(("service", "path", "name"), OPERATIONS)
async def test_a_valid_time_beyond_what_python_represents_is_answered(
    service: str, path: str, name: str, database_url: str
) -> None:
    """As the first or last instant Python can represent, which answers the same, as no
    stored time lies beyond them: 200, or 404 for what did not exist then."""
    async with api_client(service_app(service, database_url)) as api:
        for value in BEYOND:
            response = await api.get(f"{path}?{name}={quote(value)}")
            assert response.status_code in (200, 404), (value, response.text)


async def test_times_are_read_in_utc_and_the_ends_are_kept(database_url: str) -> None:
    async with api_client(service_app("lifecycle", database_url)) as api:
        offset = await api.get("/v1/reports/flow?after=" + quote("2026-11-01T10:00:00+02:00"))
        ends = await api.get(f"/v1/reports/flow?after={quote(BEYOND[0])}&before={quote(BEYOND[1])}")
    assert offset.status_code == 200, offset.text
    assert offset.json()["after"] == "2026-11-01T08:00:00Z"
    assert ends.status_code == 200, ends.text
    assert ends.json()["after"] == "0001-01-01T00:00:00Z"
    assert ends.json()["before"] == "9999-12-31T23:59:59.999999Z"
