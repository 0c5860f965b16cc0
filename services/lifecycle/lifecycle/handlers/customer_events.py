"""Folding a consumed batch of customer events into stages, in the batch's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from crm_shared.events import Event, EventData, new_event
from crm_shared.events.catalog import StageChanged
from crm_shared.messaging.topics import LIFECYCLE
from crm_shared.store.outbox import Outbox, OutgoingMessage
from lifecycle.domain.stages import POLICY_VERSION, CustomerState, Fact, Transition, fold
from lifecycle.store import stages

SOURCE = "crm/lifecycle"
_IDS = uuid.UUID("6f1c1f7e-8f5e-4a53-9a53-3c1b1d3f0a01")


class CustomerEventsHandler:
    def __init__(self, outbox: Outbox, clock: Callable[[], datetime]) -> None:
        self._outbox = outbox
        self._clock = clock

    async def __call__(self, conn: AsyncConnection, events: list[Event[EventData]]) -> None:
        """Fold the batch in order; write states, transitions and their messages once."""
        facts = [Fact(e.id, e.subject, e.type, e.time) for e in events]
        states = await stages.load_states(conn, {f.customer_id for f in facts})
        touched: dict[str, CustomerState] = {}
        transitions: list[Transition] = []
        for fact in facts:
            state, changes = fold(states.get(fact.customer_id), fact)
            states[fact.customer_id] = touched[fact.customer_id] = state
            transitions += changes
        now = self._clock()
        await stages.save(conn, list(touched.values()), transitions, now)
        await self._outbox.add(conn, [stage_changed_message(t) for t in transitions], now)


def stage_changed_message(t: Transition) -> OutgoingMessage:
    data = StageChanged(
        customer_id=t.customer_id,
        from_stage=t.from_stage,
        to_stage=t.to_stage,
        reason=t.reason,
        caused_by=t.caused_by,
        occurred_at=t.occurred_at,
        policy_version=POLICY_VERSION,
    )
    # The id is derived from what caused the change, so a rebuild publishes the same ids.
    event_id = uuid.uuid5(_IDS, f"{t.caused_by}:{t.from_stage}:{t.to_stage}")
    event = new_event(
        type="crm.lifecycle.stage_changed.v1",
        source=SOURCE,
        subject=t.customer_id,
        time=t.occurred_at,
        id=str(event_id),
        data=data.model_dump(mode="json"),
    )
    return OutgoingMessage(topic=LIFECYCLE, key=t.customer_id, event=event)
