"""Outreach rules and the send decision: triggers, conditions, consent, caps, quiet hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from notifications.domain.decide import Safeguards, decide, local_day, quiet_until, zone
from notifications.domain.rules import (
    Action,
    Conditions,
    Rule,
    Trigger,
    TriggerEvent,
    fires,
    holds,
    idempotency_key,
    unmet,
)

T = datetime(2026, 6, 10, 12, tzinfo=UTC)
GRANTED = {"email": {"status": "granted"}}
BERLIN = zone("Europe/Berlin", "UTC")


def rule(trigger: dict[str, Any], **changes: Any) -> Rule:
    return Rule(
        id="r1",
        version=1,
        name="r",
        trigger=Trigger.model_validate(trigger),
        action=Action(channel="email", template="t"),
        **changes,
    )


def event(kind: str, value: str | None = None, **changes: Any) -> TriggerEvent:
    return TriggerEvent("c1", "e1", kind, T, value, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("trigger", "happened", "expected"),
    [
        ({"kind": "stage_entered", "stage": "dormant"}, event("stage_entered", "dormant"), True),
        ({"kind": "stage_entered", "stage": "dormant"}, event("stage_entered", "churned"), False),
        ({"kind": "stage_left", "stage": "new"}, event("stage_left", "active", left="new"), True),
        ({"kind": "risk_band", "band": "high"}, event("risk_band", "high"), True),
        ({"kind": "tier", "tier": "A"}, event("tier", "B"), False),
        (
            {"kind": "event", "event_type": "crm.feedback.submitted.v1", "nps_at_most": 6},
            event("event", "crm.feedback.submitted.v1", nps=3),
            True,
        ),
        (
            {"kind": "event", "event_type": "crm.feedback.submitted.v1", "nps_at_most": 6},
            event("event", "crm.feedback.submitted.v1", nps=9),
            False,
        ),
        ({"kind": "birthday"}, event("birthday"), True),
    ],
)
def test_every_trigger_kind_fires_on_its_event_only(
    trigger: dict[str, Any], happened: TriggerEvent, expected: bool
) -> None:
    assert fires(rule(trigger), happened) is expected


def test_a_disabled_rule_never_fires_and_a_trigger_must_be_complete() -> None:
    assert not fires(rule({"kind": "birthday"}, enabled=False), event("birthday"))
    with pytest.raises(ValueError, match="needs `stage`"):
        Trigger(kind="stage_entered")


def test_conditions_look_at_stage_tier_band_tags_and_attributes() -> None:
    customer = {
        "stage": "active",
        "tier": "A",
        "risk_band": "low",
        "tags": ["vip"],
        "attributes": {"plan": "gold"},
    }
    assert holds(
        Conditions(
            stages=["active"], tiers=["A"], tags_any=["vip", "x"], attributes={"plan": "gold"}
        ),
        customer,
    )
    assert not holds(Conditions(tiers=["B"]), customer)
    assert not holds(Conditions(tags_any=["other"]), customer)
    assert not holds(Conditions(attributes={"plan": "silver"}), customer)
    # What the dispatcher reports when a waiting message's customer no longer qualifies.
    assert unmet(Conditions(stages=["dormant", "churned"]), customer) == (
        "stage is active, not dormant or churned"
    )
    assert unmet(Conditions(risk_bands=["high"]), customer) == "risk band is low, not high"
    assert unmet(Conditions(tags_any=["a", "b"]), customer) == "none of the tags a, b"
    assert unmet(Conditions(attributes={"plan": "silver"}), customer) == (
        "attribute plan is 'gold', not 'silver'"
    )


def test_one_message_per_rule_customer_and_triggering_event() -> None:
    r = rule({"kind": "birthday"})
    assert idempotency_key(r, event("birthday")) == idempotency_key(r, event("birthday"))


def verdict(**changes: Any) -> Any:
    options: dict[str, Any] = {
        "channel": "email",
        "transactional": False,
        "consent": GRANTED,
        "tz": BERLIN,
        "now": T,
        "due_at": T,
        "sent_today": 0,
        "sent_this_week": 0,
        "rules": Safeguards(),
    }
    options.update(changes)
    return decide(**options)


def test_no_marketing_message_without_consent() -> None:
    assert verdict(consent={}).reason == "no consent on email (not given)"
    assert verdict(consent={"email": {"status": "revoked"}}).verdict == "suppress"
    assert verdict(consent={}, transactional=True).verdict == "send"


def test_caps_count_per_local_day_and_week_and_transactional_may_bypass_them() -> None:
    assert verdict(sent_today=1).reason == "capped: 1 sent today on email"
    assert verdict(sent_this_week=3).verdict == "suppress"
    assert verdict(sent_today=1, transactional=True).verdict == "send"


def test_the_local_day_turns_at_local_midnight_not_utc() -> None:
    before = datetime(2026, 6, 10, 21, 59, tzinfo=UTC)  # 23:59 in Berlin
    after = datetime(2026, 6, 10, 22, 1, tzinfo=UTC)  # 00:01 the next day in Berlin
    assert local_day(before, BERLIN) != local_day(after, BERLIN)
    assert local_day(before, zone("UTC", "UTC")) == local_day(after, zone("UTC", "UTC"))


def test_a_message_due_in_quiet_hours_is_held_until_they_end_in_local_time() -> None:
    late = datetime(2026, 6, 10, 21, 30, tzinfo=UTC)  # 23:30 in Berlin
    decision = verdict(now=late, due_at=late)
    assert decision.verdict == "hold"
    assert decision.until == datetime(2026, 6, 11, 8, 0, tzinfo=BERLIN)
    early = datetime(2026, 6, 11, 4, 0, tzinfo=UTC)  # 06:00 in Berlin
    assert quiet_until(early, BERLIN, Safeguards()) == datetime(2026, 6, 11, 8, tzinfo=BERLIN)
    assert quiet_until(T, BERLIN, Safeguards()) is None  # 14:00 in Berlin


def test_a_message_held_longer_than_allowed_is_suppressed() -> None:
    night = datetime(2026, 6, 10, 21, 30, tzinfo=UTC)  # 23:30 in Berlin: 8.5 h to 08:00
    strict = Safeguards(max_hold=timedelta(hours=4))
    decision = verdict(now=night, due_at=night - timedelta(hours=30), rules=strict)
    assert (decision.verdict, decision.reason) == ("suppress", "quiet hours expired")
    assert verdict(now=night, due_at=night - timedelta(days=20)).verdict == "hold"


def test_a_message_long_overdue_is_stale_not_sent() -> None:
    decision = verdict(due_at=T - timedelta(days=45))
    assert (decision.verdict, decision.reason) == ("suppress", "stale: due 45 days ago")
