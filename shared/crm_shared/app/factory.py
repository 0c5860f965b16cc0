"""The FastAPI app every service is: health, readiness, metrics, problem+json, lifespan."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_shared.app.asyncapi import asyncapi_router
from crm_shared.app.auth import TokenVerifier, check_every_route_is_guarded, document_access
from crm_shared.app.deps import RuntimeDep
from crm_shared.app.limits import BodyLimit
from crm_shared.app.metrics import CONTENT_TYPE, Metrics
from crm_shared.app.outbox_admin import router as outbox_router
from crm_shared.app.problems import install_problem_handlers
from crm_shared.app.runtime import Runtime
from crm_shared.app.tracing import TraceContextMiddleware


def create_service_app(
    runtime: Runtime,
    *,
    title: str,
    description: str,
    routers: Sequence[APIRouter] = (),
    version: str = "0.1.0",
    state: dict[str, Any] | None = None,
    body_limits: Mapping[str, int] | None = None,
) -> FastAPI:
    """Build a service's app around its runtime; nothing connects until the lifespan starts.

    Every route must require a scope or be marked public (see `crm_shared.app.auth`);
    `body_limits` gives path prefixes that take bigger bodies than `CRM_MAX_BODY_BYTES`.
    """
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    docs = settings.docs_public
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        # The services trace with W3C ids in logs and events, and count in /metrics; FastAPI's
        # own OpenTelemetry looked up the tracer provider in os.environ on every request
        # (3.5% of a stage GET's CPU) to learn it was not configured.
        telemetry=None
        if settings.opentelemetry
        else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.state.token_verifier = TokenVerifier.from_settings(settings)
    for key, value in (state or {}).items():
        setattr(app.state, key, value)
    install_problem_handlers(app)
    app.include_router(_operations_router())
    if docs:  # like /openapi.json: public, and not in the OpenAPI schema
        app.include_router(asyncapi_router())
    for router in (*routers, outbox_router):
        app.include_router(router)
    check_every_route_is_guarded(app)
    app.add_middleware(BodyLimit, default=settings.max_body_bytes, overrides=body_limits)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "Idempotency-Key"],
            expose_headers=["ETag", "Location", "traceparent"],
            max_age=600,
        )
    app.add_middleware(RequestMetrics, metrics=runtime.metrics)
    app.add_middleware(TraceContextMiddleware)  # outermost: every response names its trace
    _document_problems(app)
    return app


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "field": {"type": "string", "description": "the input at fault, when there is one"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "required": ["type", "title", "status", "detail"],
}


def _document_problems(app: FastAPI) -> None:
    """Declare every error response as `application/problem+json`, as it is served, and the
    400 (unreadable body) and 422 (invalid input) any operation can answer."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        document_access(app, schema)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                _problem_responses(operation)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_responses(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    if operation.get("requestBody") or operation.get("parameters"):
        responses.setdefault("422", {"description": "invalid input; the problem names it"})
    if operation.get("requestBody"):
        responses.setdefault("400", {"description": "the body cannot be read"})
    for status, response in responses.items():
        if status[0] in "45" and not _own_body(response):
            response["content"] = {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }


def _own_body(response: dict[str, Any]) -> bool:
    """An error response documented with a model of its own (readiness' 503), which is
    what it serves; FastAPI's default validation error is not what a 422 serves."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema) and schema != {"$ref": "#/components/schemas/HTTPValidationError"}


class Readiness(BaseModel):
    service: str = Field(description="which service answered, e.g. `lifecycle`")
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description='"ok", or why a dependency is not usable')


def _operations_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: database and broker reachable",
        responses={
            200: {"model": Readiness},
            503: {"model": Readiness, "description": "a dependency is not reachable"},
        },
    )
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        checks = await runtime.readiness()
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {
                "service": runtime.name,
                "status": "ready" if ready else "not ready",
                "checks": checks,
            },
            status_code=200 if ready else 503,
        )

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(runtime: RuntimeDep) -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    return router


class RequestMetrics:
    """Counts requests and their latency by route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.http_requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.http_latency.labels(template).observe(time.perf_counter() - started)
