"""The catalogue of event types that cross service boundaries.

Customer events arrive from other systems (shops, apps, help desks, surveys); the
lifecycle, scoring and notification events are published by this system's services.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from crm_shared.events.registry import EventData, EventRegistry

CATALOG = EventRegistry()

Money = Decimal
Currency = str
Stage = Literal["prospect", "new", "active", "dormant", "churned"]


@CATALOG.register("crm.purchase.completed.v1")
class PurchaseCompleted(EventData):
    """A customer completed a purchase (an order was paid)."""

    order_id: str = Field(min_length=1, max_length=200)
    amount: Money = Field(ge=0, max_digits=18, decimal_places=4)
    currency: Currency = Field(pattern=r"^[A-Z]{3}$")
    item_count: int | None = Field(default=None, ge=0)
    channel: str | None = Field(default=None, max_length=100)


@CATALOG.register("crm.purchase.refunded.v1")
class PurchaseRefunded(EventData):
    """Money went back to the customer for (part of) an order."""

    order_id: str = Field(min_length=1, max_length=200)
    amount: Money = Field(ge=0, max_digits=18, decimal_places=4)
    currency: Currency = Field(pattern=r"^[A-Z]{3}$")
    reason: str | None = Field(default=None, max_length=500)


@CATALOG.register("crm.subscription.started.v1")
class SubscriptionStarted(EventData):
    """The customer started a subscription."""

    subscription_id: str = Field(min_length=1, max_length=200)
    plan: str | None = Field(default=None, max_length=200)


@CATALOG.register("crm.subscription.cancelled.v1")
class SubscriptionCancelled(EventData):
    """The customer cancelled a subscription."""

    subscription_id: str = Field(min_length=1, max_length=200)
    reason: str | None = Field(default=None, max_length=500)


@CATALOG.register("crm.session.started.v1")
class SessionStarted(EventData):
    """The customer logged in or visited: an engagement signal."""

    kind: Literal["login", "visit"] = "login"
    channel: str | None = Field(default=None, max_length=100)


@CATALOG.register("crm.ticket.opened.v1")
class TicketOpened(EventData):
    """The customer opened a support ticket."""

    ticket_id: str = Field(min_length=1, max_length=200)
    severity: Literal["low", "normal", "high", "urgent"] = "normal"
    topic: str | None = Field(default=None, max_length=200)


@CATALOG.register("crm.ticket.resolved.v1")
class TicketResolved(EventData):
    """A support ticket of the customer was resolved."""

    ticket_id: str = Field(min_length=1, max_length=200)
    severity: Literal["low", "normal", "high", "urgent"] | None = None


@CATALOG.register("crm.feedback.submitted.v1")
class FeedbackSubmitted(EventData):
    """Survey feedback: NPS on 0-10 and/or CSAT on 1-5."""

    nps: int | None = Field(default=None, ge=0, le=10)
    csat: int | None = Field(default=None, ge=1, le=5)
    comment: str | None = Field(default=None, max_length=5000)

    @model_validator(mode="after")
    def _some_score(self) -> FeedbackSubmitted:
        if self.nps is None and self.csat is None:
            raise ValueError("give nps (0-10), csat (1-5) or both")
        return self


@CATALOG.register("crm.outreach.responded.v1")
class OutreachResponded(EventData):
    """The customer opened, clicked or answered an outreach message."""

    delivery_id: str = Field(min_length=1, max_length=200)
    action: Literal["opened", "clicked", "replied"]


OutreachChannel = Literal["email", "sms", "push", "webhook", "log"]


@CATALOG.register("crm.outreach.sent.v1")
class OutreachSent(EventData):
    """A retention message went out to the customer."""

    delivery_id: str = Field(min_length=1, max_length=200)
    rule_id: str = Field(min_length=1, max_length=200)
    channel: OutreachChannel
    template: str | None = Field(default=None, max_length=200)


@CATALOG.register("crm.outreach.suppressed.v1")
class OutreachSuppressed(EventData):
    """A retention message was not sent, and why (no consent, capped, cancelled, ...)."""

    delivery_id: str = Field(min_length=1, max_length=200)
    rule_id: str = Field(min_length=1, max_length=200)
    channel: OutreachChannel
    reason: str = Field(min_length=1, max_length=500)


@CATALOG.register("crm.outreach.failed.v1")
class OutreachFailed(EventData):
    """Sending a retention message failed."""

    delivery_id: str = Field(min_length=1, max_length=200)
    rule_id: str = Field(min_length=1, max_length=200)
    channel: OutreachChannel
    error: str = Field(min_length=1, max_length=2000)


@CATALOG.register("crm.customer.registered.v1")
class CustomerRegistered(EventData):
    """A person became known: signed up, left details, or was imported."""

    email: str | None = Field(default=None, max_length=320)
    name: str | None = Field(default=None, max_length=300)
    birthday: date | None = None


Channel = Literal["email", "sms", "push", "phone"]
ConsentStatus = Literal["granted", "denied", "revoked"]


@CATALOG.register("crm.contact.created.v1")
class ContactCreated(EventData):
    """A contact record was created (by the API, by ingestion for an unknown customer, or
    by an import). `profile` holds the validated fields; `external_ids` are `system:id`."""

    contact_id: str
    profile: dict[str, Any]
    origin: Literal["api", "ingestion", "import"]
    external_ids: list[str] = Field(default_factory=list)
    actor: str | None = None


@CATALOG.register("crm.contact.updated.v1")
class ContactUpdated(EventData):
    """Fields of a contact changed: each field's new value (null: cleared)."""

    contact_id: str
    changes: dict[str, Any]
    actor: str | None = None


