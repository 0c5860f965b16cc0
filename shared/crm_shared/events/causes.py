"""Which consumed event a reaction continues the trace of.

A handler gets a batch of events and publishes events in reaction, often per customer
rather than per consumed event. Each reaction joins the trace of its cause: the consumed
event it names (a stage change's `caused_by`) when that one is in the batch, else the
customer's latest event in the batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from crm_shared.events.envelope import CloudEvent
from crm_shared.events.registry import Event, EventData
from crm_shared.tracecontext import TraceContext


class Causes:
    def __init__(self, events: Iterable[Event[EventData]] = ()) -> None:
        self._by_id: dict[str, CloudEvent] = {}
        self._by_customer: dict[str, CloudEvent] = {}
        for event in events:
            if event.envelope.traceparent is not None:
                self._by_id[event.id] = event.envelope
                self._by_customer[event.subject] = event.envelope

    def trace(self, customer: str, event_id: str | None = None) -> TraceContext | None:
        """The trace a reaction about `customer` (caused by `event_id`, if known) joins."""
        cause = self._by_id.get(event_id) if event_id is not None else None
        cause = cause or self._by_customer.get(customer)
        return cause.trace() if cause is not None else None
