"""Consumed events: keep the customer view current, cancel what a new event makes
pointless, and schedule a message for every rule an event fires (once per rule, customer
and triggering event, however often the event is delivered).

A stage change lifecycle corrected away (named in a later change's `supersedes`: a late
event showed the customer never went silent, say) no longer triggers anything: the messages
it scheduled that are not sent yet are suppressed, and its triggers leave the dry-run log.
So are the waiting messages of a contact merged into another: the survivor's history, which
now holds both, decides what is sent; an unmerge gives them back where their trigger
still stands. A stage change a correction restates (the customer entered the stage at
another time: a late purchase put the dormancy off) hands its waiting messages and its
logged triggers to the correction: they keep their delay after the new time, and a later
supersede of the correction reaches them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared import tracecontext
from crm_shared.events import Event, EventData
from crm_shared.events.catalog import (
    ConsentChanged,
    ContactCreated,
    ContactErased,
    ContactMerged,
    ContactUnmerged,
    ContactUpdated,
    FeedbackSubmitted,
    ScoreChanged,
    StageChanged,
    made_before,
)
from crm_shared.events.causes import Causes
from crm_shared.ids import new_id
from crm_shared.store import jsontext
from crm_shared.store.outbox import Outbox
from notifications.domain.rules import Rule, TriggerEvent, fires, holds, idempotency_key
from notifications.handlers.dry_run import (
    forget_triggers_of,
    log_triggers,
    logged,
    move_triggers,
)
from notifications.handlers.messages import suppressed_message
from notifications.store import outreach

PROFILE = ("first_name", "time_zone", "locale", "tags", "attributes")


class Triggers:
    def __init__(self, outbox: Outbox, wall: Callable[[], datetime]) -> None:
        self.outbox = outbox
        self.wall = wall
        self.event_clock: datetime | None = None

    async def on_events(self, conn: AsyncConnection, events: list[Event[EventData]]) -> None:
        now = self.wall()
        views = await outreach.load_customers(conn, {e.subject for e in events})
        stored = {i: dict(v) for i, v in views.items()}  # _observe replaces, never mutates, values
        fired: list[TriggerEvent] = []
        for event in events:
            view = views.setdefault(event.subject, outreach.blank_customer(event.subject, now))
            fired += _observe(view, event)
            self._tick(event.time)
        superseded = _superseded(events)
        restated = _restated(events)
        if restated:
            await move_triggers(conn, {old: (new.id, new.time) for old, new in restated.items()})
        if superseded:  # the corrected-away changes of this batch fire nothing either
            fired = [t for t in fired if t.event_id not in superseded]
            await forget_triggers_of(conn, superseded)
        merged, unmerged = _merges(events)
        fired = [t for t in fired if t.customer_id not in merged]
        # Only the views an event changed (a purchase changes none) are written back.
        changed = [{**v, "updated_at": now} for i, v in views.items() if stored.get(i) != v]
        await outreach.save_customers(conn, changed)
        erased = [i for e in events if isinstance(e.data, ContactErased) for i in e.data.erased_ids]
        await outreach.forget_customers(conn, erased, now)
        await log_triggers(conn, fired)
        await self.schedule(conn, fired, views, now, causes=Causes(events))
        # After scheduling: a later event of the same batch (a purchase the day after the
        # dormancy, from another topic) cancels what the batch scheduled too.
        await self._revise(conn, events, now, superseded, restated, merged)
        await self._restore(conn, unmerged, now)

    def _tick(self, moment: datetime) -> None:
        if self.event_clock is None or moment > self.event_clock:
            self.event_clock = moment

    async def schedule(
        self,
        conn: AsyncConnection,
        fired: list[TriggerEvent],
        views: dict[str, dict[str, Any]],
        now: datetime,
        *,
        causes: Causes | None = None,
    ) -> None:
        """Schedule what the triggers fire; each message remembers its trigger's trace."""
        if not fired:
            return
        rules = await outreach.active_rules(conn)
        causes = causes or Causes()
        traces = {t.event_id: _trace_of(t, causes) for t in fired}
        rows = [
            _delivery(rule, trigger, views[trigger.customer_id], now, traces[trigger.event_id])
            for trigger in fired
            for rule in rules
            if views[trigger.customer_id].get("erased_at") is None
            and fires(rule, trigger)
            and holds(rule.conditions, views[trigger.customer_id])
        ]
        await outreach.add_deliveries(conn, rows)

    async def _revise(
        self,
        conn: AsyncConnection,
        events: list[Event[EventData]],
        now: datetime,
        superseded: dict[str, str],
        restated: dict[str, Restating],
        merged: dict[str, str],
    ) -> None:
        """Cancel a scheduled message whose rule names this event type (for instance the
        win-back mail when the customer buys before it goes out), by the first such event of
        the batch, and one whose trigger was corrected away or whose contact was merged into
        another; move one whose trigger a correction restates to the correction's time.
        Each in one statement."""
        by_customer: dict[str, list[Event[EventData]]] = defaultdict(list)
        for event in events:
            by_customer[event.subject].append(event)
        cancelled: list[tuple[dict[str, Any], str]] = []
        moved: list[dict[str, Any]] = []
        found = await outreach.cancellable(conn, by_customer.keys() | merged.keys())
        # A message with a channel now cannot be called back: should this attempt fail, the
        # dispatcher suppresses it instead of trying again. (It is not moved: it is due.)
        sending = [d for d in found if d["status"] == "sending"]
        for delivery in [d for d in found if d["status"] != "sending"]:
            survivor = merged.get(delivery["customer_id"])
            if survivor is not None:
                cancelled.append((delivery, merged_reason(survivor)))
                continue
            trigger_id, trigger_time = delivery["trigger_event_id"], delivery["trigger_time"]
            move = restated.get(trigger_id)
            context: dict[str, Any] | None = None
            if move is not None:
                trigger_id, trigger_time = move.id, move.time
                context = jsontext.loads(delivery["context_json"])
                left = context["trigger"].get("left")
                # (A message made before triggers kept the stage left follows the move.)
                if delivery["trigger_kind"] == "stage_left" and left not in (None, move.from_stage):
                    reason = (
                        f"its trigger was corrected away (lifecycle's {move.id} left "
                        f"{move.from_stage}, not {left})"
                    )
                    cancelled.append((delivery, reason))
                    continue
            correction = superseded.get(delivery["trigger_event_id"]) or superseded.get(trigger_id)
            if correction is not None:
                reason = f"its trigger was corrected away (lifecycle's {correction})"
                cancelled.append((delivery, reason))
                continue
            cancel = next(
                (
                    e
                    for e in by_customer[delivery["customer_id"]]
                    if e.type in delivery["cancel_on"]
                    and e.time >= trigger_time
                    and e.id != delivery["trigger_event_id"]
                ),
                None,
            )
            if cancel is not None:
                cancelled.append((delivery, f"cancelled by {cancel.type} ({cancel.id})"))
            elif move is not None and context is not None:
                context["trigger"].update(event_id=move.id, time=move.time.isoformat())
                moved.append(
                    {
                        "delivery_id": delivery["id"],
                        "trigger": move.id,
                        "trigger_time": move.time,
                        "due": delivery["due_at"] + (move.time - delivery["trigger_time"]),
                        "context": context,
                        "at": now,
                    }
                )
        asked = [
            (d["id"], why)
            for d in sending
            if (why := _cancelled_why(d, by_customer, superseded, merged)) is not None
        ]
        await outreach.ask_to_cancel(conn, asked, now)
        await outreach.suppress(conn, [(d["id"], reason) for d, reason in cancelled], now)
        await outreach.move(conn, moved)
        messages = [
            suppressed_message({**d, "context": jsontext.loads(d["context_json"])}, reason)
            for d, reason in cancelled
        ]
        await self.outbox.add(conn, messages, now)

    async def _restore(
        self, conn: AsyncConnection, unmerged: dict[str, str], now: datetime
    ) -> None:
        """Give contacts an unmerge restored the messages their merge suppressed, those whose
        trigger still stands: it is in the dry-run log, which loses the triggers lifecycle
        corrected away since (its history is the contact's own again)."""
        if not unmerged:
            return
        reasons = {i: merged_reason(survivor) for i, survivor in unmerged.items()}
        found = [
            d
            for d in await outreach.deliveries_of(conn, reasons.keys())
            if d["status"] == "suppressed" and d["reason"] == reasons[d["customer_id"]]
        ]
        standing = await logged(conn, {d["trigger_event_id"] for d in found})
        await outreach.reschedule(
            conn, [d["id"] for d in found if d["trigger_event_id"] in standing], now
        )