@CATALOG.register("crm.contact.identified.v1")
class ContactIdentified(EventData):
    """An id in another system (`system:id`) now names this contact. The id is personal
    data: once the contact is erased, its stored and republished copies hold null."""

    contact_id: str
    external_id: str | None


@CATALOG.register("crm.contact.consent_changed.v1")
class ConsentChanged(EventData):
    """The contact granted, denied or revoked consent to be contacted on a channel."""

    contact_id: str
    channel: Channel
    status: ConsentStatus
    source: str
    changed_at: datetime


def made_before(at: datetime, recorded: str | None) -> bool:
    """Whether a consent change made `at` predates the change on record (`changed_at` as
    ISO text): it arrived late, and the later decision stands. A time without an offset
    is taken as UTC."""
    if recorded is None:
        return False
    return _as_utc(at) < _as_utc(datetime.fromisoformat(recorded))


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@CATALOG.register("crm.contact.merged.v1")
class ContactMerged(EventData):
    """Contacts were merged into a survivor: from now on they are one customer.

    `changes` are the survivor's fields taken from the merged contacts and `previous` what
    they were before; `moved` lists, per merged contact, the identifiers that moved."""

    survivor_id: str
    merged_ids: list[str]
    changes: dict[str, Any] = Field(default_factory=dict)
    previous: dict[str, Any] = Field(default_factory=dict)
    moved: dict[str, list[str]] = Field(default_factory=dict)
    actor: str | None = None


@CATALOG.register("crm.contact.unmerged.v1")
class ContactUnmerged(EventData):
    """A merge was undone for one contact: it is a customer of its own again."""

    survivor_id: str
    restored_id: str
    changes: dict[str, Any] = Field(default_factory=dict)
    moved: list[str] = Field(default_factory=list)
    actor: str | None = None


@CATALOG.register("crm.contact.erased.v1")
class ContactErased(EventData):
    """The contact's personal data was erased (crypto-shredded) at their request: the keys
    of `erased_ids` (the contact and every contact merged into it) are destroyed. Services
    drop the personal data they hold about these ids; non-personal history stays."""

    contact_id: str
    erased_ids: list[str]
    actor: str | None = None


@CATALOG.register("crm.lifecycle.stage_changed.v1")
class StageChanged(EventData):
    """The customer moved from one lifecycle stage to another."""

    customer_id: str
    from_stage: Stage | None
    to_stage: Stage
    reason: str
    caused_by: str | None = None
    occurred_at: datetime
    policy_version: str
    correction: bool = False
    restates: str | None = Field(
        default=None,
        max_length=200,
        description="on a correction, the id of the stage change published before that it "
        "restates: the customer entered this stage either way, at another time or for "
        "another cause, so what that entry set off (a message not sent yet) now follows "
        "this one, its time included",
    )
    supersedes: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="ids of stage changes published before whose stage the corrected "
        "history no longer enters (on the first change of a corrected history; an entry "
        "it still has, at another time or for another cause, is not listed): what they set "
        "off, such as a message not sent yet, no longer applies",
    )


class CustomEvent(EventData):
    """A free-form event of the business's own (`custom.<name>`): any JSON object."""

    model_config = ConfigDict(frozen=True, extra="allow")


CATALOG.register_open("custom.", CustomEvent)


@CATALOG.register("crm.score.changed.v1")
class ScoreChanged(EventData):
    """A customer's scores changed materially: a new tier, a risk band crossed, or a move
    larger than the configured step. `reasons` says which; `previous` what was published."""

    customer_id: str
    model_version: str
    tier: str | None
    risk_band: Literal["low", "medium", "high"]
    churn_risk: float = Field(ge=0, le=1)
    clv: float
    p_alive: float = Field(ge=0, le=1)
    rfm_segment: str | None = None
    reasons: list[str]
    previous: dict[str, Any] | None = None
