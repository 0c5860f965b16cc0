"""Notifications' HTTP API: rules, templates and previews, the delivery log, channels,
and the unsubscribe link."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from crm_shared.app.auth import public, requires
from crm_shared.app.deps import RuntimeDep
from crm_shared.app.problems import Problem
from crm_shared.events import new_event
from crm_shared.events.catalog import ConsentChanged
from crm_shared.messaging.topics import INBOUND
from crm_shared.store.outbox import OutgoingMessage
from notifications.domain.rules import Rule, RuleBody
from notifications.domain.templates import Template, TemplateError, render
from notifications.domain.unsubscribe import BadToken, read_token
from notifications.handlers.dry_run import KEEP_DAYS, dry_run
from notifications.store import outreach

router = APIRouter(prefix="/v1", tags=["notifications"])
READ = requires("notifications:read")
ADMIN = requires("notifications:admin")
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "not found"}}
SAMPLE = {
    "contact": {
        "customer_id": "c-1",
        "first_name": "Ada",
        "email": "ada@example.com",
        "time_zone": "Europe/London",
        "locale": "en-GB",
        "tags": [],
        "attributes": {},
    },
    "delivery": {"stage": "dormant", "tier": "B", "risk_band": "medium"},
    "unsubscribe_url": "https://example.com/v1/unsubscribe?token=sample",
}


class TemplateBody(BaseModel):
    channel: Literal["email", "sms", "push", "webhook", "log"]
    subject: str | None = Field(default=None, max_length=500)
    body: str = Field(min_length=1, max_length=100_000)


class PreviewBody(BaseModel):
    context: dict[str, Any] | None = Field(
        default=None, description="variables to render with; default: a sample contact"
    )


@router.get("/rules", dependencies=[READ], response_model=list[Rule])
async def list_rules(runtime: RuntimeDep) -> list[Rule]:
    """Every rule (playbook) at its current version."""
    async with runtime.db.read() as conn:
        return await outreach.all_rules(conn)


@router.get("/rules/{rule_id}", dependencies=[READ], responses=NOT_FOUND)
async def get_rule(rule_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """A rule and all its versions."""
    async with runtime.db.read() as conn:
        rule = await outreach.get_rule(conn, rule_id)
        versions = await outreach.rule_history(conn, rule_id)
    if rule is None:
        raise Problem(404, f"no rule {rule_id!r}")
    return {"rule": rule.model_dump(mode="json"), "versions": versions}


NewRuleId = Annotated[
    str, Path(pattern=r"^[\w-]{1,100}$", description="letters, digits, - and _ (at most 100)")
]


@router.put("/rules/{rule_id}", dependencies=[ADMIN], response_model=Rule)
async def put_rule(rule_id: NewRuleId, body: RuleBody, runtime: RuntimeDep) -> Rule:
    """Create a rule or make a new version of it; deliveries name the version they used."""
    async with runtime.db.transaction() as conn:
        if await outreach.get_template(conn, body.action.template) is None:
            raise Problem(
                422,
                f"action.template: no template {body.action.template!r}",
                field="action.template",
            )
        return await outreach.put_rule(conn, rule_id, body, datetime.now(UTC))


@router.post("/rules/{rule_id}/dry-run", dependencies=[ADMIN], responses=NOT_FOUND)
async def dry_run_rule(
    rule_id: str,
    request: Request,
    runtime: RuntimeDep,
    days: Annotated[int, Query(ge=1, le=KEEP_DAYS, description="how far back to look")] = 30,
    draft: RuleBody | None = None,
) -> dict[str, Any]:
    """How many messages the rule (or a draft of it, as body) would have sent, capped and
    suppressed over the last `days` of triggers; nothing is sent or stored."""
    async with runtime.db.read() as conn:
        rule = await outreach.get_rule(conn, rule_id)
        if rule is None and draft is None:
            raise Problem(404, f"no rule {rule_id!r}")
        if draft is not None:
            rule = Rule.model_validate({**draft.model_dump(), "id": rule_id, "version": 0})
        assert rule is not None
        dispatcher = request.app.state.dispatcher
        return await dry_run(
            conn, rule, now=dispatcher.now(), days=days, safeguards=dispatcher.safeguards
        )


@router.get("/templates/{template_id}", dependencies=[READ], responses=NOT_FOUND)
async def get_template(template_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.db.read() as conn:
        found = await outreach.get_template(conn, template_id)
    if found is None:
        raise Problem(404, f"no template {template_id!r}")
    return found


@router.put("/templates/{template_id}", dependencies=[ADMIN])
async def put_template(template_id: str, body: TemplateBody, runtime: RuntimeDep) -> dict[str, Any]:
    """Store a template (Jinja2, sandboxed); it must render with the sample contact."""
    _rendered(Template(template_id, body.channel, body.subject, body.body), SAMPLE)
    async with runtime.db.transaction() as conn:
        return await outreach.put_template(
            conn, template_id, body.channel, body.subject, body.body, datetime.now(UTC)
        )


@router.post("/templates/{template_id}/preview", dependencies=[ADMIN], responses=NOT_FOUND)
async def preview(template_id: str, body: PreviewBody, runtime: RuntimeDep) -> dict[str, Any]:
    """Render a template: a missing variable is a 422 naming it, never a blank."""
    async with runtime.db.read() as conn:
        found = await outreach.get_template(conn, template_id)
    if found is None:
        raise Problem(404, f"no template {template_id!r}")
    template = Template(found["id"], found["channel"], found["subject"], found["body"])
    subject, text = _rendered(template, body.context if body.context is not None else SAMPLE)
    return {"template": template_id, "version": found["version"], "subject": subject, "body": text}


def _rendered(template: Template, context: dict[str, Any]) -> tuple[str | None, str]:
    try:
        return render(template, context)
    except TemplateError as exc:
        raise Problem(422, f"template: {exc}", field="body") from None


@router.get("/deliveries", dependencies=[READ])
async def list_deliveries(
    runtime: RuntimeDep,
    status: Literal["scheduled", "held", "sending", "sent", "failed", "suppressed"] | None = None,
    rule_id: str | None = None,
    customer_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The delivery log: every message, its status and why (trigger, rule version, the
    stage, scores and consent at decision time), oldest first, paged."""
    async with runtime.db.read() as conn:
        try:
            rows, next_cursor = await outreach.list_deliveries(
                conn,
                customer_id=customer_id,
                status=status,
                rule_id=rule_id,
                limit=limit,
                cursor=cursor,
            )
        except ValueError as exc:
            raise Problem(422, str(exc), field="cursor") from None
    return {"items": rows, "next_cursor": next_cursor}


