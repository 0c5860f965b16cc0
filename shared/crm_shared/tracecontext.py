"""W3C Trace Context: `traceparent` values, and the trace of the work in hand.

One trace follows a customer event from the HTTP request that brought it, through Kafka,
into every service that reacts to it. The HTTP middleware takes the request's trace (or
starts one), the batch consumer takes each consumed event's, and every event built
meanwhile carries a child of it: the CloudEvents Distributed Tracing extension
(`traceparent`, `tracestate` attributes of the envelope, copied into Kafka headers). Log
records carry the current trace's ids. Spans are not exported anywhere: the ids correlate.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
VERSION = "00"
SAMPLED = 0x01
MAX_TRACESTATE = 512  # what W3C asks every vendor to pass on; longer values are dropped
_FORMAT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# What this system writes, and most senders: version 00, sampled flag only. Such a value is
# read by slicing; anything else goes through the general rules.
_CANONICAL = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")
_STATE = re.compile(r"[\x20-\x7e]*")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

_current: ContextVar[TraceContext | None] = ContextVar("crm_trace", default=None)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace: the trace, the span doing the work, the sampled flag, and the
    vendors' `tracestate` passed on unchanged."""

    trace_id: str
    span_id: str
    flags: int = SAMPLED
    tracestate: str | None = None

    @property
    def traceparent(self) -> str:
        return f"{VERSION}-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self) -> TraceContext:
        """A new span in the same trace, for work done on behalf of this one."""
        # Not dataclasses.replace: this runs for every event a consumer reacts to.
        return TraceContext(self.trace_id, _new_span_id(), self.flags, self.tracestate)


def new_trace() -> TraceContext:
    """The root of a new trace (random ids, sampled)."""
    return TraceContext(secrets.token_hex(16), _new_span_id())


def _new_span_id() -> str:
    span = secrets.token_hex(8)
    return span if span != _ZERO_SPAN else _new_span_id()


def parse(traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
    """A `traceparent` value as a TraceContext, or None if it is absent or malformed.

    Per W3C: lower-case hex, version `ff` is invalid, version 00 is exactly 55 characters,
    a later version may append `-...` (parsed as 00), trace and parent ids are not all zero.
    A malformed `tracestate` is dropped; the `traceparent` still counts.
    """
    if not traceparent or len(traceparent) < 55:
        return None
    if _is_canonical(traceparent):
        sampled = SAMPLED if traceparent[54] == "1" else 0
        return TraceContext(traceparent[3:35], traceparent[36:52], sampled, parse_state(tracestate))
    match = _FORMAT.match(traceparent)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or (version == VERSION and len(traceparent) != 55):
        return None
    if len(traceparent) > 55 and traceparent[55] != "-":
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    # Only the sampled flag is defined for version 00; other bits are not passed on.
    return TraceContext(trace_id, span_id, int(flags, 16) & SAMPLED, parse_state(tracestate))


def normalized(traceparent: str) -> str | None:
    """The `traceparent` to pass on for a received one: None if it is malformed, else the
    value as this system writes it (the same string, usually)."""
    if _is_canonical(traceparent):
        return traceparent
    context = parse(traceparent)
    return context.traceparent if context is not None else None


def _is_canonical(traceparent: str) -> bool:
    return (
        len(traceparent) == 55
        and _CANONICAL.fullmatch(traceparent) is not None
        and traceparent[3:35] != _ZERO_TRACE
        and traceparent[36:52] != _ZERO_SPAN
    )


def parse_state(tracestate: str | None) -> str | None:
    """A `tracestate` worth passing on (printable, at most 512 characters), else None."""
    if not tracestate or len(tracestate) > MAX_TRACESTATE or not _STATE.fullmatch(tracestate):
        return None
    return tracestate.strip() or None


def from_headers(headers: Iterable[tuple[str, str]]) -> TraceContext | None:
    """The trace named by HTTP or Kafka headers (name, value); None if absent or invalid.
    Two `traceparent` headers are invalid; several `tracestate` headers are one list."""
    parents: list[str] = []
    states: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == TRACEPARENT:
            parents.append(value.strip())
        elif lowered == TRACESTATE:
            states.append(value.strip())
    if len(parents) != 1:
        return None
    return parse(parents[0], ",".join(states) or None)


def as_headers(context: TraceContext | None) -> dict[str, str]:
    """The headers that carry a trace (none for no trace)."""
    if context is None:
        return {}
    headers = {TRACEPARENT: context.traceparent}
    if context.tracestate:
        headers[TRACESTATE] = context.tracestate
    return headers


def current() -> TraceContext | None:
    """The trace of the work in hand, if any."""
    return _current.get()


def child_of_current() -> TraceContext | None:
    """A new span under the current trace, or None outside any trace."""
    context = _current.get()
    return context.child() if context is not None else None


@contextmanager
def use(context: TraceContext | None) -> Iterator[TraceContext | None]:
    """Make `context` the current trace for the block (None: no trace)."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
