"""Reports (flow matrix, cohorts) and the admin operations (rebuild, what-if)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from crm_shared.app.auth import requires
from crm_shared.app.deps import RuntimeDep
from crm_shared.app.problems import utc_parameter
from lifecycle.domain.policy import Policy
from lifecycle.handlers import replay
from lifecycle.handlers.customer_events import Lifecycle
from lifecycle.store import cohorts, queries

router = APIRouter(prefix="/v1", tags=["reports"])


def _lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


@router.get("/reports/flow", dependencies=[requires("lifecycle:read")])
async def flow_matrix(
    runtime: RuntimeDep,
    after: Annotated[datetime | None, Query(description="transitions at or after")] = None,
    before: Annotated[datetime | None, Query(description="transitions before")] = None,
) -> dict[str, Any]:
    """How many customers moved from each stage to each other stage in the period."""
    after, before = utc_parameter("after", after), utc_parameter("before", before)
    async with runtime.db.read() as conn:
        matrix = await queries.flow(conn, after, before)
    return {"after": after, "before": before, "flow": matrix}


@router.get("/reports/cohorts", dependencies=[requires("lifecycle:read")])
async def cohort_table(
    request: Request,
    runtime: RuntimeDep,
    months: Annotated[int, Query(ge=1, le=60, description="months after the first")] = 12,
) -> dict[str, Any]:
    """Customers grouped by the month of their first purchase: for each later month, the
    share of the cohort in an active stage (new or active) at that month's end."""
    async with runtime.db.read() as conn:
        now = await replay.current_now(_lifecycle(request), conn)
        table = await cohorts.cohort_table(conn, months=months, now=now)
    return {"as_of": now, "months": months, "cohorts": table}


@router.post("/admin/rebuild", dependencies=[requires("lifecycle:admin")])
async def rebuild(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Drop the stages and replay every customer's facts; what differs from the history
    consumers were told is published as corrections (nothing, when nothing does):
    `transitions` counts them."""
    started = datetime.now(UTC)
    result = await replay.rebuild(runtime.db, _lifecycle(request))
    return {**result, "seconds": (datetime.now(UTC) - started).total_seconds()}


@router.post("/admin/what-if", dependencies=[requires("lifecycle:admin")])
async def what_if(policy: Policy, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Evaluate another policy over the same history: who would end in a different stage,
    and how the counts per stage would change. Nothing is written or published."""
    return await replay.what_if(runtime.db, _lifecycle(request), policy)
