"""Scoring's HTTP API: a customer's scores with explanations, the worklist, the models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from crm_shared.app.auth import requires
from crm_shared.app.deps import RuntimeDep
from crm_shared.app.problems import Problem, utc_parameter
from scoring.domain.model import ScoringModel, score
from scoring.domain.risk import RiskWeights
from scoring.handlers.scoring import Scoring
from scoring.store import scores, stats

router = APIRouter(prefix="/v1", tags=["scores"])


class ScoreView(BaseModel):
    customer_id: str
    model_version: str
    computed_at: datetime
    p_alive: float
    expected_purchases_90d: float
    expected_purchases_365d: float
    clv: float
    churn_risk: float
    risk_band: str
    tier: str | None
    rfm_r: int | None
    rfm_f: int | None
    rfm_m: int | None
    rfm_segment: str | None
    stage: str | None
    explanation: dict[str, Any]


class Worklist(BaseModel):
    items: list[ScoreView]
    next_cursor: str | None


class ReplayRequest(BaseModel):
    """What to change for a comparison: tier percentiles and/or churn-risk weights."""

    tier_percentiles: dict[str, Annotated[float, Field(ge=0, le=1)]] | None = None
    risk_weights: RiskWeights | None = None


def _scoring(request: Request) -> Scoring:
    scoring: Scoring = request.app.state.scoring
    return scoring


@router.get(
    "/customers/{customer_id}/score",
    dependencies=[requires("scores:read")],
    response_model=ScoreView,
    responses={404: {"description": "no score for this customer (by then)"}},
)
async def get_score(
    customer_id: str,
    runtime: RuntimeDep,
    as_of: Annotated[datetime | None, Query(description="the score last published by then")] = None,
) -> dict[str, Any]:
    """The customer's scores and the contribution of each factor. With `as_of`, the score
    that stood then (history keeps every published, material change)."""
    as_of = utc_parameter("as_of", as_of)
    if as_of is None:
        found = await scores.lookup(runtime.db, customer_id)
    else:
        async with runtime.db.read() as conn:
            found = await scores.as_of(conn, customer_id, as_of)
    if found is None:
        raise Problem(404, f"no score for customer {customer_id!r}")
    return found


@router.get("/customers", dependencies=[requires("scores:read")], response_model=Worklist)
async def worklist(
    runtime: RuntimeDep,
    tier: str | None = None,
    risk_band: Literal["low", "medium", "high"] | None = None,
    segment: Annotated[str | None, Query(description="RFM segment, e.g. at_risk")] = None,
    stage: str | None = None,
    order: Literal["churn_risk", "clv"] = "churn_risk",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Worklist:
    """Customers to act on, highest churn risk (or value) first, filtered, paged."""
    filters = {"tier": tier, "risk_band": risk_band, "rfm_segment": segment, "stage": stage}
    async with runtime.db.read() as conn:
        try:
            rows, next_cursor = await scores.worklist(
                conn, filters=filters, order=order, limit=limit, cursor=cursor
            )
        except ValueError as exc:
            raise Problem(422, str(exc), field="cursor") from None
    return Worklist(items=[ScoreView.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/models", dependencies=[requires("scores:read")])
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    """Every fitted model, newest first; `active` marks the one scoring now."""
    async with runtime.db.read() as conn:
        rows = await scores.all_models(conn)
    return {
        "models": [
            {"version": r["version"], "fitted_at": r["fitted_at"], "active": r["active"]}
            for r in rows
        ]
    }


@router.get(
    "/models/{version}",
    dependencies=[requires("scores:read")],
    responses={404: {"description": "no such model"}},
)
async def get_model(version: str, runtime: RuntimeDep) -> dict[str, Any]:
    """A fitted model: parameters as named in the literature, time unit, log-likelihood,
    customers used, fit time, and the population cut points of its RFM scores and tiers."""
    async with runtime.db.read() as conn:
        row = await scores.model(conn, version)
    if row is None:
        raise Problem(404, f"no model {version!r}")
    return {**row["model"], "active": row["active"]}


@router.post(
    "/models/refit",
    dependencies=[requires("scores:admin")],
    responses={409: {"description": "too few buyers to fit"}},
)
async def refit(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Fit new models on every customer now, make them active and rescore everyone."""
    try:
        model = await _scoring(request).refit(runtime.db)
    except ValueError as exc:
        raise Problem(409, str(exc)) from None
    runtime.wake_relay()
    return model.model_dump(mode="json")


@router.post(
    "/admin/replay",
    dependencies=[requires("scores:admin")],
    responses={409: {"description": "no fitted model yet: refit first"}},
)
async def replay(body: ReplayRequest, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Score everyone with changed tier cut-offs or risk weights and compare with the
    current scores; nothing is written or published."""
    scoring = _scoring(request)
    await scoring.sync_clock(runtime.db)
    async with runtime.db.read() as conn:
        model = await scores.active_model(conn)
        if model is None:
            raise Problem(409, "no fitted model yet: refit first")
        population = await stats.every(conn)
        current = {
            r["customer_id"]: r
            for r in [await scores.current(conn, s.customer_id) for s in population]
            if r
        }
    changed = _changed(model, body, population, current, scoring)
    return {"model_version": model.version, "customers": len(population), **changed}


def _changed(
    model: ScoringModel,
    body: ReplayRequest,
    population: list[Any],
    current: dict[str, dict[str, Any]],
    scoring: Scoring,
) -> dict[str, Any]:
    weights = body.risk_weights or scoring.settings.risk_weights
    if body.tier_percentiles and model.tier_cuts:
        model = _retiered(model, body.tier_percentiles, population, scoring)
    tiers, bands = 0, 0
    examples: list[dict[str, Any]] = []
    for s in population:
        after, before = score(s, model, scoring.now(), weights), current.get(s.customer_id)
        if before is None:
            continue
        moved = (after["tier"] != before["tier"], after["risk_band"] != before["risk_band"])
        tiers, bands = tiers + moved[0], bands + moved[1]
        if any(moved) and len(examples) < 100:
            examples.append(
                {
                    "customer_id": s.customer_id,
                    "tier": [before["tier"], after["tier"]],
                    "risk_band": [before["risk_band"], after["risk_band"]],
                }
            )
    return {"tier_changes": tiers, "risk_band_changes": bands, "examples": examples}


def _retiered(
    model: ScoringModel, percentiles: dict[str, float], population: list[Any], scoring: Scoring
) -> ScoringModel:
    values = [
        score(s, model, scoring.now(), scoring.settings.risk_weights)["clv"] for s in population
    ]
    cuts = {tier: float(np.quantile(values, share)) for tier, share in percentiles.items()}
    return model.model_copy(update={"tier_cuts": cuts})
