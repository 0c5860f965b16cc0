"""Folding consumed customer events into stages, in the batch's transaction.

Each batch: keep the events' facts, apply merges, move the clock, then bring every customer
the batch touched (and, with the event-time clock, every customer whose silence became due)
up to date and publish the difference between the new history and the published one.

A customer whose new facts all come after everything folded so far (and after their last
transition) continues from the stored state: only the new facts are folded, and what they
add is published. Any other (a late or repeated event, a merge, another policy, an erased
customer, a fact after the clock, rows from before the stored fold position) replays the
whole history: a history that only grew publishes its new transitions; one that changed in
the past marks the old ones superseded and publishes the new ones as corrections; one that
only lost its tail publishes its last transition again, as a correction. Both give the same
history as a replay (`tests/integration/test_lifecycle_fold_paths.py`).
"""

from __future__ import annotations

from collections import defaultdict, deque
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
from lifecycle.domain.stages import CustomerState, Fact, Transition, fold, kind_of, order, replay
from lifecycle.store import stages
from lifecycle.store.stages import Stored

SOURCE = "crm/lifecycle"
STAGE_CHANGED = "crm.lifecycle.stage_changed.v1"
SWEEP_LIMIT = 5000
ClockMode = Literal["wall", "event-time"]


@dataclass(frozen=True)
class Recomputed:
    published: int
    corrections: int
    continued: int = 0  # customers whose fold continued from the stored state
    replayed: int = 0  # customers whose whole history was replayed


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
        await self.apply(conn, events)

    async def apply(self, conn: AsyncConnection, events: list[Event[EventData]]) -> Recomputed:
        """Fold a batch of customer events; what it published."""
        touched, merged, new = await self._keep(conn, events)
        now = await self._now(conn, max((e.time for e in events), default=None))
        if self.clock == "event-time":
            touched |= set(await stages.due(conn, now, limit=SWEEP_LIMIT))
        return await self.recompute(
            conn, touched, now, causes=Causes(events), new_facts=new, must_replay=merged
        )

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
        new_facts: dict[str, list[Fact]] | None = None,
        must_replay: Iterable[str] = (),
    ) -> Recomputed:
        """Bring these customers up to `now` (their facts are stored; `new_facts` are the
        ones stored by the work in hand, `must_replay` the customers whose facts changed
        otherwise); publish their new transitions, each in the trace of the consumed event
        that caused it (`causes`), or else of the work in hand."""
        ids = set(ids)
        causes = causes or Causes()
        new_facts = new_facts or {}
        if not ids:
            return Recomputed(0, 0)
        stored = await stages.stored_states(conn, ids)
        continued: dict[str, tuple[Stored, list[Fact]]] = {}
        for customer_id in ids - set(must_replay):
            if customer_id in stored:
                ordered = sorted(new_facts.get(customer_id, []), key=order)
                if self._continues(stored[customer_id], ordered, now):
                    continued[customer_id] = (stored[customer_id], ordered)
        replayed = ids - continued.keys()
        facts = await stages.facts_of(conn, replayed, self.policy)
        published = await stages.active_transitions(conn, replayed)
        # A customer without a stored state has no history now: a new one, or one whose
        # history went with a merge into another. What consumers were last told of the latter
        # is what its new history corrects: a contact an unmerge restores gets its own history
        # back, not a second welcome.
        silent = [i for i in replayed if i not in stored and i not in published]
        published.update(await stages.last_told(conn, silent))
        states: list[CustomerState] = []
        heads: dict[str, stages.Head] = {}
        gone: list[str] = []
        wake: dict[str, datetime] = {}
        rows: list[dict[str, Any]] = []
        superseded: list[int] = []
        revived: list[int] = []
        messages: list[OutgoingMessage] = []
        recorded = self.wall()

        def add(t: Transition, seq: int, restates: str | None, supersedes: list[str]) -> None:
            row = stages.transition_row(
                t, seq=seq, correction=restates is not None, policy=self.policy, now=recorded
            )
            rows.append(row)
            if publish:  # a rebuild publishes nothing: building messages is wasted work
                trace = causes.trace(t.customer_id, t.caused_by)
                messages.append(self._message(t, row, trace, restates, supersedes))

        for customer_id in sorted(continued):
            before, ordered = continued[customer_id]
            assert before.head is not None
            state, added = fold(before.state, ordered, self.policy, now)
            assert state is not None  # folding from a state never ends without one
            for seq, t in enumerate(added, start=before.head.next_seq):
                add(t, seq, restates=None, supersedes=[])
            heads[customer_id] = before.head.advanced(ordered, len(added))
            states.append(state)
        for customer_id in sorted(replayed):
            everything = facts.get(customer_id, [])
            state, history = replay(everything, self.policy, now)
            ahead = [f.time for f in everything if f.time > now]
            if ahead:
                wake[customer_id] = min(ahead)
            old = published.get(customer_id, [])
            keep = _restating_the_last(old, history, _common_prefix(old, history))
            superseded += [r["id"] for r in old[keep:]]
            revived += [r["id"] for r in old[:keep] if r["superseded"]]
            # A new entry into a stage the replaced tail entered too is a correction: it
            # restates that published entry (the first for the first, in order) at another
            # time or for another cause, and names it in `restates`, so what the entry set off
            # follows it. An entry never published is news, correction or not. The first new
            # transition names in `supersedes` the published entries left over: the history no
            # longer has them at all.
            unmatched: dict[str, deque[str]] = defaultdict(deque)
            for r in old[keep:]:
                unmatched[r["to_stage"]].append(r["event_id"])
            restates = [_pop(unmatched.get(t.to_stage)) for t in history[keep:]]
            left = {i for ids in unmatched.values() for i in ids}
            replaced = [r["event_id"] for r in old[keep:] if r["event_id"] in left]
            news = zip(history[keep:], restates, strict=True)
            for seq, (t, restated) in enumerate(news, start=keep):
                add(t, seq, restated, supersedes=replaced if seq == keep else [])
            if state is None:
                gone.append(customer_id)
            else:
                last = max(everything, key=order)  # facts after the clock count too
                heads[customer_id] = stages.Head(last.time, last.event_id, len(history))
                states.append(state)
        await stages.supersede(conn, superseded)
        await stages.supersede(conn, revived, superseded=False)
        await stages.insert_transitions(conn, rows)
        await stages.save_states(conn, states, self.policy, recorded, heads)
        await stages.set_wakeups(conn, wake, cleared=replayed)
        await stages.delete_states(conn, gone)
        if publish:
            await self.outbox.add(conn, messages, recorded)
        corrections = sum(1 for r in rows if r["correction"])
        return Recomputed(len(rows), corrections, len(continued), len(replayed))

    def _continues(self, stored: Stored, ordered: list[Fact], now: datetime) -> bool:
        """Whether folding `ordered` (this batch's new facts of a customer, in fold order)
        on top of the stored state gives what a replay of the whole history would."""
        head, state = stored.head, stored.state
        if head is None or state.erased or stored.policy_version != self.policy.version:
            return False
        if stored.waiting:  # facts ahead of the clock: a replay decides when they count
            return False
        if not ordered:
            return True  # only time passed (a due silence)
        first, last = ordered[0], ordered[-1]
        # After the last fact folded, and not before a transition already taken (a silence
        # the stored state aged into: a fact before it would have prevented it); none after
        # the clock (a replay leaves those out until the clock reaches them; customers with
        # such facts stored always replay).
        return head.precedes(first) and first.time >= state.stage_since and last.time <= now

    async def _keep(
        self, conn: AsyncConnection, events: list[Event[EventData]]
    ) -> tuple[set[str], set[str], dict[str, list[Fact]]]:
        """Store the facts; apply merges. Return the customers whose history changed, those
        of them changed by a merge, and the new facts by customer."""
        touched: set[str] = set()
        merged: set[str] = set()
        new: dict[str, dict[str, Fact]] = {}
        rows: list[dict[str, Any]] = []
        # A merged contact's event that comes after its merge (published before it, on
        # another partition than the merge) belongs to the survivor, as its earlier ones do.
        owners = await stages.merged_owners(conn, {e.subject for e in events})
        for event in events:
            if isinstance(event.data, ContactMerged | ContactUnmerged):
                # The facts of the batch so far first: a merge moves the merged customers'
                # events of this batch too (an unmerge restores them).
                await stages.add_facts(conn, rows)
                rows = []
            if isinstance(event.data, ContactMerged):
                survivor, gone = event.data.survivor_id, set(event.data.merged_ids)
                await stages.move_facts(conn, event.data.merged_ids, survivor)
                merged |= {survivor, *gone}
                owners.update(dict.fromkeys(gone, survivor))
                owners.update({k: survivor for k, owner in owners.items() if owner in gone})
                continue
            if isinstance(event.data, ContactUnmerged):
                await stages.restore_facts(conn, event.data.restored_id)
                merged |= {event.data.survivor_id, event.data.restored_id}
                owners.pop(event.data.restored_id, None)
                continue
            owner = owners.get(event.subject, event.subject)
            fact = Fact(owner, event.id, kind_of(event.type, self.policy), event.time)
            new.setdefault(owner, {})[event.id] = fact
            rows.append(
                {
                    "event_id": event.id,
                    "customer_id": owner,
                    "origin_id": event.subject,
                    "type": event.type,
                    "time": event.time,
                }
            )
            touched.add(owner)
        await stages.add_facts(conn, rows)
        # A fact stored before (a redelivered event) is not after the fold position: that
        # customer replays, and counts it once.
        return touched | merged, merged, {c: list(f.values()) for c, f in new.items()}

    async def _now(self, conn: AsyncConnection, seen: datetime | None) -> datetime:
        if self.clock == "wall":
            return self.wall()
        if seen is not None:
            return await stages.advance_event_clock(conn, seen)
        return await stages.event_clock(conn) or datetime.min.replace(tzinfo=self.wall().tzinfo)

    def _message(
        self,
        t: Transition,
        row: dict[str, Any],
        trace: TraceContext | None,
        restates: str | None,
        supersedes: list[str],
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
            restates=restates,
            supersedes=supersedes,
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


def _pop(ids: deque[str] | None) -> str | None:
    return ids.popleft() if ids else None


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
