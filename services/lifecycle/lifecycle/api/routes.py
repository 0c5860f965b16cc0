"""Lifecycle's HTTP API: a customer's stage and transitions."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from crm_shared.app.factory import RuntimeDep
from crm_shared.app.problems import Problem
from lifecycle.store import stages

router = APIRouter(prefix="/v1", tags=["lifecycle"])


class StageView(BaseModel):
    customer_id: str
    stage: str
    since: datetime
    purchases: int
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None


class TransitionView(BaseModel):
    from_stage: str | None
    to_stage: str
    reason: str
    caused_by: str
    occurred_at: datetime
    recorded_at: datetime
    policy_version: str


@router.get(
    "/customers/{customer_id}/stage",
    response_model=StageView,
    responses={404: {"description": "no event about this customer has been seen"}},
)
async def get_stage(customer_id: str, runtime: RuntimeDep) -> StageView:
    """The customer's current lifecycle stage."""
    async with runtime.db.read() as conn:
        state = await stages.load_state(conn, customer_id)
    if state is None:
        raise Problem(404, f"no lifecycle stage for customer {customer_id!r}")
    return StageView(
        customer_id=state.customer_id,
        stage=state.stage,
        since=state.stage_since,
        purchases=state.purchases,
        first_purchase_at=state.first_purchase_at,
        last_purchase_at=state.last_purchase_at,
    )


@router.get("/customers/{customer_id}/transitions", response_model=list[TransitionView])
async def get_transitions(customer_id: str, runtime: RuntimeDep) -> list[TransitionView]:
    """Every stage change of the customer, oldest first."""
    async with runtime.db.read() as conn:
        rows = await stages.transitions_of(conn, customer_id)
    return [TransitionView.model_validate(row) for row in rows]
