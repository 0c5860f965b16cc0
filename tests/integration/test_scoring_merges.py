"""Scoring and merges, on both databases: a merged contact's statistics count in the
survivor's scores while the merge stands, and an unmerge gives each its own back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi import FastAPI

from crm_shared.events import CATALOG, CloudEvent, Event, EventData
from scoring.handlers.scoring import Scoring
from scoring.store import scores, stats
from tests.integration.test_scoring_stages import stage_changed
from tests.support.apps import api_client, service_app
from tests.support.events import purchase_json

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def event(type_: str, subject: str, data: dict[str, Any], at: datetime) -> Event[EventData]:
    raw = {
        "specversion": "1.0",
        "id": f"{type_}-{subject}-{at:%Y%m%d}",
        "source": "crm/contacts",
        "type": type_,
        "subject": subject,
        "time": at.isoformat(),
        "data": data,
    }
    return CATALOG.validate(CloudEvent.model_validate(raw))


def bought(customer: str, day: int, amount: str) -> Event[EventData]:
    return CATALOG.validate(
        CloudEvent.model_validate(purchase_json(customer, start=T, day=day, amount=amount))
    )


async def fold(app: FastAPI, *events: Event[EventData]) -> None:
    scoring: Scoring = app.state.scoring
    async with app.state.runtime.db.transaction() as conn:
        await scoring.on_events(conn, list(events))


async def test_an_unmerge_gives_both_contacts_their_own_statistics_back(
    database_url: str,
) -> None:
    app = service_app("scoring", database_url, clock="event-time")
    scoring: Scoring = app.state.scoring
    db = app.state.runtime.db

    async def seen() -> tuple[dict[str, tuple[int, Decimal]], dict[str, Any]]:
        async with db.read() as conn:
            population = {
                s.customer_id: (s.purchases, s.total_spend) for s in await stats.every(conn)
            }
            current = {i: await scores.current(conn, i) for i in ("a", "b")}
        return population, current

    async with api_client(app) as client:
        await fold(app, bought("a", 0, "40.00"), bought("a", 7, "40.00"), bought("b", 3, "100.00"))
        await fold(app, stage_changed("b", "prospect", "new", T + 3 * DAY))
        merge = {"survivor_id": "a", "merged_ids": ["b"]}
        await fold(app, event("crm.contact.merged.v1", "a", merge, T + 10 * DAY))
        population, current = await seen()
        assert population == {"a": (3, Decimal("180"))}
        assert current["b"] is None and current["a"] is not None
        assert (await client.get("/v1/customers/b/score")).status_code == 404
        merged_clv = current["a"]["clv"]
        await scoring.rescore_all(db)  # as after a refit: both contacts' purchases still count
        assert (await seen())[1]["a"]["clv"] == merged_clv

        await fold(app, bought("a", 12, "60.00"))  # the survivor's own, after the merge
        population, _ = await seen()
        assert population == {"a": (4, Decimal("240"))}

        unmerge = {"survivor_id": "a", "restored_id": "b"}
        await fold(app, event("crm.contact.unmerged.v1", "a", unmerge, T + 20 * DAY))
        population, current = await seen()
        assert population == {"a": (3, Decimal("140")), "b": (1, Decimal("100"))}
        assert current["b"] is not None and current["b"]["stage"] == "new"
        assert (await client.get("/v1/customers/b/score")).json()["stage"] == "new"
        assert current["a"]["clv"] != merged_clv
        async with db.read() as conn:
            assert sorted(await scores.all_ids(conn)) == ["a", "b"]


async def test_a_contact_merged_into_one_merged_later_counts_for_the_last_survivor(
    database_url: str,
) -> None:
    app = service_app("scoring", database_url, clock="event-time")
    db = app.state.runtime.db
    async with api_client(app):
        await fold(app, bought("x", 0, "10.00"), bought("y", 1, "20.00"), bought("z", 2, "30.00"))
        for survivor, gone, day in (("y", "z", 5), ("x", "y", 6)):
            merge = {"survivor_id": survivor, "merged_ids": [gone]}
            await fold(app, event("crm.contact.merged.v1", survivor, merge, T + day * DAY))
        async with db.read() as conn:
            population = [
                (s.customer_id, s.purchases, s.total_spend) for s in await stats.every(conn)
            ]
            assert population == [("x", 3, Decimal("60"))]
            assert await scores.all_ids(conn) == ["x"]


async def test_a_merged_contacts_purchase_that_comes_after_the_merge_rescores_the_survivor(
    database_url: str,
) -> None:
    """Contacts keys the purchase by the merged contact and the merge by the survivor: on
    two partitions, the purchase can come after the merge."""
    app = service_app("scoring", database_url, clock="event-time")
    db = app.state.runtime.db
    async with api_client(app) as client:
        await fold(app, bought("m", 0, "40.00"), bought("n", 1, "100.00"))
        merge = {"survivor_id": "m", "merged_ids": ["n"]}
        await fold(app, event("crm.contact.merged.v1", "m", merge, T + 5 * DAY))
        async with db.read() as conn:
            before = await scores.current(conn, "m")
        await fold(app, bought("n", 3, "100.00"))  # made before the merge, comes after it
        assert (await client.get("/v1/customers/n/score")).status_code == 404
        async with db.read() as conn:
            assert await scores.all_ids(conn) == ["m"]
            population = {
                s.customer_id: (s.purchases, s.total_spend) for s in await stats.every(conn)
            }
            after = await scores.current(conn, "m")
        assert population == {"m": (3, Decimal("240"))}
        assert before is not None and after is not None and after["clv"] != before["clv"]
