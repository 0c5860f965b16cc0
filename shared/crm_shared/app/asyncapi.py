"""`GET /asyncapi.json`: the service's AsyncAPI document, next to its `/openapi.json`.

Served, without a token, when the OpenAPI document is (`CRM_DOCS_PUBLIC`), and kept out of
the OpenAPI schema: like `/openapi.json` it is a plain Starlette route, outside the
bearer-token rules of the API routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from crm_shared.app.runtime import Runtime
from crm_shared.events.asyncapi import ServiceTopics, document

PATH = "/asyncapi.json"


def asyncapi_router() -> APIRouter:
    """A router serving the AsyncAPI document of the app's runtime."""
    router = APIRouter()

    async def asyncapi(request: Request) -> JSONResponse:
        return JSONResponse(service_asyncapi(request.app))

    router.add_route(PATH, asyncapi, methods=["GET"], include_in_schema=False)
    return router


def service_asyncapi(app: FastAPI) -> dict[str, Any]:
    """The app's AsyncAPI document, built once (the runtime's topics are fixed by then)."""
    cached: dict[str, Any] | None = getattr(app.state, "asyncapi", None)
    if cached is None:
        runtime: Runtime = app.state.runtime
        cached = document(
            service_topics(runtime),
            runtime.registry,
            title=app.title,
            version=app.version,
            description=app.description,
        )
        app.state.asyncapi = cached
    return cached


def service_topics(runtime: Runtime) -> ServiceTopics:
    """What the runtime publishes and consumes, and where, as its settings say."""
    s = runtime.settings
    return ServiceTopics(
        name=runtime.name,
        publishes=runtime.publishes,
        consumes={sub.name: sub.topics for sub in runtime.subscriptions},
        bootstrap=s.kafka_bootstrap,
        topic_prefix=s.topic_prefix,
        partitions=s.topic_partitions,
        consumer_group=s.consumer_group,
    )
