"""Lifecycle's HTTP API: stages, transitions, summaries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from crm_shared.app.auth import requires
from crm_shared.app.deps import RuntimeDep
from crm_shared.app.problems import Problem, utc_parameter
from lifecycle.domain.stages import STAGES
from lifecycle.handlers.replay import current_now
from lifecycle.store import queries, stages

router = APIRouter(prefix="/v1", tags=["lifecycle"])
AsOf = Annotated[datetime | None, Query(description="as it was at this time (RFC 3339)")]


class StageView(BaseModel):
    customer_id: str
    stage: str
    since: datetime
    as_of: datetime | None = None
    purchases: int | None = None
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    next_due: datetime | None = None
    policy_version: str


class TransitionView(BaseModel):
    customer_id: str
    from_stage: str | None
    to_stage: str
    reason: str
    caused_by: str
    occurred_at: datetime
    recorded_at: datetime
    policy_version: str
    correction: bool
    superseded: bool


class TransitionPage(BaseModel):
    items: list[TransitionView]
    next_cursor: str | None


class Summary(BaseModel):
    as_of: datetime | None
    counts: dict[str, int]


@router.get(
    "/customers/{customer_id}/stage",
    dependencies=[requires("lifecycle:read")],
    response_model=StageView,
    responses={404: {"description": "no event about this customer (by then)"}},
)
async def get_stage(customer_id: str, runtime: RuntimeDep, as_of: AsOf = None) -> StageView:
    """The customer's lifecycle stage now, or as it was at `as_of`."""
    as_of = utc_parameter("as_of", as_of)
    if as_of is not None:
        async with runtime.db.read() as conn:
            row = await stages.stage_as_of(conn, customer_id, as_of)
        if row is None:
            raise Problem(404, f"no lifecycle stage for customer {customer_id!r} by {as_of}")
        return StageView(
            customer_id=customer_id,
            stage=row["to_stage"],
            since=row["occurred_at"],
            as_of=as_of,
            policy_version=row["policy_version"],
        )
    state = await stages.state_of(runtime.db, customer_id)
    if state is None:
        raise Problem(404, f"no lifecycle stage for customer {customer_id!r}")
    return StageView(
        customer_id=customer_id,
        stage=state["stage"],
        since=state["stage_since"],
        purchases=state["purchases"],
        first_purchase_at=state["first_purchase_at"],
        last_purchase_at=state["last_purchase_at"],
        next_due=state["next_due"],
        policy_version=state["policy_version"],
    )


@router.get(
    "/customers/{customer_id}/transitions",
    dependencies=[requires("lifecycle:read")],
    response_model=list[TransitionView],
)
async def get_customer_transitions(
    customer_id: str,
    runtime: RuntimeDep,
    include_superseded: Annotated[
        bool, Query(description="also transitions that corrections replaced")
    ] = False,
) -> list[dict[str, Any]]:
    """Every stage change of the customer, in the order recorded."""
    async with runtime.db.read() as conn:
        return await stages.history_of(conn, customer_id, include_superseded=include_superseded)


@router.get("/stages/summary", dependencies=[requires("lifecycle:read")], response_model=Summary)
async def get_summary(request: Request, runtime: RuntimeDep, as_of: AsOf = None) -> Summary:
    """How many customers are in each stage (now, or at `as_of`). `as_of` in the answer is
    the time the counts describe: the clock's now (the event-time clock's, if so set)."""
    as_of = utc_parameter("as_of", as_of)
    async with runtime.db.read() as conn:
        counts = await stages.stage_counts(conn, as_of)
        described = as_of or await current_now(request.app.state.lifecycle, conn)
    return Summary(as_of=described, counts={stage: counts.get(stage, 0) for stage in STAGES})


@router.get(
    "/transitions", dependencies=[requires("lifecycle:read")], response_model=TransitionPage
)
async def list_transitions(
    runtime: RuntimeDep,
    from_stage: Annotated[str | None, Query(alias="from")] = None,
    to_stage: Annotated[str | None, Query(alias="to")] = None,
    reason: str | None = None,
    after: Annotated[datetime | None, Query(description="occurred at or after")] = None,
    before: Annotated[datetime | None, Query(description="occurred before")] = None,
    include_superseded: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> TransitionPage:
    """Transitions of every customer, in the order recorded, filtered and paged."""
    after, before = utc_parameter("after", after), utc_parameter("before", before)
    where = queries.TransitionFilter(
        from_stage, to_stage, reason, after, before, include_superseded
    )
    async with runtime.db.read() as conn:
        try:
            rows, next_cursor = await queries.transitions(conn, where, limit=limit, cursor=cursor)
        except ValueError as exc:
            raise Problem(422, str(exc), field="cursor") from None
    return TransitionPage(
        items=[TransitionView.model_validate(r) for r in rows], next_cursor=next_cursor
    )
