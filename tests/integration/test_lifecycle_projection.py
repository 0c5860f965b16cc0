"""Lifecycle's projection on a real database: batches, late events, merges, the sweeper,
summaries, rebuild and what-if."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from crm_shared.app.runtime import Runtime
from crm_shared.events import CATALOG, CloudEvent, Event, EventData
from crm_shared.messaging.topics import LIFECYCLE
from lifecycle.bootstrap import create_app
from lifecycle.domain.policy import Policy
from lifecycle.handlers.customer_events import Lifecycle
from lifecycle.settings import LifecycleSettings
from tests.support.apps import api_client
from tests.support.events import T0, login_json, purchase, purchase_json

WALL = datetime(2030, 1, 1, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def app(database_url: str) -> FastAPI:
    return create_app(LifecycleSettings(database_url=database_url, clock="event-time"))


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app) as client:
        yield client


def lifecycle_of(app: FastAPI) -> Lifecycle:
    lifecycle: Lifecycle = app.state.lifecycle
    return lifecycle


async def apply(app: FastAPI, events: list[Event[EventData]]) -> None:
    runtime: Runtime = app.state.runtime
    async with runtime.db.transaction() as conn:
        await lifecycle_of(app).on_customer_events(conn, events)


async def published(app: FastAPI) -> list[dict[str, Any]]:
    runtime: Runtime = app.state.runtime
    async with runtime.db.read() as conn:
        pending = await runtime.outbox.pending(conn, limit=1000)
    assert {(m.topic, m.key) for m in pending} <= {
        (LIFECYCLE, json.loads(m.payload)["subject"]) for m in pending
    }
    return [{**json.loads(m.payload)["data"], "id": json.loads(m.payload)["id"]} for m in pending]


def merge(survivor: str, *others: str) -> Event[EventData]:
    return CATALOG.validate(
        CloudEvent.model_validate(
            {
                "specversion": "1.0",
                "id": f"merge-{survivor}",
                "source": "crm/contacts",
                "type": "crm.contact.merged.v1",
                "subject": survivor,
                "time": T0.isoformat(),
                "data": {"survivor_id": survivor, "merged_ids": list(others)},
            }
        )
    )


async def test_batches_fold_into_stages_and_every_transition_is_published(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    login = CATALOG.validate(CloudEvent.model_validate(login_json("c2")))
    await apply(app, [purchase("c1", day=1), login, purchase("c1", day=3)])
    await apply(app, [purchase("c2", day=4), purchase("c2", day=5)])
    c1 = (await client.get("/v1/customers/c1/stage")).json()
    assert (c1["stage"], c1["purchases"]) == ("active", 2)
    transitions = (await client.get("/v1/customers/c2/transitions")).json()
    assert [(t["from_stage"], t["to_stage"], t["reason"]) for t in transitions] == [
        (None, "prospect", "identified"),
        ("prospect", "new", "first_purchase"),
        ("new", "active", "repeat_purchase"),
    ]
    changes = await published(app)
    assert len(changes) == 6 and not any(c["correction"] for c in changes)
    assert changes[-1]["occurred_at"].startswith((T0 + timedelta(days=5)).date().isoformat())


async def test_a_late_purchase_is_published_as_corrections_of_the_history(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await apply(app, [purchase("c1", day=0), purchase("c1", day=200)])
    # day 0: new; silent: dormant at 90, churned at 180; day 200: won back
    before = await published(app)
    await apply(app, [purchase("c1", day=60, event_id="late")])
    history = (await client.get("/v1/customers/c1/transitions")).json()
    assert [t["to_stage"] for t in history] == ["prospect", "new", "active"]
    assert history[-1]["correction"] and history[-1]["caused_by"] == "late"
    everything = (
        await client.get("/v1/customers/c1/transitions", params={"include_superseded": "true"})
    ).json()
    assert sum(t["superseded"] for t in everything) == 3  # dormant, churned, won back
    after = await published(app)
    assert [c["to_stage"] for c in after][-2:] == ["active", "active"]
    # The correction names the entries the history no longer has: the silence; "active"
    # (the win-back) is still entered, earlier and for another cause.
    assert [c["to_stage"] for c in before[-3:]] == ["dormant", "churned", "active"]
    assert after[-1]["supersedes"] == [c["id"] for c in before[-3:-1]]
    assert after[-1]["restates"] == before[-1]["id"]  # the win-back's entry into "active"
    assert all(c["supersedes"] == [] and c["restates"] is None for c in before)


async def test_a_late_first_purchase_moves_the_entry_into_new_without_undoing_it(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """The customer became new either way, only earlier: the corrected history names nothing
    as replaced, so what the first entry set off (a welcome) stands."""
    await apply(app, [purchase("c3", day=50)])
    [first_new] = [
        c for c in await published(app) if c["customer_id"] == "c3" and c["to_stage"] == "new"
    ]
    await apply(app, [purchase("c3", day=10, event_id="earlier")])
    history = (await client.get("/v1/customers/c3/transitions")).json()
    assert [(t["to_stage"], t["caused_by"]) for t in history][-2:] == [
        ("new", "earlier"),
        ("active", history[-1]["caused_by"]),
    ]
    corrected = [c for c in await published(app) if c["customer_id"] == "c3" and c["correction"]]
    assert corrected and all(c["supersedes"] == [] for c in corrected)
    # The entry into "new" restates the first one, which hands it what that set off (so
    # does the entry into "prospect"); the entry into "active" is news, no correction.
    assert [(c["to_stage"], c["restates"]) for c in corrected][1:] == [("new", first_new["id"])]


async def test_a_late_purchase_that_undoes_a_silence_publishes_the_stage_that_holds_again(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await apply(app, [purchase("c1", day=0), purchase("c1", day=10)])
    await apply(app, [purchase("c2", day=120)])  # the clock moves on: c1 dormant since day 100
    assert (await client.get("/v1/customers/c1/stage")).json()["stage"] == "dormant"
    [dormant] = [c for c in await published(app) if c["to_stage"] == "dormant"]
    await apply(app, [purchase("c1", day=95, event_id="late")])
    # With day 95 the mean gap is 47.5 days: dormant is due at day 237.5, not yet. Consumers
    # were told "dormant" last, so the transition that holds again is published again.
    history = (await client.get("/v1/customers/c1/transitions")).json()
    assert [t["to_stage"] for t in history][-2:] == ["new", "active"]
    assert history[-1]["correction"] and not history[-1]["superseded"]
    last = [c for c in await published(app) if c["customer_id"] == "c1"][-1]
    assert (last["from_stage"], last["to_stage"], last["correction"]) == ("new", "active", True)
    assert last["supersedes"] == [dormant["id"]]  # "active" holds still; "dormant" does not
    told = [c for c in await published(app) if c["customer_id"] == "c1"]
    active = [c for c in told if c["to_stage"] == "active" and not c["correction"]][-1]
    assert last["restates"] == active["id"]


def unmerge(survivor: str, restored: str) -> Event[EventData]:
    return CATALOG.validate(
        CloudEvent.model_validate(
            {
                "specversion": "1.0",
                "id": f"unmerge-{restored}",
                "source": "crm/contacts",
                "type": "crm.contact.unmerged.v1",
                "subject": survivor,
                "time": (T0 + timedelta(days=3)).isoformat(),
                "data": {"survivor_id": survivor, "restored_id": restored},
            }
        )
    )


async def test_an_unmerged_contact_gets_its_history_back_without_it_being_news_again(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Consumers were told the restored contact's history before the merge, and nothing
    since: publishing it again as news would welcome the customer a second time."""
    await apply(app, [purchase("s", day=1), purchase("o", day=2)])
    told = (await client.get("/v1/customers/o/transitions")).json()
    await apply(app, [merge("s", "o")])
    before = len(await published(app))
    await apply(app, [unmerge("s", "o")])
    after = (await published(app))[before:]
    # The survivor is new again (its history loses the merged purchase); "o" has news for nobody.
    assert [(c["customer_id"], c["to_stage"], c["correction"]) for c in after] == [
        ("s", "new", True)
    ]
    assert (await client.get("/v1/customers/o/transitions")).json() == told
    assert (await client.get("/v1/customers/o/stage")).json()["stage"] == "new"
    await apply(app, [purchase("o", day=5)])  # and it goes on from there
    [news] = (await published(app))[before + 1 :]
    assert (news["customer_id"], news["to_stage"], news["correction"]) == ("o", "active", False)