def _cancelled_why(
    delivery: dict[str, Any],
    by_customer: dict[str, list[Event[EventData]]],
    superseded: dict[str, str],
    merged: dict[str, str],
) -> str | None:
    """Why this batch cancels a message that is being sent, if it does."""
    survivor = merged.get(delivery["customer_id"])
    if survivor is not None:
        return merged_reason(survivor)
    correction = superseded.get(delivery["trigger_event_id"])
    if correction is not None:
        return f"its trigger was corrected away (lifecycle's {correction})"
    for event in by_customer.get(delivery["customer_id"], []):
        if (
            event.type in delivery["cancel_on"]
            and event.time >= delivery["trigger_time"]
            and event.id != delivery["trigger_event_id"]
        ):
            return f"cancelled by {event.type} ({event.id})"
    return None


def merged_reason(survivor: str) -> str:
    """Why a merged contact's waiting message was suppressed (an unmerge looks for it)."""
    return f"the contact was merged into {survivor}"


def _merges(events: list[Event[EventData]]) -> tuple[dict[str, str], dict[str, str]]:
    """Contacts this batch merged into another and contacts it restored by an unmerge, each
    -> the survivor; of a merge and an unmerge of one contact, the later counts."""
    merged: dict[str, str] = {}
    unmerged: dict[str, str] = {}
    for event in events:
        data = event.data
        if isinstance(data, ContactMerged):
            for gone in data.merged_ids:
                merged[gone] = data.survivor_id
                unmerged.pop(gone, None)
        elif isinstance(data, ContactUnmerged):
            unmerged[data.restored_id] = data.survivor_id
            merged.pop(data.restored_id, None)
    return merged, unmerged


