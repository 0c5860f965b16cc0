"""Scoring and lifecycle's stage changes, on both databases: a stage an event caused only
changes the stage the score shows; a stage entered by going silent rescores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from crm_shared.events import CATALOG, CloudEvent, Event, EventData
from crm_shared.store.tables import CoreTables
from scoring.handlers.scoring import Scoring
from scoring.store import scores
from tests.support.apps import api_client, service_app
from tests.support.events import purchase_json

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def event(raw: dict[str, Any]) -> Event[EventData]:
    return CATALOG.validate(CloudEvent.model_validate(raw))


def stage_changed(customer: str, before: str, after: str, at: datetime) -> Event[EventData]:
    return event(
        {
            "specversion": "1.0",
            "id": f"{customer}-{after}-{at:%Y%m%d}",
            "source": "crm/lifecycle",
            "type": "crm.lifecycle.stage_changed.v1",
            "subject": customer,
            "time": at.isoformat(),
            "data": {
                "customer_id": customer,
                "from_stage": before,
                "to_stage": after,
                "reason": "test",
                "occurred_at": at.isoformat(),
                "policy_version": "default-1",
            },
        }
    )


async def test_only_a_silent_stage_rescores_an_active_one_updates_the_stage(
    database_url: str,
) -> None:
    app = service_app("scoring", database_url, clock="event-time")
    scoring: Scoring = app.state.scoring
    db = app.state.runtime.db
    outbox = app.state.runtime.tables.outbox
    assert isinstance(app.state.runtime.tables, CoreTables)

    async def apply(*events: Event[EventData]) -> tuple[dict[str, Any], int]:
        async with db.transaction() as conn:
            await scoring.on_events(conn, list(events))
        async with db.read() as conn:
            current = await scores.current(conn, "s1")
            published = (await conn.execute(select(func.count()).select_from(outbox))).scalar()
        assert current is not None
        return current, int(published or 0)

    async with api_client(app):
        bought = [
            event(purchase_json("s1", start=T, day=day, amount="40.00")) for day in (0, 7, 14)
        ]
        first, published = await apply(*bought)
        assert (first["stage"], first["computed_at"], published) == (None, T + DAY * 14, 1)

        # The purchases made the customer active: the stage is recorded, nothing rescored.
        now_new, published = await apply(stage_changed("s1", "new", "active", T + DAY * 15))
        assert now_new["stage"] == "active"
        assert {k: v for k, v in now_new.items() if k != "stage"} == {
            k: v for k, v in first.items() if k != "stage"
        }
        assert published == 1

        # Silence made the customer dormant a year on: rescored at that time, and the
        # higher churn risk is published.
        silent = T + DAY * 365
        dormant, published = await apply(stage_changed("s1", "active", "dormant", silent))
        assert (dormant["stage"], dormant["computed_at"]) == ("dormant", silent)
        assert dormant["churn_risk"] > first["churn_risk"] and published == 2


async def test_the_event_time_clock_outlives_a_restart(database_url: str) -> None:
    before = service_app("scoring", database_url, clock="event-time")
    async with api_client(before):
        async with before.state.runtime.db.transaction() as conn:
            await before.state.scoring.on_events(
                conn, [event(purchase_json("r1", start=T, day=day)) for day in (0, 30)]
            )
    after = service_app("scoring", database_url, clock="event-time")  # the service restarted
    scoring: Scoring = after.state.scoring
    async with api_client(after):
        await scoring.rescore_all(after.state.runtime.db)
        async with after.state.runtime.db.read() as conn:
            current = await scores.current(conn, "r1")
    assert current is not None and current["computed_at"] == T + DAY * 30  # not today
