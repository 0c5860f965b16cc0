"""FastAPI dependencies shared by every service's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from crm_shared.app.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The service runtime (async: a plain function would run in the thread pool)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