def _superseded(events: list[Event[EventData]]) -> dict[str, str]:
    """Stage changes corrected away -> the id of the change that says so."""
    return {
        gone: event.id
        for event in events
        if isinstance(event.data, StageChanged)
        for gone in event.data.supersedes
    }


@dataclass(frozen=True)
class Restating:
    """The correction that now stands for a published stage change."""

    id: str
    time: datetime
    from_stage: str | None


def _restated(events: list[Event[EventData]]) -> dict[str, Restating]:
    """Stage changes a correction of this batch restates -> the correction standing for them
    (a chain within the batch, A restated by B restated by C, ends at C for both)."""
    restated: dict[str, Restating] = {}
    chains: dict[str, list[str]] = {}  # a correction -> the ids it stands for
    for event in events:
        data = event.data
        if isinstance(data, StageChanged) and data.restates is not None:
            chain = [*chains.pop(data.restates, []), data.restates]
            for old in chain:
                restated[old] = Restating(event.id, event.time, data.from_stage)
            chains[event.id] = chain
    return restated


def _observe(view: dict[str, Any], event: Event[EventData]) -> list[TriggerEvent]:
    """Update the view from one event; return the triggers it is."""
    data, who, at = event.data, event.subject, event.time
    if isinstance(data, ContactCreated | ContactUpdated):
        _profile(view, data.profile if isinstance(data, ContactCreated) else data.changes)
        return []
    if isinstance(data, ConsentChanged):
        recorded = (view["consent"].get(data.channel) or {}).get("changed_at")
        if made_before(data.changed_at, recorded):
            return []  # made before the change on record (an unsubscribe click), arrived late
        view["consent"] = {
            **view["consent"],
            data.channel: {
                "status": data.status,
                "source": data.source,
                "changed_at": data.changed_at.isoformat(),
            },
        }
        return []
    if isinstance(data, ContactMerged):
        return []  # the survivor's own events carry on; the merged contacts stop here
    if isinstance(data, ContactErased):
        view["erased_at"] = at  # nothing more is scheduled; the rest is dropped after saving
        return []
    if isinstance(data, StageChanged):
        view["stage"] = data.to_stage
        if data.correction:
            return []  # a corrected past is not news to the customer
        left = [TriggerEvent(who, event.id, "stage_left", at, data.to_stage, data.from_stage)]
        return [TriggerEvent(who, event.id, "stage_entered", at, data.to_stage), *left]
    if isinstance(data, ScoreChanged):
        return _score(view, event.id, who, at, data)
    nps = data.nps if isinstance(data, FeedbackSubmitted) else None
    return [TriggerEvent(who, event.id, "event", at, event.type, nps=nps)]