async def test_a_merge_makes_the_survivors_stage_reflect_both_histories(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await apply(app, [purchase("s", day=1), purchase("o", day=2)])
    await apply(app, [merge("s", "o")])
    survivor = (await client.get("/v1/customers/s/stage")).json()
    assert (survivor["stage"], survivor["purchases"]) == ("active", 2)
    assert (await client.get("/v1/customers/o/stage")).status_code == 404
    counts = (await client.get("/v1/stages/summary")).json()["counts"]
    assert counts == {"prospect": 0, "new": 0, "active": 1, "dormant": 0, "churned": 0}


async def test_a_merge_takes_the_merged_customers_events_of_the_same_batch(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await apply(app, [purchase("s", day=1), purchase("o", day=2), merge("s", "o")])
    survivor = (await client.get("/v1/customers/s/stage")).json()
    assert (survivor["stage"], survivor["purchases"]) == ("active", 2)
    assert (await client.get("/v1/customers/o/stage")).status_code == 404


@pytest.mark.parametrize("batches", ["one batch", "its own batch"])
async def test_a_merged_contacts_event_that_comes_after_the_merge_goes_to_the_survivor(
    client: httpx.AsyncClient, app: FastAPI, batches: str
) -> None:
    """Contacts keys the purchase by the merged contact and the merge by the survivor: on
    two partitions, the purchase can come after the merge."""
    await apply(app, [purchase("s", day=1), purchase("o", day=2)])
    late = purchase("o", day=3)
    if batches == "one batch":
        await apply(app, [merge("s", "o"), late])
    else:
        await apply(app, [merge("s", "o")])
        await apply(app, [late])
    survivor = (await client.get("/v1/customers/s/stage")).json()
    assert (survivor["stage"], survivor["purchases"]) == ("active", 3)
    assert (await client.get("/v1/customers/o/stage")).status_code == 404
    await apply(app, [unmerge("s", "o")])  # and an unmerge gives it back to its contact
    restored = (await client.get("/v1/customers/o/stage")).json()
    assert (restored["stage"], restored["purchases"]) == ("active", 2)


async def test_the_event_time_clock_moves_silent_customers_as_later_events_arrive(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await apply(app, [purchase("quiet", day=0), purchase("busy", day=1)])
    await apply(app, [purchase("busy", day=100)])  # the clock is now day 100
    assert (await client.get("/v1/customers/quiet/stage")).json()["stage"] == "dormant"
    summary = (
        await client.get(
            "/v1/stages/summary", params={"as_of": (T0 + timedelta(days=50)).isoformat()}
        )
    ).json()
    assert summary["counts"]["new"] == 2 and summary["counts"]["dormant"] == 0
    at_50 = (
        await client.get(
            "/v1/customers/quiet/stage", params={"as_of": (T0 + timedelta(days=50)).isoformat()}
        )
    ).json()
    assert at_50["stage"] == "new"


async def test_the_wall_clock_sweeper_moves_customers_whose_silence_is_due(
    database_url: str,
) -> None:
    app = create_app(LifecycleSettings(database_url=database_url, clock="wall"))
    lifecycle = lifecycle_of(app)
    now = [T0]
    lifecycle.wall = lambda: now[0]
    async with api_client(app) as client:
        await apply(app, [purchase("c1", day=0)])
        now[0] = T0 + timedelta(days=91)
        runtime: Runtime = app.state.runtime
        async with runtime.db.transaction() as conn:
            assert await lifecycle.sweep(conn) == 1
        async with runtime.db.transaction() as conn:
            assert await lifecycle.sweep(conn) == 0  # nothing due until churn
        stage = (await client.get("/v1/customers/c1/stage")).json()
        assert stage["stage"] == "dormant"
        assert stage["next_due"].startswith((T0 + timedelta(days=180)).date().isoformat())


async def test_rebuilding_gives_the_state_incremental_processing_gave(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    for day in range(0, 400, 37):
        await apply(app, [purchase(f"c{day % 5}", day=day), purchase("steady", day=day)])
    await apply(app, [purchase("c1", day=3, event_id="late-one")])
    await apply(app, [merge("c2", "c3")])
    before = await _snapshot(client)
    result = (await client.post("/v1/admin/rebuild")).json()
    assert result["customers"] == 5
    assert await _snapshot(client) == before


async def test_after_a_rebuild_an_unmerge_is_no_news_and_corrections_name_what_was_told(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await apply(app, [purchase("s", day=0), purchase("b", day=1)])  # b's welcome is told
    await apply(app, [merge("s", "b")])
    await apply(app, [purchase("q", day=0)])
    await apply(app, [CATALOG.validate(CloudEvent.model_validate(login_json("x", day=100)))])
    told = {m["id"] for m in await published(app)}
    assert (await client.get("/v1/customers/q/stage")).json()["stage"] == "dormant"
    rebuilt = (await client.post("/v1/admin/rebuild")).json()
    assert rebuilt["transitions"] == 0  # incremental processing was right: nothing to tell
    assert {m["id"] for m in await published(app)} == told
    await apply(app, [unmerge("s", "b"), purchase("q", day=50, event_id="late-q")])
    after = [m for m in await published(app) if m["id"] not in told]
    # b's welcome was told before the merge; only its silence since is news
    assert [(m["to_stage"], m["correction"]) for m in after if m["customer_id"] == "b"] == [
        ("dormant", False)
    ]
    named = {i for m in after for i in [*m["supersedes"], m["restates"]] if i is not None}
    assert named and named <= told


async def _snapshot(client: httpx.AsyncClient) -> dict[str, Any]:
    ids = ["c0", "c1", "c2", "c4", "steady"]
    stages = {i: (await client.get(f"/v1/customers/{i}/stage")).json() for i in ids}
    history = {
        i: [
            (t["from_stage"], t["to_stage"], t["reason"], t["caused_by"], t["occurred_at"])
            for t in (await client.get(f"/v1/customers/{i}/transitions")).json()
        ]
        for i in ids
    }
    counts = (await client.get("/v1/stages/summary")).json()
    return {"stages": stages, "history": history, "counts": counts}


async def test_what_if_reports_who_would_move_without_changing_anything(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await apply(
        app,
        [purchase("a", day=0), purchase("b", day=0), purchase("b", day=50), purchase("c", day=100)],
    )
    stricter = Policy(version="strict", dormant_min_days=30, churn_min_days=60).model_dump()
    report = (await client.post("/v1/admin/what-if", json=stricter)).json()
    # clock at day 100: a is dormant (silent 100 > 90 days), b active, c new
    assert report["policy"] == "strict" and report["changed"] == 1
    assert report["examples"] == [{"customer_id": "a", "current": "dormant", "what_if": "churned"}]
    assert report["counts"]["churned"] == {"current": 0, "what_if": 1, "change": 1}
    assert (await client.get("/v1/customers/a/stage")).json()["stage"] == "dormant"
    flow = (await client.get("/v1/reports/flow")).json()["flow"]
    assert flow["prospect"]["new"] == 3
    cohorts = (await client.get("/v1/reports/cohorts", params={"months": 3})).json()["cohorts"]
    assert cohorts[0]["customers"] == 2 and cohorts[0]["active_share"][0] == 1.0


async def test_times_at_the_end_of_the_calendar_read_as_never_not_as_errors(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    def bought(customer: str, at: datetime) -> Event[EventData]:
        return CATALOG.validate(CloudEvent.model_validate(purchase_json(customer, start=at)))

    late = datetime(9999, 12, 1, tzinfo=UTC)  # its silence would be due after 9999
    early = datetime(1940, 1, 1, tzinfo=UTC)  # a gap that, times 100, passes 9999
    await apply(app, [bought("old", early), bought("old", T0), bought("end", late)])
    assert (await client.get("/v1/customers/end/stage")).json()["stage"] == "new"
    widest = Policy(version="wide", dormant_factor=100, churn_factor=100).model_dump()
    what_if = await client.post("/v1/admin/what-if", json=widest)
    assert what_if.status_code == 200, what_if.text
    cohorts = await client.get("/v1/reports/cohorts", params={"months": 3})
    assert cohorts.status_code == 200, cohorts.text
    beyond = await client.get("/v1/transitions", params={"cursor": "9" * 30})
    assert beyond.status_code == 422 and beyond.json()["field"] == "cursor"


async def test_a_first_purchase_that_arrives_after_the_customer_was_seen_is_news(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    seen = CATALOG.validate(CloudEvent.model_validate(login_json("p1", day=10)))
    await apply(app, [seen])
    await apply(app, [purchase("p1", day=5)])
    history = (await client.get("/v1/customers/p1/transitions")).json()
    assert [(t["to_stage"], t["correction"]) for t in history] == [
        ("prospect", True),  # restated: known since day 5, not day 10
        ("new", False),  # never published before: news (the welcome is sent)
    ]
