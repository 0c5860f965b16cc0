"""W3C trace context: parsing and making `traceparent`, the HTTP middleware, events that
join the current trace, and log lines that name it."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI

from crm_shared import tracecontext
from crm_shared.app.logging import JsonFormatter
from crm_shared.app.tracing import TraceContextMiddleware
from crm_shared.events import CATALOG, CloudEvent, new_event, parse_envelope
from crm_shared.events.causes import Causes
from crm_shared.tracecontext import TraceContext
from tests.support.events import purchase_json

# The example of the W3C recommendation.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_w3c_traceparent_is_read_into_its_parts() -> None:
    context = tracecontext.parse(PARENT, "congo=t61rcWkgMzE")
    assert context == TraceContext(TRACE_ID, "00f067aa0ba902b7", 1, "congo=t61rcWkgMzE")
    assert context is not None and context.traceparent == PARENT


@pytest.mark.parametrize(
    "value",
    [
        "",
        f"00-{TRACE_ID}-00f067aa0ba902b7",  # no flags
        f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01",  # upper case
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE_ID}-00f067aa0ba902b7-01",  # forbidden version
        f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
        f"01-{TRACE_ID}-00f067aa0ba902b7-01x",  # a later version's extra field needs a dash
        f"00_{TRACE_ID}_00f067aa0ba902b7_01",
        f"00-{TRACE_ID[:-1]}g-00f067aa0ba902b7-01",
    ],
)
def test_a_malformed_traceparent_is_no_trace(value: str) -> None:
    assert tracecontext.parse(value) is None
    assert tracecontext.normalized(value) is None


@pytest.mark.parametrize(
    "value",
    [
        PARENT,
        f"00-{TRACE_ID}-00f067aa0ba902b7-00",  # not sampled
        f"00-{TRACE_ID}-00f067aa0ba902b7-03",  # undefined flag bits
        f"00-{TRACE_ID}-00f067aa0ba902b7-0f",
        f"cc-{TRACE_ID}-00f067aa0ba902b7-01-what-comes-next",
        f"01-{TRACE_ID}-00f067aa0ba902b7-01",
        f"00-{TRACE_ID}-00f067aa0ba902b7-1",  # short
        f"00-{TRACE_ID}-00f067aa0ba902b7-01 ",  # one too many
        f"00-{TRACE_ID}-{'0' * 15}1-01",  # a parent id with zeros, not all
    ],
)
def test_the_fast_reading_of_usual_values_agrees_with_the_general_rules(value: str) -> None:
    context = tracecontext.parse(value, "a=b")
    assert tracecontext.normalized(value) == (context.traceparent if context else None)
    if context is not None:
        # The same context as the general path builds (flags reduced to the sampled bit).
        assert context.flags in (0, 1) and context.tracestate == "a=b"
        assert context.traceparent.startswith(f"00-{TRACE_ID}-")


def test_a_later_version_is_read_as_far_as_version_00_goes() -> None:
    context = tracecontext.parse(f"cc-{TRACE_ID}-00f067aa0ba902b7-01-what-comes-next")
    assert context is not None and context.traceparent == PARENT


def test_only_the_sampled_flag_is_passed_on() -> None:
    context = tracecontext.parse(f"00-{TRACE_ID}-00f067aa0ba902b7-ff")
    assert context is not None and context.traceparent.endswith("-01")


def test_a_new_trace_is_valid_and_its_children_keep_the_trace_with_new_spans() -> None:
    root = tracecontext.new_trace()
    assert tracecontext.parse(root.traceparent) == root
    children = {root.child() for _ in range(50)}
    assert {c.trace_id for c in children} == {root.trace_id}
    assert len({c.span_id for c in children} | {root.span_id}) == 51
    assert tracecontext.new_trace().trace_id != root.trace_id


def test_headers_give_the_trace_and_two_traceparents_give_none() -> None:
    headers = [("TraceParent", PARENT), ("tracestate", "a=1"), ("tracestate", "b=2")]
    assert tracecontext.from_headers(headers) == TraceContext(
        TRACE_ID, "00f067aa0ba902b7", 1, "a=1,b=2"
    )
    assert tracecontext.from_headers([("traceparent", PARENT)] * 2) is None
    assert tracecontext.from_headers([]) is None


def test_an_oversized_or_unprintable_tracestate_is_dropped_and_the_parent_kept() -> None:
    for state in ("k=" + "v" * 600, "k=\x00"):
        context = tracecontext.parse(PARENT, state)
        assert context is not None and context.tracestate is None


def test_the_current_trace_holds_for_the_block_only() -> None:
    context = tracecontext.new_trace()
    with tracecontext.use(context):
        assert tracecontext.current() == context
        child = tracecontext.child_of_current()
        assert child is not None and child.trace_id == context.trace_id
    assert tracecontext.current() is None and tracecontext.child_of_current() is None


def traced_app() -> FastAPI:
    app = FastAPI()

    @app.get("/here")
    async def here() -> dict[str, str | None]:
        current = tracecontext.current()
        return {"traceparent": current.traceparent if current else None}

    app.add_middleware(TraceContextMiddleware)
    return app


async def get_here(headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=traced_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get("/here", headers=headers)


async def test_a_request_continues_the_callers_trace_in_a_span_of_its_own() -> None:
    response = await get_here({"traceparent": PARENT})
    served = tracecontext.parse(response.headers["traceparent"])
    assert served is not None and served.trace_id == TRACE_ID
    assert served.span_id != "00f067aa0ba902b7"
    assert response.json()["traceparent"] == served.traceparent
    assert tracecontext.current() is None


@pytest.mark.parametrize("headers", [{}, {"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"}])
async def test_a_request_without_a_valid_trace_starts_a_new_one(headers: dict[str, str]) -> None:
    response = await get_here(headers)
    served = tracecontext.parse(response.headers["traceparent"])
    assert served is not None and served.trace_id != "0" * 32
    assert response.json()["traceparent"] == served.traceparent


def test_log_lines_name_the_current_trace() -> None:
    record = logging.LogRecord("crm.test", logging.INFO, __file__, 1, "hello", (), None)
    formatter = JsonFormatter("lifecycle")
    assert "trace_id" not in json.loads(formatter.format(record))
    context = tracecontext.new_trace()
    with tracecontext.use(context):
        entry = json.loads(formatter.format(record))
    assert (entry["trace_id"], entry["span_id"]) == (context.trace_id, context.span_id)


def test_an_envelope_keeps_a_valid_trace_and_ignores_a_malformed_one() -> None:
    event = parse_envelope({**purchase_json("c1"), "traceparent": PARENT, "tracestate": "a=1"})
    assert event.trace() == TraceContext(TRACE_ID, "00f067aa0ba902b7", 1, "a=1")
    assert json.loads(event.to_json())["traceparent"] == PARENT
    broken = parse_envelope({**purchase_json("c1"), "traceparent": "00-abc-def-01"})
    assert broken.traceparent is None and broken.trace() is None
    orphan = parse_envelope({**purchase_json("c1"), "tracestate": "a=1"})
    assert orphan.tracestate is None
    assert CATALOG.validate(broken).envelope == broken  # still a good event


def build(trace: TraceContext | None = None) -> CloudEvent:
    return new_event(
        type="crm.session.started.v1", source="t", subject="c1", time=NOW, data={}, trace=trace
    )


def test_an_event_built_in_a_trace_joins_it_in_a_new_span() -> None:
    assert build().traceparent is None
    context = tracecontext.new_trace()
    with tracecontext.use(context):
        event = build()
    joined = event.trace()
    assert joined is not None and joined.trace_id == context.trace_id
    assert joined.span_id != context.span_id
    cause = tracecontext.new_trace()
    with tracecontext.use(context):
        caused = build(trace=cause).trace()
    assert caused is not None and caused.trace_id == cause.trace_id


def test_a_reaction_joins_the_trace_of_the_event_it_names_else_the_customers_latest() -> None:
    first, second, other = (tracecontext.new_trace() for _ in range(3))
    events = [
        CATALOG.validate(parse_envelope({**purchase_json(c, event_id=i), "traceparent": t}))
        for c, i, t in [
            ("c1", "e1", first.traceparent),
            ("c1", "e2", second.traceparent),
            ("c2", "e3", other.traceparent),
        ]
    ]
    causes = Causes(events)
    assert causes.trace("c1", "e1") == first
    assert causes.trace("c1", "not-in-batch") == second
    assert causes.trace("c1") == second
    assert causes.trace("c3") is None