def _profile(view: dict[str, Any], fields: dict[str, Any]) -> None:
    for name in PROFILE:
        if name in fields:
            view[name] = (
                fields[name]
                if fields[name] is not None
                else ([] if name == "tags" else {} if name == "attributes" else None)
            )
    if "emails" in fields:
        view["email"] = (fields["emails"] or [None])[0]
    if "phones" in fields:
        view["phone"] = (fields["phones"] or [None])[0]
    if "birthday" in fields:
        view["birthday"] = fields["birthday"]


def _score(
    view: dict[str, Any], event_id: str, who: str, at: datetime, data: ScoreChanged
) -> list[TriggerEvent]:
    fired = []
    if data.risk_band != view["risk_band"]:
        fired.append(TriggerEvent(who, event_id, "risk_band", at, data.risk_band))
    if data.tier is not None and data.tier != view["tier"]:
        fired.append(TriggerEvent(who, event_id, "tier", at, data.tier))
    view.update(tier=data.tier, risk_band=data.risk_band, churn_risk=data.churn_risk, clv=data.clv)
    return fired


def _trace_of(trigger: TriggerEvent, causes: Causes) -> str | None:
    trace = causes.trace(trigger.customer_id, trigger.event_id) or tracecontext.current()
    return trace.traceparent if trace is not None else None


def _delivery(
    rule: Rule, trigger: TriggerEvent, view: dict[str, Any], now: datetime, trace: str | None
) -> dict[str, Any]:
    context = {
        "stage": view["stage"],
        "tier": view["tier"],
        "risk_band": view["risk_band"],
        "churn_risk": view["churn_risk"],
        "clv": view["clv"],
        "consent": view["consent"],
        "trigger": {
            "kind": trigger.kind,
            "value": trigger.value,
            "event_id": trigger.event_id,
            "time": trigger.time.isoformat(),
            **({"left": trigger.left} if trigger.left else {}),
            **({"traceparent": trace} if trace else {}),
        },
    }
    return {
        "id": new_id(),
        "idempotency_key": idempotency_key(rule, trigger),
        "rule_id": rule.id,
        "rule_version": rule.version,
        "customer_id": trigger.customer_id,
        "channel": rule.action.channel,
        "template": rule.action.template,
        "transactional": rule.action.transactional,
        "status": "scheduled",
        "reason": None,
        "error": None,
        "due_at": trigger.time + timedelta(seconds=rule.delay_seconds),
        "trigger_event_id": trigger.event_id,
        "trigger_kind": trigger.kind,
        "trigger_time": trigger.time,
        "cancel_on": rule.cancel_on,
        "context": context,
        "attempts": 0,
        "local_date": None,
        "created_at": now,
        "updated_at": now,
        "sent_at": None,
    }
