"""Dry run: how a rule would have behaved over the last days of triggers, without sending.

Every trigger of the window is matched against the rule and the customer's current view;
each message it would have scheduled is decided as the dispatcher would at its due time
(consent as it stands now, caps counting the dry run's own sends, quiet hours)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.store.bulk import insert_rows
from notifications.domain.decide import Safeguards, decide, local_day, week_start, zone
from notifications.domain.rules import Rule, TriggerEvent, fires, holds
from notifications.store import outreach
from notifications.store.tables import trigger_log

# The longest window a dry run looks back over; older triggers are deleted (`forget_triggers`).
KEEP_DAYS = 365


async def log_triggers(conn: AsyncConnection, fired: list[TriggerEvent]) -> None:
    await insert_rows(
        conn,
        trigger_log,
        [
            {
                "customer_id": t.customer_id,
                "event_id": t.event_id,
                "kind": t.kind,
                "time": t.time,
                "value": t.value,
                "left_stage": t.left,
                "nps": t.nps,
            }
            for t in fired
        ],
    )


async def forget_triggers_of(conn: AsyncConnection, event_ids: Iterable[str]) -> None:
    """Drop the triggers of these events (stage changes lifecycle corrected away): a dry run
    counts only what still happened."""
    wanted = sorted(set(event_ids))
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        await conn.execute(delete(trigger_log).where(trigger_log.c.event_id.in_(chunk)))


async def logged(conn: AsyncConnection, event_ids: Iterable[str]) -> set[str]:
    """Which of these events have triggers in the log."""
    wanted = sorted(set(event_ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        query = select(trigger_log.c.event_id).where(trigger_log.c.event_id.in_(chunk))
        found.update((await conn.execute(query)).scalars())
    return found


async def move_triggers(conn: AsyncConnection, moves: dict[str, tuple[str, datetime]]) -> None:
    """Hand the triggers of these events to others (old id -> new id and time): stage
    changes a correction restates at another time, so a dry run sees them when they now
    happened, and a later supersede of the correction takes them out."""
    rows = [{"old": old, "new": new, "at": at} for old, (new, at) in sorted(moves.items())]
    await conn.execute(_MOVE_TRIGGERS, rows)


_MOVE_TRIGGERS = (
    update(trigger_log)
    .where(trigger_log.c.event_id == bindparam("old"))
    .values(event_id=bindparam("new"), time=bindparam("at"))
)


async def forget_triggers(conn: AsyncConnection, now: datetime) -> int:
    """Delete the triggers no dry run can reach any more (older than KEEP_DAYS before
    `now`); return how many. Without it the log grows by every trigger forever."""
    result = await conn.execute(
        delete(trigger_log).where(trigger_log.c.time < now - timedelta(days=KEEP_DAYS))
    )
    return int(result.rowcount)


async def dry_run(
    conn: AsyncConnection, rule: Rule, *, now: datetime, days: int, safeguards: Safeguards
) -> dict[str, Any]:
    query = (
        select(trigger_log)
        .where(trigger_log.c.time >= now - timedelta(days=days))
        .order_by(trigger_log.c.time, trigger_log.c.id)
    )
    triggers = [
        TriggerEvent(r.customer_id, r.event_id, r.kind, r.time, r.value, r.left_stage, r.nps)
        for r in await conn.execute(query)
    ]
    views = await outreach.load_customers(conn, {t.customer_id for t in triggers})
    outcomes: Counter[str] = Counter()
    sent: dict[tuple[str, str], int] = defaultdict(int)
    seen: set[tuple[str, str]] = set()
    for trigger in triggers:
        view = views.get(trigger.customer_id)
        key = (trigger.customer_id, trigger.event_id)
        if (
            view is None
            or key in seen
            or not fires(rule, trigger)
            or not holds(rule.conditions, view)
        ):
            continue
        seen.add(key)
        outcomes[_decided(rule, trigger, view, sent, safeguards)] += 1
    return {
        "rule": rule.id,
        "days": days,
        "triggers": len(triggers),
        "would_schedule": sum(outcomes.values()),
        "outcomes": dict(outcomes),
    }


def _decided(
    rule: Rule,
    trigger: TriggerEvent,
    view: dict[str, Any],
    sent: dict[tuple[str, str], int],
    safeguards: Safeguards,
) -> str:
    due = trigger.time + timedelta(seconds=rule.delay_seconds)
    tz = zone(view.get("time_zone"), safeguards.default_time_zone)
    day = local_day(due, tz)
    decision = decide(
        channel=rule.action.channel,
        transactional=rule.action.transactional,
        consent=view.get("consent") or {},
        tz=tz,
        now=due,
        due_at=due,
        sent_today=sent[(trigger.customer_id, day.isoformat())],
        sent_this_week=sum(
            n
            for (c, d), n in sent.items()
            if c == trigger.customer_id and d >= week_start(day).isoformat()
        ),
        rules=safeguards,
    )
    if decision.verdict == "suppress":
        return f"suppressed: {(decision.reason or '').split(':')[0]}"
    sent[(trigger.customer_id, day.isoformat())] += 1
    return "sent" if decision.verdict == "send" else "sent after quiet hours"
