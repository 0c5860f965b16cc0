"""Scoring consumed events: statistics in O(1) per event, scores per touched customer, and
only the material changes published, all in the batch's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.events import Event, EventData, new_event
from crm_shared.events.catalog import ContactMerged, ContactUnmerged, ScoreChanged, StageChanged
from crm_shared.events.causes import Causes
from crm_shared.messaging.topics import SCORES
from crm_shared.store.db import Database
from crm_shared.store.outbox import Outbox, OutgoingMessage
from crm_shared.tracecontext import TraceContext
from scoring.domain.bgnbd import FitError
from scoring.domain.clv import Horizon
from scoring.domain.model import ScoringModel, fit, prior, score_many
from scoring.domain.stats import CustomerStats, apply
from scoring.settings import ScoringSettings
from scoring.store import scores, stats

SOURCE = "crm/scoring"
CHUNK = 1000


def material(
    previous: dict[str, Any] | None, now: dict[str, Any], settings: ScoringSettings
) -> list[str]:
    """Why a new score is worth publishing (empty when it is not)."""
    if previous is None:
        return ["first score"]
    reasons = []
    if previous["tier"] != now["tier"]:
        reasons.append(f"tier {previous['tier']} -> {now['tier']}")
    if previous["risk_band"] != now["risk_band"]:
        reasons.append(f"risk band {previous['risk_band']} -> {now['risk_band']}")
    if abs(now["churn_risk"] - previous["churn_risk"]) >= settings.risk_step:
        reasons.append(f"churn risk {previous['churn_risk']:.2f} -> {now['churn_risk']:.2f}")
    base = max(abs(previous["clv"]), 1e-9)
    if abs(now["clv"] - previous["clv"]) / base >= settings.value_step:
        reasons.append(f"lifetime value {previous['clv']:.2f} -> {now['clv']:.2f}")
    return reasons


# Stages a customer enters by going silent: time has passed, which moves the scores too.
SILENT_STAGES = frozenset({"dormant", "churned"})


def rescores(event: Event[EventData]) -> bool:
    """Whether the event calls for a new score. A stage change into prospect, new or active
    (a win-back included) was caused by an event scoring consumes and scores itself (the
    new contact, the purchase), so it only changes the stage the score shows."""
    return not isinstance(event.data, StageChanged) or event.data.to_stage in SILENT_STAGES


class Scoring:
    def __init__(
        self, outbox: Outbox, settings: ScoringSettings, wall: Callable[[], datetime]
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.wall = wall
        self.event_clock: datetime | None = None

    def now(self) -> datetime:
        if self.settings.clock == "event-time" and self.event_clock is not None:
            return self.event_clock
        return self.wall()

    async def sync_clock(self, db: Database) -> None:
        """Take the event-time clock as stored (after a restart, or moved by a replica)."""
        if self.settings.clock != "event-time":
            return
        async with db.read() as conn:
            stored = await scores.event_clock(conn)
        if stored is not None and (self.event_clock is None or stored > self.event_clock):
            self.event_clock = stored

    async def on_events(self, conn: AsyncConnection, events: list[Event[EventData]]) -> None:
        """Consumer handler for `crm.customer-events` and `crm.lifecycle`. Customers are
        rescored, except where the only news is a stage an event caused (see `rescores`):
        then their current score only takes the new stage."""
        known = await self._fold(conn, events)
        latest = max((e.time for e in events), default=None)
        if latest is not None and self.settings.clock == "event-time":
            self.event_clock = await scores.advance_event_clock(conn, latest)
        subjects = {e.subject for e in events}
        # Contacts an unmerge restored are no event's subject: they are scored afresh too.
        due = (
            {e.subject for e in events if rescores(e)} | (known.keys() - subjects)
        ) & known.keys()
        await self.rescore(conn, due, causes=Causes(events), known=known)
        await scores.set_stages(conn, {i: known[i].stage for i in known.keys() - due})

    async def rescore(
        self,
        conn: AsyncConnection,
        ids: Iterable[str],
        *,
        publish: bool = True,
        causes: Causes | None = None,
        known: dict[str, CustomerStats] | None = None,
    ) -> int:
        """Score these customers with the active model; publish material changes, each in
        the trace of the customer's consumed event (`causes`), or else of the work in hand.
        `known`: their statistics, when the caller has them already (else they are read)."""
        wanted = list(set(ids))
        if not wanted:
            return 0
        now = self.now()
        model = await scores.active_model(conn) or prior(now)
        current = (
            {i: known[i] for i in wanted if i in known}
            if known is not None
            else await stats.combined(conn, await stats.load(conn, wanted))
        )
        rows = score_many(list(current.values()), model, now, self.settings.risk_weights)
        await scores.save(conn, rows)
        return await self._publish(conn, rows, now, causes or Causes()) if publish else 0

    async def _publish(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], now: datetime, causes: Causes
    ) -> int:
        before = await scores.published(conn, [r["customer_id"] for r in rows])
        changed, messages = [], []
        for row in rows:
            previous = before.get(row["customer_id"])
            reasons = material(previous, row, self.settings)
            if reasons:
                changed.append(row)
                trace = causes.trace(row["customer_id"])
                messages.append(_message(row, reasons, previous, trace))
        await scores.mark_published(conn, changed, now)
        await self.outbox.add(conn, messages, now)
        return len(changed)

    async def _fold(
        self, conn: AsyncConnection, events: list[Event[EventData]]
    ) -> dict[str, CustomerStats]:
        """Fold the events into the statistics of their customers; return, as saved, the
        statistics of the customers they touched or an unmerge restored, each with those of
        the contacts merged into it (merged-away ones excluded).

        A merged contact keeps its own statistics, marked with its survivor: the survivor's
        scores count both while the merge stands, and an unmerge gives the restored contact
        its own back (what happened before the merge; later events went to the survivor)."""
        subjects = {e.subject for e in events}
        merged_into: dict[str, str | None] = {}  # this batch's merges (-> None: an unmerge)
        for event in events:
            if isinstance(event.data, ContactMerged):
                merged_into.update(dict.fromkeys(event.data.merged_ids, event.data.survivor_id))
            elif isinstance(event.data, ContactUnmerged):
                merged_into[event.data.restored_id] = None
        # Contacts merged before this batch whose events come now (published before the merge,
        # on another partition): their own statistics take the event, their survivor is
        # rescored, and they get no score of their own.
        known, marks = await stats.load_marked(conn, subjects | merged_into.keys())
        marked = {i: survivor for i, survivor in marks.items() if i not in merged_into}
        survivors = set(marked.values())
        known.update(await stats.load(conn, survivors - known.keys()))
        for event in events:
            if isinstance(event.data, ContactMerged | ContactUnmerged):
                continue
            data = event.data.model_dump(mode="json")
            known[event.subject] = apply(
                known.get(event.subject), event.subject, event.type, event.time, data
            )
        await stats.save(conn, list(known.values()), self.wall())
        gone = [i for i, survivor in merged_into.items() if survivor is not None]
        if merged_into:
            await stats.set_merged(conn, merged_into)
            await scores.remove(conn, gone)
        live = (subjects | merged_into.keys() | survivors) - set(gone) - marked.keys()
        return await stats.combined(conn, {i: known[i] for i in live if i in known})

    async def refit(self, db: Database) -> ScoringModel:
        """Fit a new model on every customer, make it active, rescore everyone with it."""
        await self.sync_clock(db)
        async with db.read() as conn:
            population = await stats.every(conn)
        now = self.now()
        s = self.settings
        if sum(1 for p in population if p.first_purchase_at) < s.min_buyers_for_fit:
            raise ValueError(
                f"a refit needs at least {s.min_buyers_for_fit} customers who "
                "bought (CRM_MIN_BUYERS_FOR_FIT)"
            )
        try:
            model = fit(
                population,
                now,
                version=f"m-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
                tiers=s.tier_percentiles,
                lowest_tier=s.lowest_tier,
                horizon=Horizon(s.horizon_months, 52 / 12, s.monthly_discount_rate),
            )
        except FitError as exc:  # the active model stays; the data may not support a fit yet
            raise ValueError(str(exc)) from exc
        async with db.transaction() as conn:
            await scores.store_model(conn, model)
        await self.rescore_all(db)
        return model

    async def rescore_all(self, db: Database) -> int:
        await self.sync_clock(db)
        async with db.read() as conn:
            ids = await scores.all_ids(conn)
        published = 0
        for start in range(0, len(ids), CHUNK):
            async with db.transaction() as conn:
                published += await self.rescore(conn, ids[start : start + CHUNK])
        return published


def _message(
    row: dict[str, Any],
    reasons: list[str],
    previous: dict[str, Any] | None,
    trace: TraceContext | None,
) -> OutgoingMessage:
    data = ScoreChanged(
        customer_id=row["customer_id"],
        model_version=row["model_version"],
        tier=row["tier"],
        risk_band=row["risk_band"],
        churn_risk=row["churn_risk"],
        clv=row["clv"],
        p_alive=min(1.0, max(0.0, row["p_alive"])),
        rfm_segment=row["rfm_segment"],
        reasons=reasons,
        previous={k: v for k, v in previous.items() if k != "published_at"} if previous else None,
    )
    event = new_event(
        type="crm.score.changed.v1",
        source=SOURCE,
        subject=row["customer_id"],
        time=row["computed_at"] or datetime.now(UTC),
        data=data.model_dump(mode="json"),
        trace=trace,
    )
    return OutgoingMessage(topic=SCORES, key=row["customer_id"], event=event)
