"""Folding consumed customer events into stages, in the batch's transaction.

Each batch: keep the events' facts, apply merges, move the clock, then replay every
customer the batch touched (and, with the event-time clock, every customer whose silence
became due) and publish the difference between the new history and the published one.
A history that only grew publishes its new transitions; one that changed in the past (a
late event, a merge) marks the old ones superseded and publishes the new ones as
corrections; one that only lost its tail publishes its last transition again, as a
correction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.events import Event, EventData, new_event
from crm_shared.events.catalog import ContactMerged, ContactUnmerged, StageChanged
from crm_shared.events.causes import Causes
from crm_shared.messaging.topics import LIFECYCLE
from crm_shared.store.outbox import Outbox, OutgoingMessage
from crm_shared.tracecontext import TraceContext
from lifecycle.domain.policy import Policy
from lifecycle.domain.stages import CustomerState, Transition, replay
from lifecycle.store import stages

SOURCE = "crm/lifecycle"
STAGE_CHANGED = "crm.lifecycle.stage_changed.v1"
SWEEP_LIMIT = 5000
ClockMode = Literal["wall", "event-time"]


@dataclass(frozen=True)
class Recomputed:
    published: int
    corrections: int


class Lifecycle:
    def __init__(
        self, outbox: Outbox, policy: Policy, *, clock: ClockMode, wall: Callable[[], datetime]
    ) -> None:
        self.outbox = outbox
        self.policy = policy
        self.clock = clock
        self.wall = wall

    async def on_customer_events(
        self, conn: AsyncConnection, events: list[Event[EventData]]
    ) -> None:
        """Consumer handler for `crm.customer-events`."""
        touched = await self._keep(conn, events)
        now = await self._now(conn, max((e.time for e in events), default=None))
        if self.clock == "event-time":
            touched |= set(await stages.due(conn, now, limit=SWEEP_LIMIT))
        await self.recompute(conn, touched, now, causes=Causes(events))

    async def sweep(self, conn: AsyncConnection, *, limit: int = SWEEP_LIMIT) -> int:
        """Move the customers whose silence is due by now; return how many were looked at."""
        now = await self._now(conn, None)
        due = await stages.due(conn, now, limit=limit)
        await self.recompute(conn, due, now)
        return len(due)

    async def recompute(
        self,
        conn: AsyncConnection,
        ids: Iterable[str],
        now: datetime,
        *,
        publish: bool = True,
        causes: Causes | None = None,
    ) -> Recomputed:
        """Replay these customers; publish their new transitions, each in the trace of the
        consumed event that caused it (`causes`), or else of the work in hand."""
        ids = set(ids)
        causes = causes or Causes()
        if not ids:
            return Recomputed(0, 0)
        facts = await stages.facts_of(conn, ids, self.policy)
        published = await stages.active_transitions(conn, ids)
        states: list[CustomerState] = []
        gone: list[str] = []
        rows: list[dict[str, Any]] = []
        superseded: list[int] = []
        messages: list[OutgoingMessage] = []
        recorded = self.wall()
        for customer_id in sorted(ids):
            state, history = replay(facts.get(customer_id, []), self.policy, now)
            old = published.get(customer_id, [])
            keep = _restating_the_last(old, history, _common_prefix(old, history))
            superseded += [r["id"] for r in old[keep:]]
            restated = Counter(r["to_stage"] for r in old[keep:])
            for seq, t in enumerate(history[keep:], start=keep):
                # A correction restates a stage entry published before (at another time or
                # for another cause); an entry never published is news, correction or not.
                correction = restated[t.to_stage] > 0
                restated[t.to_stage] -= 1
                row = stages.transition_row(
                    t, seq=seq, correction=correction, policy=self.policy, now=recorded
                )
                rows.append(row)
                if publish:  # a rebuild publishes nothing: building messages is wasted work
                    trace = causes.trace(customer_id, t.caused_by)
                    messages.append(self._message(t, row, trace))
            if state is None:
                gone.append(customer_id)
            else:
                states.append(state)
        await stages.supersede(conn, superseded)
        await stages.insert_transitions(conn, rows)
        await stages.save_states(conn, states, self.policy, recorded)
        await stages.delete_states(conn, gone)
        if publish:
            await self.outbox.add(conn, messages, recorded)
        return Recomputed(len(rows), sum(1 for r in rows if r["correction"]))

    async def _keep(self, conn: AsyncConnection, events: list[Event[EventData]]) -> set[str]:
        """Store the facts; apply merges; return the customers whose history changed."""
        touched: set[str] = set()
        rows = []
        for event in events:
            if isinstance(event.data, ContactMerged):
                await stages.move_facts(conn, event.data.merged_ids, event.data.survivor_id)
                touched |= {event.data.survivor_id, *event.data.merged_ids}
                continue
            if isinstance(event.data, ContactUnmerged):
                await stages.restore_facts(conn, event.data.restored_id)
                touched |= {event.data.survivor_id, event.data.restored_id}
                continue
            rows.append(
                {
                    "event_id": event.id,
                    "customer_id": event.subject,
                    "origin_id": event.subject,
                    "type": event.type,
                    "time": event.time,
                }
            )
            touched.add(event.subject)
        await stages.add_facts(conn, rows)
        return touched

    async def _now(self, conn: AsyncConnection, seen: datetime | None) -> datetime:
        if self.clock == "wall":
            return self.wall()
        if seen is not None:
            return await stages.advance_event_clock(conn, seen)
        return await stages.event_clock(conn) or datetime.min.replace(tzinfo=self.wall().tzinfo)

    def _message(
        self, t: Transition, row: dict[str, Any], trace: TraceContext | None
    ) -> OutgoingMessage:
        data = StageChanged(
            customer_id=t.customer_id,
            from_stage=t.from_stage,
            to_stage=t.to_stage,
            reason=t.reason,
            caused_by=t.caused_by,
            occurred_at=t.occurred_at,
            policy_version=self.policy.version,
            correction=row["correction"],
        )
        event = new_event(
            type=STAGE_CHANGED,
            source=SOURCE,
            subject=t.customer_id,
            time=t.occurred_at,
            id=row["event_id"],
            data=data.model_dump(mode="json"),
            trace=trace,
        )
        return OutgoingMessage(topic=LIFECYCLE, key=t.customer_id, event=event)


def _restating_the_last(old: list[dict[str, Any]], new: list[Transition], keep: int) -> int:
    """How many published transitions to keep when a late event only took the tail off the
    history (a silence it undid): one fewer, so the last one is published again as a
    correction. Consumers keep the last stage they were told; with nothing published they
    would keep the stage the customer is no longer in."""
    if 0 < keep == len(new) < len(old):
        return keep - 1
    return keep


def _common_prefix(old: list[dict[str, Any]], new: list[Transition]) -> int:
    """How many transitions at the start of the published history the replay confirms."""
    count = 0
    for row, t in zip(old, new, strict=False):
        if (
            row["from_stage"],
            row["to_stage"],
            row["reason"],
            row["caused_by"],
            row["occurred_at"],
        ) != t.key:
            break
        count += 1
    return count


__all__ = ["CustomerState", "Lifecycle", "Recomputed"]
