"""CSV import over HTTP (`POST /v1/imports`) and from the command line (`crm-contacts import`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from contacts.bootstrap import create_app
from contacts.settings import ContactsSettings
from tests.support.apps import api_client

PEOPLE = (
    "first_name,last_name,email,phone,country,tags,external_id,attr.plan,attr.seats\n"
    "Ada,Lovelace,ada@example.com,020 7946 0958,GB,vip;webinar,shop:1,gold,5\n"
    "Charles,Babbage,charles@example.com;cb@example.org,,GB,,,silver,\n"
    "Grace,Hopper,grace@example.com,+1 202 555 0143,US,navy,shop:3,,12\n"
)


@pytest_asyncio.fixture(loop_scope="session")
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(create_app(ContactsSettings(database_url=database_url))) as client:
        yield client


async def import_csv(client: httpx.AsyncClient, text: str, **params: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/imports", content=text.encode(), headers={"content-type": "text/csv"}, params=params
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def all_contacts(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/v1/contacts", params={"limit": 200})
    assert response.status_code == 200
    return list(response.json()["items"])


async def contact_by(client: httpx.AsyncClient, ref: str) -> dict[str, Any]:
    found = (await client.get("/v1/contacts", params={"ref": ref})).json()["items"]
    assert len(found) == 1, found
    return dict(found[0])


def counts(summary: dict[str, Any]) -> tuple[int, ...]:
    keys = ("rows", "created", "updated", "unchanged", "failed")
    return tuple(summary[k] for k in keys)


async def test_importing_the_same_file_again_updates_instead_of_duplicating(
    client: httpx.AsyncClient,
) -> None:
    first = await import_csv(client, PEOPLE)
    assert counts(first) == (3, 3, 0, 0, 0) and first["errors"] == []
    again = await import_csv(client, PEOPLE)
    assert counts(again) == (3, 0, 0, 3, 0)
    contacts = await all_contacts(client)
    assert len(contacts) == 3
    ada = await contact_by(client, "email:ada@example.com")
    assert ada["origin"] == "import" and ada["version"] == 1
    assert ada["profile"]["phones"] == ["+442079460958"]
    assert ada["profile"]["tags"] == ["vip", "webinar"]
    assert ada["profile"]["attributes"] == {"plan": "gold", "seats": 5}
    assert ada["external_ids"] == ["shop:1"]
    charles = await contact_by(client, "email:cb@example.org")
    assert charles["profile"]["emails"] == ["charles@example.com", "cb@example.org"]


async def test_a_changed_row_updates_only_the_columns_given_and_adds_to_lists(
    client: httpx.AsyncClient,
) -> None:
    await import_csv(client, PEOPLE)
    changed = "email,city,tags,attr.plan\nADA@example.com,London,speaker,platinum\n"
    summary = await import_csv(client, changed)
    assert counts(summary) == (1, 0, 1, 0, 0)
    ada = await contact_by(client, "email:ada@example.com")
    assert ada["profile"]["city"] == "London" and ada["profile"]["last_name"] == "Lovelace"
    assert ada["profile"]["tags"] == ["vip", "webinar", "speaker"]
    assert ada["profile"]["attributes"] == {"plan": "platinum", "seats": 5}
    assert len(await all_contacts(client)) == 3


async def test_failed_rows_are_reported_by_number_and_the_others_import(
    client: httpx.AsyncClient,
) -> None:
    text = (
        "email,time_zone,external_id\n"
        "ok1@example.com,Europe/Paris,\n"
        "not-an-email,,\n"
        "ok2@example.com,,\n"
        "bad-zone@example.com,Mars/Olympus,\n"
        "bad-ext@example.com,,noseparator\n"
    )
    summary = await import_csv(client, text)
    assert counts(summary) == (5, 2, 0, 0, 3)
    assert [(e["row"], e["status"], e["error"].split(":")[0]) for e in summary["errors"]] == [
        (2, "error", "emails"),
        (4, "error", "time_zone"),
        (5, "error", "external_ids"),
    ]
    assert "Mars/Olympus" in summary["errors"][1]["error"]
    emails = sorted(c["profile"]["emails"][0] for c in await all_contacts(client))
    assert emails == ["ok1@example.com", "ok2@example.com"]


async def test_a_row_matching_an_existing_contact_by_phone_or_external_id_updates_it(
    client: httpx.AsyncClient,
) -> None:
    ada_body = {"first_name": "Ada", "phones": ["+44 20 7946 0958"], "tags": ["vip"]}
    by_phone = (await client.post("/v1/contacts", json=ada_body)).json()
    bo_body = {"first_name": "Bo", "external_ids": ["shop:42"], "attributes": {"plan": "gold"}}
    by_ext = (await client.post("/v1/contacts", json=bo_body)).json()
    text = (
        "phone,country,email,tags,external_id,attr.seats\n"
        "020 7946 0958,GB,ada@example.com,speaker,,\n"
        ",,bo@example.com,,SHOP:42,3\n"
    )
    summary = await import_csv(client, text)
    assert counts(summary) == (2, 0, 2, 0, 0)
    assert len(await all_contacts(client)) == 2
    ada = (await client.get(f"/v1/contacts/{by_phone['id']}")).json()
    assert ada["profile"]["emails"] == ["ada@example.com"]
    assert ada["profile"]["tags"] == ["vip", "speaker"] and ada["profile"]["first_name"] == "Ada"
    bo = (await client.get(f"/v1/contacts/{by_ext['id']}")).json()
    assert bo["profile"]["emails"] == ["bo@example.com"]
    assert bo["profile"]["attributes"] == {"plan": "gold", "seats": 3}


async def test_rows_of_one_person_in_one_file_make_one_contact(
    client: httpx.AsyncClient,
) -> None:
    text = (
        "email,phone,external_id,first_name\n"
        "ada@example.com,,,Ada\n"
        "ADA@example.com,+44 20 7946 0958,,\n"
        ",+442079460958,shop:1,\n"
        ",,shop:1,Augusta\n"
        "ada@example.com,,,\n"
    )
    summary = await import_csv(client, text)
    assert counts(summary) == (5, 1, 3, 1, 0)
    [ada] = await all_contacts(client)
    assert ada["profile"]["emails"] == ["ada@example.com"]
    assert ada["profile"]["phones"] == ["+442079460958"]
    assert ada["external_ids"] == ["shop:1"] and ada["profile"]["first_name"] == "Augusta"


async def test_a_row_whose_identifiers_belong_to_two_contacts_is_refused(
    client: httpx.AsyncClient,
) -> None:
    await import_csv(client, PEOPLE)
    summary = await import_csv(client, "email,phone\nada@example.com,+1 202 555 0143\n")
    assert counts(summary) == (1, 0, 0, 0, 1)
    assert "held by different contacts" in summary["errors"][0]["error"]
    grace = await contact_by(client, "email:grace@example.com")
    assert grace["version"] == 1


async def test_a_dry_run_reports_what_would_happen_and_writes_nothing(
    client: httpx.AsyncClient,
) -> None:
    text = PEOPLE + "Ada,,ada@example.com,,,,,,\nNobody,,nope,,,,,,\n"
    rehearsal = await import_csv(client, text, dry_run="true")
    assert rehearsal["dry_run"] is True
    assert counts(rehearsal) == (5, 3, 0, 1, 1)
    assert await all_contacts(client) == []
    real = await import_csv(client, text)
    assert counts(real) == counts(rehearsal) and real["dry_run"] is False
    assert len(await all_contacts(client)) == 3


async def test_a_file_with_unknown_columns_is_refused_whole(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/imports",
        content=b"email,colour,size\na@example.com,red,L\n",
        headers={"content-type": "text/csv"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["unknown_columns"] == ["colour", "size"]
    assert await all_contacts(client) == []


async def test_not_csv_gets_415(client: httpx.AsyncClient) -> None:
    for content_type in ("application/json", "text/csv; charset=latin-1"):
        response = await client.post(
            "/v1/imports", content=b"email\na@example.com\n", headers={"content-type": content_type}
        )
        assert response.status_code == 415, content_type
        assert response.headers["content-type"] == "application/problem+json"
    assert await all_contacts(client) == []


async def test_a_form_upload_with_a_file_field_imports_too(client: httpx.AsyncClient) -> None:
    files = {"file": ("people.csv", b"\xef\xbb\xbf" + PEOPLE.encode(), "text/csv")}
    response = await client.post("/v1/imports", files=files)
    assert response.status_code == 200, response.text
    assert counts(response.json()) == (3, 3, 0, 0, 0)
    missing = await client.post("/v1/imports", files={"other": ("x.csv", b"email\n")})
    assert missing.status_code == 422 and "`file`" in missing.json()["detail"]


async def test_a_file_over_the_size_limit_gets_413(database_url: str) -> None:
    settings = ContactsSettings(database_url=database_url, import_max_bytes=1024)
    async with api_client(create_app(settings)) as client:
        big = "email\n" + "".join(f"p{n}@example.com\n" for n in range(100))
        response = await client.post(
            "/v1/imports", content=big.encode(), headers={"content-type": "text/csv"}
        )
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"

        async def chunks() -> AsyncIterator[bytes]:
            yield big.encode()  # no Content-Length: refused while reading

        streamed = await client.post(
            "/v1/imports", content=chunks(), headers={"content-type": "text/csv"}
        )
        assert streamed.status_code == 413
        assert await all_contacts(client) == []


def run_cli(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRM_DATABASE_URL": database, "CRM_LOG_JSON": "true"}
    return subprocess.run(
        [sys.executable, "-m", "contacts.main", "import", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_import_command_upserts_a_file_and_exits_by_outcome(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'contacts.db'}"
    people = tmp_path / "people.csv"
    people.write_bytes(b"\xef\xbb\xbf" + PEOPLE.encode() + b"Ada,,ada@example.com,,,,,,\n")
    first = run_cli(database, str(people), "--chunk", "2")
    assert first.returncode == 0, first.stderr
    assert counts(json.loads(first.stdout)) == (4, 3, 0, 1, 0)
    assert "4/4 rows 100%" in first.stderr and "rows/s" in first.stderr

    people.write_text(PEOPLE + "Nobody,,nope,,,,,,\n")
    again = run_cli(database, str(people), "--chunk", "2")
    assert again.returncode == 1, again.stderr
    summary = json.loads(again.stdout)
    assert counts(summary) == (4, 0, 0, 3, 1) and summary["errors"][0]["row"] == 4

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("email,colour\nnew@example.com,red\n")
    refused = run_cli(database, str(unknown))
    assert refused.returncode == 2 and "'colour'" in refused.stderr and refused.stdout == ""

    async with api_client(create_app(ContactsSettings(database_url=database))) as client:
        contacts = await all_contacts(client)
    assert sorted(c["profile"]["first_name"] for c in contacts) == ["Ada", "Charles", "Grace"]


async def test_the_import_command_dry_run_writes_nothing(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'contacts.db'}"
    people = tmp_path / "people.csv"
    people.write_text(PEOPLE + "Ada,,ada@example.com,,,,,,\n")
    # Row 4 matches row 1 three chunks on: it must count as what a real import would do.
    rehearsal = run_cli(database, str(people), "--dry-run", "--chunk", "1")
    assert rehearsal.returncode == 0, rehearsal.stderr
    assert counts(json.loads(rehearsal.stdout)) == (4, 3, 0, 1, 0)
    async with api_client(create_app(ContactsSettings(database_url=database))) as client:
        assert await all_contacts(client) == []


async def test_numbers_too_long_for_an_attribute_fail_their_row_alone(
    client: httpx.AsyncClient,
) -> None:
    text = (
        "email,attr.n\n"
        f"huge@example.com,{'1' * 5000}\n"  # more digits than Python converts to an int
        f"long@example.com,{'9' * 600}\n"  # an int whose text passes the 500 kept for filters
        "fine@example.com,42\n"
    )
    summary = await import_csv(client, text)
    assert counts(summary) == (3, 1, 0, 0, 2)
    assert [e["row"] for e in summary["errors"]] == [1, 2]
    assert all("more than 500 characters" in e["error"] for e in summary["errors"])
    assert (await contact_by(client, "email:fine@example.com"))["profile"]["attributes"] == {
        "n": 42
    }


async def test_a_row_naming_an_erased_contacts_email_is_refused(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/v1/contacts", json={"emails": ["erased@example.com"]})
    assert (await client.post(f"/v1/contacts/{created.json()['id']}/erase")).status_code == 200
    summary = await import_csv(
        client, "email,first_name\nErased@example.com,Back\nnew@example.com,New\n"
    )
    assert counts(summary) == (2, 1, 0, 0, 1)
    [refused] = summary["errors"]
    assert refused["row"] == 1
    assert refused["error"] == "row: email:erased@example.com belonged to a contact that was erased"
