"""Outreach rules (playbooks) as data: a trigger, conditions, an action, a delay, and what
cancels a message before it goes out. Rules are versioned; every delivery names the rule
version that decided it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TriggerKind = Literal["stage_entered", "stage_left", "risk_band", "tier", "event", "birthday"]
ChannelName = Literal["email", "sms", "push", "webhook", "log"]


def _document_needs(schema: dict[str, Any]) -> None:
    """State NEEDS in the JSON schema too, so clients (and fuzzers) see the rule."""
    schema["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": {"properties": {field: {"not": {"type": "null"}}}, "required": [field]},
        }
        for kind, field in NEEDS.items()
    ]


class Trigger(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_document_needs)

    kind: TriggerKind
    stage: str | None = None  # stage_entered / stage_left
    band: Literal["low", "medium", "high"] | None = None  # risk_band: entered this band
    tier: str | None = None  # tier: entered this tier
    event_type: str | None = None  # event: this customer event type
    nps_at_most: int | None = Field(default=None, ge=0, le=10)  # event: detractor feedback

    @model_validator(mode="after")
    def _complete(self) -> Trigger:
        field = NEEDS.get(self.kind)
        if field is not None and getattr(self, field) is None:
            raise ValueError(f"a {self.kind} trigger needs `{field}`")
        return self


NEEDS = {
    "stage_entered": "stage",
    "stage_left": "stage",
    "risk_band": "band",
    "tier": "tier",
    "event": "event_type",
}


class Conditions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    stages: list[str] | None = None
    tiers: list[str] | None = None
    risk_bands: list[str] | None = None
    tags_any: list[str] | None = None
    attributes: dict[str, str | int | float | bool] | None = None


class Action(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: ChannelName
    template: str = Field(min_length=1, max_length=100)
    transactional: bool = False  # transactional messages may bypass the frequency caps


class RuleBody(BaseModel):
    """What a client sends to create or change a rule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    enabled: bool = True
    trigger: Trigger
    conditions: Conditions = Conditions()
    action: Action
    delay_seconds: int = Field(default=0, ge=0, le=90 * 86400)
    cancel_on: list[str] = Field(
        default_factory=list,
        description="event types that cancel a scheduled message of this rule, e.g. a purchase",
    )


class Rule(RuleBody):
    id: str
    version: int


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """Something that happened to a customer, in the terms rules are written in."""

    customer_id: str
    event_id: str
    kind: TriggerKind
    time: datetime
    value: str | None = None  # the stage, band, tier or event type
    left: str | None = None  # stage_left: the stage left
    nps: int | None = None


def fires(rule: Rule, event: TriggerEvent) -> bool:
    """Whether the rule's trigger is this event (conditions are checked separately)."""
    t = rule.trigger
    if not rule.enabled or t.kind != event.kind:
        return False
    if t.kind == "stage_entered":
        return event.value == t.stage
    if t.kind == "stage_left":
        return event.left == t.stage
    if t.kind in ("risk_band", "tier"):
        return event.value == (t.band if t.kind == "risk_band" else t.tier)
    if t.kind == "event":
        if event.value != t.event_type:
            return False
        return t.nps_at_most is None or (event.nps is not None and event.nps <= t.nps_at_most)
    return True  # birthday


def holds(conditions: Conditions, customer: dict[str, Any]) -> bool:
    """Whether the customer (stage, tier, band, tags, attributes) meets the conditions."""
    return unmet(conditions, customer) is None


def unmet(conditions: Conditions, customer: dict[str, Any]) -> str | None:
    """The first condition the customer does not meet, in words (None: all are met)."""
    pairs = (
        ("stage", conditions.stages, customer.get("stage")),
        ("tier", conditions.tiers, customer.get("tier")),
        ("risk band", conditions.risk_bands, customer.get("risk_band")),
    )
    for name, allowed, value in pairs:
        if allowed is not None and value not in allowed:
            return f"{name} is {value}, not {' or '.join(allowed)}"
    tags = set(customer.get("tags") or [])
    if conditions.tags_any is not None and not tags & set(conditions.tags_any):
        return f"none of the tags {', '.join(conditions.tags_any)}"
    attributes = customer.get("attributes") or {}
    for key, wanted in (conditions.attributes or {}).items():
        if attributes.get(key) != wanted:
            return f"attribute {key} is {attributes.get(key)!r}, not {wanted!r}"
    return None


def idempotency_key(rule: Rule, event: TriggerEvent) -> str:
    """One message per rule, customer and triggering event, however often it is delivered."""
    return f"{rule.id}:{event.customer_id}:{event.event_id}"
