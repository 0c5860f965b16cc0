"""The baseline of `bench.http_reads`: the least a FastAPI GET can cost on this machine.

One route with a path parameter returning a small JSON object, no middleware, no
dependency, no database; the Authorization header the load sends is not looked at. It is
served exactly as the services serve themselves (`crm_shared.app.cli.service_cli`: the same
`uvicorn.run` options, so the same event loop and HTTP parser), on `CRM_HTTP_HOST` and
`CRM_HTTP_PORT`, so `crm_shared.testing.stack.ServiceProcess` can start it like a service:

    CRM_HTTP_PORT=8009 .venv/bin/python -m bench.minimal_app serve
"""

from __future__ import annotations

import os
import sys

import uvicorn
from fastapi import FastAPI

ROUTE = "/v1/items/{item_id}"
# What its readiness answers names, as every service's does (`ServiceProcess` checks it).
NAME = "baseline"
SHUTDOWN_TIMEOUT_S = 10  # the services' default CRM_SHUTDOWN_TIMEOUT_S


def create_app() -> FastAPI:
    app = FastAPI(title="minimal", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"service": NAME, "status": "ready"}

    @app.get(ROUTE)
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id, "status": "ok"}

    return app


def main(argv: list[str]) -> int:
    if argv[1:] != ["serve"]:
        print("usage: python -m bench.minimal_app serve", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(),
        host=os.environ.get("CRM_HTTP_HOST", "127.0.0.1"),
        port=int(os.environ.get("CRM_HTTP_PORT", "8009")),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
