"""Scoring's statistics and published scores survive a round trip through the database
unchanged, field by field, on both databases."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from crm_shared.app.runtime import Runtime
from scoring.domain.stats import CustomerStats
from scoring.store import scores, stats
from tests.support.apps import api_client, service_app

T = datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)


def distinct_stats(customer_id: str) -> CustomerStats:
    """Every field a value no other field has, so a column read into the wrong field shows."""
    return CustomerStats(
        customer_id=customer_id,
        first_seen=T,
        purchases=7,
        purchase_days=5,
        first_purchase_at=T + timedelta(days=1),
        last_purchase_at=T + timedelta(days=2),
        first_day_spend=Decimal("12.5"),
        total_spend=Decimal("99.25"),
        refunds=2,
        refunded=Decimal("3.75"),
        open_tickets=3,
        latest_nps=9,
        latest_csat=4,
        feedback_at=T + timedelta(days=3),
        engagement_short=1.5,
        engagement_long=6.25,
        engagement_at=T + timedelta(days=4),
        stage="active",
    )


async def test_statistics_and_published_scores_read_back_as_saved(database_url: str) -> None:
    app = service_app("scoring", database_url)
    runtime: Runtime = app.state.runtime
    saved = [distinct_stats("s-1"), distinct_stats("s-2")]
    published = {
        "customer_id": "s-1",
        "tier": "B",
        "risk_band": "medium",
        "churn_risk": 0.375,
        "clv": 123.5,
        "published_at": T,
    }
    async with api_client(app):
        async with runtime.db.transaction() as conn:
            await stats.save(conn, saved, T)
            await scores.mark_published(
                conn, [{**published, "computed_at": T, "model_version": "m"}], T
            )
        async with runtime.db.read() as conn:
            loaded = await stats.load(conn, ["s-1", "s-2", "s-unknown"])
            everyone = await stats.every(conn)
            read = await scores.published(conn, ["s-1", "s-2"])
    assert loaded == {s.customer_id: s for s in saved}
    assert sorted(everyone, key=lambda s: s.customer_id) == saved
    assert [f.name for f in fields(CustomerStats)] == stats.FIELDS
    assert read == {"s-1": published}
