"""The default playbooks: rules every business starts from, with whether they are enabled.

| rule | trigger | delay | cancelled by | enabled |
|---|---|---|---|---|
| welcome | stage -> new | none | | yes |
| care | tier -> A, while active | 1 day | | no (needs a tier model) |
| wake_up | stage -> dormant | 3 days | a purchase | yes |
| win_back | stage -> churned | none | a purchase | yes |
| churn_warning | risk band -> high, tiers A or B | none | a purchase | no |
| detractor_follow_up | feedback with NPS 0-6 | none | | yes |
| birthday | the customer's birthday in their time zone | none | | no |
"""

from __future__ import annotations

from notifications.domain.rules import Action, Conditions, RuleBody, Trigger

PURCHASE = "crm.purchase.completed.v1"

DEFAULT_PLAYBOOKS: dict[str, RuleBody] = {
    "welcome": RuleBody(
        name="Welcome a new customer",
        trigger=Trigger(kind="stage_entered", stage="new"),
        action=Action(channel="email", template="welcome"),
    ),
    "care": RuleBody(
        name="Care for a high-value active customer",
        enabled=False,
        trigger=Trigger(kind="tier", tier="A"),
        conditions=Conditions(stages=["active"]),
        action=Action(channel="email", template="care"),
        delay_seconds=86400,
    ),
    "wake_up": RuleBody(
        name="Wake a dormant customer",
        trigger=Trigger(kind="stage_entered", stage="dormant"),
        conditions=Conditions(stages=["dormant"]),  # still dormant when it is due
        action=Action(channel="email", template="wake_up"),
        delay_seconds=3 * 86400,
        cancel_on=[PURCHASE],
    ),
    "win_back": RuleBody(
        name="Win back a churned customer",
        trigger=Trigger(kind="stage_entered", stage="churned"),
        conditions=Conditions(stages=["churned"]),
        action=Action(channel="email", template="win_back"),
        cancel_on=[PURCHASE],
    ),
    "churn_warning": RuleBody(
        name="Act on a churn-risk warning",
        enabled=False,
        trigger=Trigger(kind="risk_band", band="high"),
        conditions=Conditions(tiers=["A", "B"]),
        action=Action(channel="email", template="churn_warning"),
        cancel_on=[PURCHASE],
    ),
    "detractor_follow_up": RuleBody(
        name="Follow up a detractor",
        trigger=Trigger(kind="event", event_type="crm.feedback.submitted.v1", nps_at_most=6),
        action=Action(channel="email", template="detractor_follow_up", transactional=True),
    ),
    "birthday": RuleBody(
        name="Birthday greeting",
        enabled=False,
        trigger=Trigger(kind="birthday"),
        action=Action(channel="email", template="birthday"),
    ),
}
