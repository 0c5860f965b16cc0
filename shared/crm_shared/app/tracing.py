"""W3C trace context for HTTP: every request runs in a trace, named in the response.

A request with a valid `traceparent` header continues that trace (in a span of its own);
without one, or with a malformed one, it starts a new trace. The trace is current while
the request is handled, so the events it produces and its log records carry it, and the
response's `traceparent` header tells the caller which trace to look for.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_shared import tracecontext
from crm_shared.tracecontext import TraceContext

_TRACE_HEADERS = (tracecontext.TRACEPARENT.encode(), tracecontext.TRACESTATE.encode())


class TraceContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware), so the trace is set in the request's own context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = request_trace(scope["headers"])

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[tracecontext.TRACEPARENT] = context.traceparent
            await send(message)

        with tracecontext.use(context):
            await self.app(scope, receive, send_with_trace)


def request_trace(headers: list[tuple[bytes, bytes]]) -> TraceContext:
    """The request's span: a child of the caller's trace, or the root of a new one."""
    caller = tracecontext.from_headers(
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
        if name.lower() in _TRACE_HEADERS
    )
    return caller.child() if caller is not None else tracecontext.new_trace()