@router.get("/customers/{customer_id}/deliveries", dependencies=[READ])
async def customer_deliveries(
    customer_id: str,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Every message to one customer."""
    return await list_deliveries(runtime, customer_id=customer_id, limit=limit, cursor=cursor)


@router.get("/channels", dependencies=[READ])
async def channel_status(request: Request) -> dict[str, Any]:
    """Each channel, and for webhooks whether the endpoint is paused after failures."""
    found = request.app.state.dispatcher.channels
    return {
        "channels": [
            getattr(c, "status", lambda n=name: {"name": n})() for name, c in found.items()
        ]
    }


@router.get(
    "/unsubscribe",
    dependencies=[public("the signed link in the message authenticates the customer")],
    responses={400: {"description": "not a valid link"}},
)
async def unsubscribe(token: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """The link in every marketing message: records the opt-out at once."""
    try:
        customer_id, channel = read_token(request.app.state.settings.unsubscribe_secret, token)
    except BadToken as exc:
        raise Problem(400, str(exc), field="token") from None
    now = datetime.now(UTC)
    async with runtime.db.transaction() as conn:
        view = (await outreach.load_customers(conn, [customer_id])).get(customer_id)
        if view is None:
            raise Problem(404, "no such customer")
        granted = (view["consent"].get(channel) or {}).get("status") == "granted"
        status = "revoked" if granted else "denied"
        consent = {
            **view["consent"],
            channel: {"status": status, "source": UNSUBSCRIBE, "changed_at": now.isoformat()},
        }
        await outreach.save_customers(conn, [{**view, "consent": consent, "updated_at": now}])
        # Contacts owns consent: the opt-out goes to it as an event, and comes back canonical.
        await runtime.outbox.add(conn, [_opt_out(customer_id, channel, status, now)], now)
    runtime.wake_relay()
    return {"customer_id": customer_id, "channel": channel, "status": status}


UNSUBSCRIBE = "unsubscribe-link"


def _opt_out(customer_id: str, channel: str, status: str, now: datetime) -> OutgoingMessage:
    data = ConsentChanged(
        contact_id=customer_id,
        channel=channel,
        status=status,
        source=UNSUBSCRIBE,
        changed_at=now,
    )
    event = new_event(
        type="crm.contact.consent_changed.v1",
        source="crm/notifications",
        subject=customer_id,
        time=now,
        data=data.model_dump(mode="json"),
    )
    return OutgoingMessage(INBOUND, customer_id, event)
