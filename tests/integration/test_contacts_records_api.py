"""Contact records over HTTP: create, read, change, list, history, consent, merge."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from contacts.bootstrap import create_app
from contacts.settings import ContactsSettings
from contacts.store import records
from contacts.store.tables import erased_identifiers
from crm_shared.app.runtime import Runtime
from crm_shared.events.envelope import BATCH_CONTENT_TYPE
from tests.support.apps import api_client
from tests.support.events import purchase_json

ADA = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "emails": ["ada@example.com"],
    "country": "GB",
    "company": "Engines Ltd",
    "tags": ["vip"],
    "attributes": {"plan": "gold", "seats": 5},
    "source": "webinar",
}


@pytest_asyncio.fixture(loop_scope="session")
async def app(database_url: str) -> FastAPI:
    return create_app(ContactsSettings(database_url=database_url))


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def read_model_in_step(app: FastAPI, client: httpx.AsyncClient) -> AsyncIterator[None]:
    """After every test here: each contact's read-model row (what GETs and changes read)
    holds exactly what folding its record stream gives."""
    yield
    runtime: Runtime = app.state.runtime
    service = app.state.contacts
    async with runtime.db.read() as conn:
        streams = (
            await conn.execute(
                select(runtime.tables.events.c.stream_id)
                .where(runtime.tables.events.c.stream_id.like("contact-%"))
                .distinct()
            )
        ).scalars()
        for stream in list(streams):
            contact_id = stream.removeprefix("contact-")
            folded = await records.load(conn, service.store, service.registry, contact_id)
            assert await records.current(conn, contact_id) == folded, contact_id


async def create(client: httpx.AsyncClient, body: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = await client.post("/v1/contacts", json=body, params=params)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_a_created_contact_reads_back_with_its_etag_and_location(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/contacts", json={**ADA, "phones": ["020 7946 0958"]})
    assert response.status_code == 201
    contact = response.json()
    assert response.headers["ETag"] == '"1"'
    assert response.headers["Location"] == f"/v1/contacts/{contact['id']}"
    got = await client.get(f"/v1/contacts/{contact['id']}")
    assert got.json() == contact and got.headers["ETag"] == '"1"'
    assert contact["profile"]["phones"] == ["+442079460958"]


async def test_bad_fields_get_a_422_problem_naming_them(client: httpx.AsyncClient) -> None:
    cases = [
        ({"emails": ["nope"]}, "body.emails"),
        ({"time_zone": "Mars/Olympus"}, "body.time_zone"),
        ({"colour": "red"}, "body.colour"),
        ({"phones": ["+1 555"]}, "body.phones"),
        ({"external_ids": ["noseparator"]}, "external_ids"),
        ({"attributes": {"bio": "x" * 501}}, "body.attributes"),  # stored as text of 500
    ]
    for body, field in cases:
        response = await client.post("/v1/contacts", json=body)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert response.headers["content-type"] == "application/problem+json"
        assert field in (problem.get("field"), problem.get("errors", [{}])[0].get("field"))


async def test_an_idempotency_key_makes_a_retry_return_the_first_answer(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = await client.post("/v1/contacts", json={"first_name": "Bo"}, headers=headers)
    again = await client.post("/v1/contacts", json={"first_name": "Bo"}, headers=headers)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await client.post("/v1/contacts", json={"first_name": "Cy"}, headers=headers)
    assert other.status_code == 422 and "different body" in other.json()["detail"]
    listed = (await client.get("/v1/contacts")).json()["items"]
    assert len(listed) == 1


async def test_a_known_email_is_a_conflict_unless_a_duplicate_is_wanted(
    client: httpx.AsyncClient,
) -> None:
    ada = await create(client, ADA)
    response = await client.post("/v1/contacts", json={"emails": ["ADA@example.com"]})
    assert response.status_code == 409
    assert response.json()["existing_contact_id"] == ada["id"]
    await create(client, {"emails": ["ada@example.com"]}, allow_duplicate="true")


async def test_a_patch_with_the_current_etag_applies_and_a_stale_one_gets_412(
    client: httpx.AsyncClient,
) -> None:
    ada = await create(client, ADA)
    url = f"/v1/contacts/{ada['id']}"
    patch = {"city": "London", "company": None, "attributes": {"seats": 6}}
    ok = await client.patch(
        url, json=patch, headers={"If-Match": '"1"', "content-type": "application/merge-patch+json"}
    )
    assert ok.status_code == 200 and ok.headers["ETag"] == '"2"'
    profile = ok.json()["profile"]
    assert profile["city"] == "London" and profile["company"] is None
    assert profile["attributes"] == {"plan": "gold", "seats": 6}
    stale = await client.patch(url, json={"city": "Paris"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412 and stale.json()["current_version"] == 2
    assert (await client.get(url)).json()["profile"]["city"] == "London"
    bad = await client.patch(url, json={"phones": ["not a phone"]})
    assert bad.status_code == 422 and bad.json()["field"] == "phones"


async def test_fifty_concurrent_patches_with_one_etag_let_exactly_one_win(
    client: httpx.AsyncClient,
) -> None:
    ada = await create(client, ADA)
    url = f"/v1/contacts/{ada['id']}"
    responses = await asyncio.gather(
        *(
            client.patch(url, json={"city": f"City {i}"}, headers={"If-Match": '"1"'})
            for i in range(50)
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1 and set(codes) <= {200, 409, 412}
    [winner] = [r for r in responses if r.status_code == 200]
    stored = (await client.get(url)).json()
    assert stored["version"] == 2
    assert stored["profile"]["city"] == winner.json()["profile"]["city"]  # none lost silently


async def test_a_contact_reads_as_it_was_at_a_past_time_and_its_history_lists_changes(
    client: httpx.AsyncClient,
) -> None:
    ada = await create(client, ADA)
    url = f"/v1/contacts/{ada['id']}"
    await client.patch(url, json={"city": "Paris"}, headers={"X-Actor": "agent-7"})
    then = (await client.get(url, params={"as_of": ada["created_at"]})).json()
    assert (then["version"] == 1 and "city" not in then["profile"]) or then["profile"][
        "city"
    ] is None
    before = await client.get(url, params={"as_of": "2000-01-01T00:00:00Z"})
    assert before.status_code == 404
    history = (await client.get(f"{url}/history")).json()
    assert [h["type"] for h in history] == ["crm.contact.created.v1", "crm.contact.updated.v1"]
    assert history[1]["actor"] == "agent-7"
    assert {"field": "city", "from": None, "to": "Paris"} in history[1]["changes"]


async def test_listing_filters_and_pages_stably(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await create(
            client,
            {
                "first_name": f"P{i}",
                "country": "FR" if i % 2 else "DE",
                "tags": ["a"] if i < 3 else ["b"],
                "attributes": {"n": i},
                "emails": [f"p{i}@example.com"],
                "company": "Acme",
            },
        )
    seen, cursor = [], None
    while True:
        page = (
            await client.get(
                "/v1/contacts", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
            )
        ).json()
        seen += [c["profile"]["first_name"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ["P0", "P1", "P2", "P3", "P4"]

    async def names(**params: Any) -> list[str]:
        items = (await client.get("/v1/contacts", params=params)).json()["items"]
        return [c["profile"]["first_name"] for c in items]

    assert await names(country="fr") == ["P1", "P3"]
    assert await names(tag="a", country="DE") == ["P0", "P2"]
    assert await names(attribute="n:4") == ["P4"]
    assert await names(q="p3@exa") == ["P3"]
    assert await names(ref="email:P2@Example.com") == ["P2"]
    bad = await client.get("/v1/contacts", params={"cursor": "garbage"})
    assert bad.status_code == 422 and bad.json()["field"] == "cursor"


async def test_consent_changes_are_recorded_per_channel(client: httpx.AsyncClient) -> None:
    ada = await create(client, ADA)
    url = f"/v1/contacts/{ada['id']}/consent"
    granted = await client.put(f"{url}/email", json={"status": "granted", "source": "form"})
    assert granted.status_code == 200
    assert granted.json()["consent"]["email"]["status"] == "granted"
    early = await client.put(f"{url}/sms", json={"status": "revoked", "source": "form"})
    assert early.status_code == 409
    unknown = await client.put(f"{url}/pigeon", json={"status": "granted", "source": "form"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "channel"


async def test_duplicates_merge_and_unmerge(client: httpx.AsyncClient) -> None:
    ada = await create(client, ADA)
    twin = await create(
        client,
        {
            "first_name": "Ada",
            "last_name": "Lovelace.",
            "company": "ENGINES LTD",
            "emails": ["countess@example.com"],
            "city": "Marylebone",
        },
    )
    dup = await create(client, {"emails": ["ada@example.com"]}, allow_duplicate="true")
    found = (await client.get(f"/v1/contacts/{ada['id']}/duplicates")).json()
    reasons = {d["contact_id"]: d["reasons"] for d in found}
    assert reasons[dup["id"]] == ["same email ada@example.com"]
    assert reasons[twin["id"]][0].startswith("similar name at the same company")

    await client.post("/v1/events", json=purchase_json("email:countess@example.com", day=1))
    merged = await client.post(
        f"/v1/contacts/{ada['id']}/merge",
        json={"others": [twin["id"]], "fields": {"city": twin["id"]}},
    )
    assert merged.status_code == 200, merged.text
    survivor = merged.json()["profile"]
    assert survivor["city"] == "Marylebone"
    assert survivor["emails"] == ["ada@example.com", "countess@example.com"]
    loser = (await client.get(f"/v1/contacts/{twin['id']}")).json()
    assert (loser["status"], loser["merged_into"]) == ("merged", ada["id"])
    ref = (await client.get("/v1/contacts", params={"ref": "email:countess@example.com"})).json()
    assert [c["id"] for c in ref["items"]] == [ada["id"]]
    later = (await client.post("/v1/events", json=purchase_json(twin["id"], day=2))).json()
    assert later["contact_id"] == ada["id"]
    timeline = (await client.get(f"/v1/contacts/{ada['id']}/timeline")).json()["items"]
    assert len(timeline) == 2

    again = await client.post(f"/v1/contacts/{ada['id']}/merge", json={"others": [twin["id"]]})
    assert again.status_code == 409
    undone = await client.post(f"/v1/contacts/{ada['id']}/unmerge", json={"contact_id": twin["id"]})
    assert undone.status_code == 200
    assert undone.json()["profile"]["emails"] == ["ada@example.com"]
    assert "city" not in undone.json()["profile"] or undone.json()["profile"]["city"] is None
    restored = (await client.get(f"/v1/contacts/{twin['id']}")).json()
    assert restored["status"] == "active"
    ref = (await client.get("/v1/contacts", params={"ref": "email:countess@example.com"})).json()
    assert [c["id"] for c in ref["items"]] == [twin["id"]]


async def test_an_unknown_identifier_creates_a_prospect_found_by_it_next_time(
    client: httpx.AsyncClient,
) -> None:
    first = (await client.post("/v1/events", json=purchase_json("email:new@shop.com"))).json()
    second = (await client.post("/v1/events", json=purchase_json("email:NEW@shop.com"))).json()
    third = (await client.post("/v1/events", json=purchase_json("ext:shop:77"))).json()
    assert first["contact_id"] == second["contact_id"] != third["contact_id"]
    prospect = (await client.get(f"/v1/contacts/{first['contact_id']}")).json()
    assert prospect["origin"] == "ingestion"
    assert prospect["profile"]["emails"] == ["new@shop.com"]
    bad = await client.post("/v1/events", json=purchase_json("email:not-an-address"))
    assert bad.status_code == 422 and bad.json()["field"] == "subject"


async def test_the_event_catalogue_serves_json_schemas(client: httpx.AsyncClient) -> None:
    catalogue = (await client.get("/v1/schemas")).json()["types"]
    assert "crm.purchase.completed.v1" in [t["type"] for t in catalogue]
    one = (await client.get("/v1/schemas/crm.purchase.completed.v1")).json()
    assert "amount" in one["schema"]["properties"]
    assert (await client.get("/v1/schemas/crm.nope.v1")).status_code == 404


async def test_with_unknown_customers_rejected_an_unknown_subject_is_refused(
    database_url: str,
) -> None:
    settings = ContactsSettings(database_url=database_url, unknown_customers="reject")
    app: FastAPI = create_app(settings)
    async with api_client(app) as client:
        response = await client.post("/v1/events", json=purchase_json("email:who@x.com"))
        assert response.status_code == 422
        assert "no contact is known by 'email:who@x.com'" in response.json()["detail"]
        ada = await create(client, ADA)
        known = await client.post("/v1/events", json=purchase_json("email:ada@example.com"))
        assert known.status_code == 202 and known.json()["contact_id"] == ada["id"]


async def test_a_consent_change_sent_as_an_event_changes_the_record(
    client: httpx.AsyncClient,
) -> None:
    ada = await create(client, ADA)
    await client.put(
        f"/v1/contacts/{ada['id']}/consent/email", json={"status": "granted", "source": "form"}
    )
    clicked = datetime.now(UTC).isoformat()  # after the grant on record
    opt_out = {
        "specversion": "1.0",
        "id": "unsub-1",
        "source": "crm/notifications",
        "type": "crm.contact.consent_changed.v1",
        "subject": ada["id"],
        "time": clicked,
        "data": {
            "contact_id": ada["id"],
            "channel": "email",
            "status": "revoked",
            "source": "unsubscribe-link",
            "changed_at": clicked,
        },
    }
    assert (await client.post("/v1/events", json=opt_out)).status_code == 202
    record = (await client.get(f"/v1/contacts/{ada['id']}")).json()
    assert record["consent"]["email"]["status"] == "revoked"
    assert record["consent"]["email"]["source"] == "unsubscribe-link"
    again = await client.post("/v1/events", json=opt_out)
    assert again.json()["status"] == "duplicate"
    never = {**opt_out, "id": "unsub-2", "data": {**opt_out["data"], "channel": "sms"}}
    refused = await client.post("/v1/events", json=never)
    assert refused.status_code == 422 and "only be revoked once granted" in refused.json()["detail"]


async def test_a_consent_change_made_before_the_one_on_record_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    ada = await create(client, ADA)
    url = f"/v1/contacts/{ada['id']}/consent/email"
    await client.put(url, json={"status": "granted", "source": "form"})
    revoked = await client.put(url, json={"status": "revoked", "source": "unsubscribe-link"})
    assert revoked.status_code == 200
    late = {  # a grant made before the opt-out (no offset: UTC), delivered after it
        "specversion": "1.0",
        "id": "late-grant-1",
        "source": "preference-centre",
        "type": "crm.contact.consent_changed.v1",
        "subject": ada["id"],
        "time": "2026-01-01T00:00:00Z",
        "data": {
            "contact_id": ada["id"],
            "channel": "email",
            "status": "granted",
            "source": "preference-centre",
            "changed_at": "2026-01-01T00:00:00",
        },
    }
    assert (await client.post("/v1/events", json=late)).status_code == 202
    record = (await client.get(f"/v1/contacts/{ada['id']}")).json()
    assert record["consent"]["email"]["status"] == "revoked"
    assert record["consent"]["email"]["source"] == "unsubscribe-link"


async def test_an_unmerge_gives_each_contact_its_own_lists_back(
    client: httpx.AsyncClient,
) -> None:
    amy = await create(
        client,
        {"emails": ["amy@example.com"], "tags": ["a-tag"], "external_ids": ["shop:77"]},
        allow_duplicate="true",
    )
    bea = await create(
        client,
        {"emails": ["bea@example.com"], "tags": ["b-secret"], "external_ids": ["shop:77", "crm:9"]},
        allow_duplicate="true",
    )
    merged = await client.post(
        f"/v1/contacts/{amy['id']}/merge",
        json={"others": [bea["id"]], "fields": {"emails": bea["id"]}},
    )
    assert merged.status_code == 200, merged.text
    profile = merged.json()["profile"]
    assert profile["emails"] == ["bea@example.com", "amy@example.com"]  # the chosen one first
    assert profile["tags"] == ["a-tag", "b-secret"]
    found = await client.get("/v1/contacts", params={"ref": "email:amy@example.com"})
    assert [c["id"] for c in found.json()["items"]] == [amy["id"]]

    unmerged = await client.post(
        f"/v1/contacts/{amy['id']}/unmerge", json={"contact_id": bea["id"]}
    )
    assert unmerged.status_code == 200, unmerged.text
    back = unmerged.json()
    assert back["profile"]["emails"] == ["amy@example.com"]
    assert back["profile"]["tags"] == ["a-tag"]
    assert back["external_ids"] == ["shop:77"]
    restored = (await client.get(f"/v1/contacts/{bea['id']}")).json()
    assert restored["profile"]["emails"] == ["bea@example.com"]
    assert sorted(restored["external_ids"]) == ["crm:9", "shop:77"]


async def test_erasing_a_survivor_erases_the_contacts_merged_into_it_and_locks_them(
    client: httpx.AsyncClient,
) -> None:
    grace = await create(client, {"first_name": "Grace", "emails": ["grace@example.com"]})
    twin = await create(client, {"first_name": "Amazing", "emails": ["amazing@example.com"]})
    sent = await client.post(
        "/v1/contacts",
        json={"first_name": "Grace", "phones": ["+442079460111"]},
        headers={"Idempotency-Key": "grace-1"},
    )
    assert sent.status_code == 201
    await client.post("/v1/events", json=purchase_json("email:amazing@example.com", day=1))
    await client.post(f"/v1/contacts/{grace['id']}/merge", json={"others": [twin["id"]]})

    refused = await client.post(f"/v1/contacts/{twin['id']}/erase")
    assert refused.status_code == 409 and grace["id"] in refused.json()["detail"]
    erased = await client.post(f"/v1/contacts/{grace['id']}/erase")
    assert erased.status_code == 200, erased.text
    assert sorted(erased.json()["erased_ids"]) == sorted([grace["id"], twin["id"]])
    for contact in (grace, twin):
        assert (await client.get(f"/v1/contacts/{contact['id']}")).status_code == 410
    history = (await client.get(f"/v1/contacts/{twin['id']}/history")).text
    timeline = (await client.get(f"/v1/contacts/{grace['id']}/timeline")).json()
    assert "amazing@example.com" not in history and "Amazing" not in history
    assert [i["event"]["type"] for i in timeline["items"]] == ["crm.purchase.completed.v1"]
    assert "amazing@example.com" not in str(timeline)

    patched = await client.patch(
        f"/v1/contacts/{grace['id']}",
        json={"city": "York"},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert patched.status_code == 410
    again = await client.post("/v1/events", json=purchase_json(grace["id"], day=3))
    assert again.status_code == 422 and "erased" in again.json()["detail"]
    by_email = await client.get("/v1/contacts", params={"ref": "email:grace@example.com"})
    assert by_email.json()["items"] == []
    # The other Grace (found by phone, created with an idempotency key) is untouched.
    assert (await client.get(f"/v1/contacts/{sent.json()['id']}")).status_code == 200


async def test_events_naming_an_erased_contacts_email_phone_or_external_id_are_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    eve = await create(
        client,
        {"emails": ["eve@example.com"], "phones": ["+442079460999"], "external_ids": ["shop:5"]},
    )
    assert (await client.post(f"/v1/contacts/{eve['id']}/erase")).status_code == 200
    for n, subject in enumerate(
        ["email:EVE@example.com", "phone:+44 20 7946 0999", "ext:shop:5", eve["id"]]
    ):
        late = await client.post("/v1/events", json=purchase_json(subject, day=n + 1))
        assert late.status_code == 422, (subject, late.text)
        assert "erased" in late.json()["detail"]
    other = await client.post("/v1/events", json=purchase_json("email:adam@example.com"))
    assert other.status_code == 202
    async with app.state.runtime.db.read() as conn:  # kept as keyed hashes only
        kept = str((await conn.execute(select(erased_identifiers))).all())
    assert "eve@" not in kept and "0999" not in kept and "shop:5" not in kept


async def test_an_erased_contacts_history_reads_emptied_and_its_merges_stay(
    client: httpx.AsyncClient,
) -> None:
    kim = await create(client, {"first_name": "Kim"})
    identified = await client.patch(  # a crm.contact.identified.v1 of its own
        f"/v1/contacts/{kim['id']}",
        json={"external_ids": ["shop:77"]},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert identified.status_code == 200, identified.text
    before = identified.json()["updated_at"]
    twin = await create(client, {"first_name": "Kym"})
    merged = await client.post(f"/v1/contacts/{kim['id']}/merge", json={"others": [twin["id"]]})
    assert merged.status_code == 200, merged.text
    assert (await client.post(f"/v1/contacts/{kim['id']}/erase")).status_code == 200

    unmerged = await client.post(
        f"/v1/contacts/{kim['id']}/unmerge", json={"contact_id": twin["id"]}
    )
    assert unmerged.status_code == 410, unmerged.text
    history = await client.get(f"/v1/contacts/{kim['id']}/history")
    assert history.status_code == 200, history.text
    assert "shop:77" not in history.text and "Kim" not in history.text
    then = await client.get(f"/v1/contacts/{kim['id']}", params={"as_of": before})
    assert then.status_code == 200, then.text
    assert then.json()["external_ids"] == [] and "Kim" not in then.text


async def test_a_consent_change_naming_an_unknown_customer_applies_to_its_new_prospect(
    client: httpx.AsyncClient,
) -> None:
    # The prospect is written before the consent change that needs it; the other prospect
    # with the purchase that named it. A bare subject is a contact id, colons and all.
    grant = {
        "specversion": "1.0",
        "id": "grant-n1",
        "source": "shop/preferences",
        "type": "crm.contact.consent_changed.v1",
        "subject": "shop:n1",
        "time": "2026-06-01T00:00:00Z",
        "data": {
            "contact_id": "shop:n1",
            "channel": "email",
            "status": "granted",
            "source": "preference-centre",
            "changed_at": "2026-06-01T00:00:00Z",
        },
    }
    body = json.dumps([purchase_json("shop:n1"), grant, purchase_json("n2")])
    response = await client.post(
        "/v1/events", content=body, headers={"content-type": BATCH_CONTENT_TYPE}
    )
    assert response.json()["accepted"] == 3, response.text
    first = (await client.get("/v1/contacts/shop:n1")).json()
    assert first["origin"] == "ingestion" and first["consent"]["email"]["status"] == "granted"
    second = (await client.get("/v1/contacts/n2")).json()
    assert second["origin"] == "ingestion" and second["consent"] == {}
    for contact in ("shop:n1", "n2"):
        timeline = (await client.get(f"/v1/contacts/{contact}/timeline")).json()["items"]
        assert "crm.purchase.completed.v1" in [e["event"]["type"] for e in timeline]


async def test_cursors_this_api_did_not_make_are_refused(client: httpx.AsyncClient) -> None:
    from crm_shared.store import cursor

    ada = await create(client, ADA)
    for url, forged in (
        ("/v1/contacts", cursor.encode("2020-01-01T00:00:00", "x")),  # no offset
        (f"/v1/contacts/{ada['id']}/timeline", cursor.encode("2020-01-01T00:00:00", 1)),
        (f"/v1/contacts/{ada['id']}/timeline", cursor.encode("2020-01-01T00:00:00+00:00", 10**30)),
    ):
        refused = await client.get(url, params={"cursor": forged})
        assert refused.status_code == 422, (url, refused.text)


async def test_an_erased_contact_is_gone_from_lists_and_from_reads_after_its_erasure(
    client: httpx.AsyncClient,
) -> None:
    gone = await create(client, {"first_name": "Gone"})
    assert (await client.post(f"/v1/contacts/{gone['id']}/erase")).status_code == 200
    listed = await client.get("/v1/contacts", params={"include_merged": "true"})
    assert listed.status_code == 200, listed.text
    assert gone["id"] not in [c["id"] for c in listed.json()["items"]]
    later = await client.get(f"/v1/contacts/{gone['id']}", params={"as_of": "2999-01-01T00:00:00Z"})
    assert later.status_code == 410, later.text


async def test_one_idempotency_key_sent_at_once_makes_one_contact_and_one_answer(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "at-once-1"}
    body = {"first_name": "Once", "emails": ["once@example.com"]}
    answers = await asyncio.gather(
        *(client.post("/v1/contacts", json=body, headers=headers) for _ in range(5))
    )
    assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
