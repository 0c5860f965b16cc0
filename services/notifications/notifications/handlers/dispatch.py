"""The dispatcher: takes due messages, decides (the rule's conditions still met, consent,
caps, quiet hours), and sends.

A message goes out only if the customer still meets the conditions of the rule version
that scheduled it when it is due: a wake-up mail (for dormant customers) is not sent to a
customer who bought in the meantime, whichever of the purchase and the dormancy this
service took in first.

A run decides its due messages together (one transaction, so caps count what the run
sends), then takes them one at a time. Just before a message is sent, it is claimed in a
transaction of its own: it must still be waiting (an event the consumer took in meanwhile
may have cancelled it), and the customer's consent, the rule's conditions and the quiet
hours are checked again as they stand then, since a run can take minutes against a slow
channel. The claim marks it `sending`; it is then sent and marked `sent` or `failed`.
A process that stops between the two leaves that one message `sending`: at start-up it is
reported as failed with an unknown outcome and not sent again, so a restart never sends
twice. The messages the run had not reached are still waiting and go in the next run.
A message that cannot be built or sent for a reason of its own (a template that fails on
this customer's values, say) fails alone; the run goes on with the others.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from crm_shared import tracecontext
from crm_shared.messaging.topics import OUTREACH
from crm_shared.store.db import Database
from crm_shared.store.outbox import Outbox, OutgoingMessage
from notifications.channels.base import Channel, Message
from notifications.domain.decide import (
    Decision,
    Safeguards,
    decide,
    local_day,
    week_start,
    zone,
)
from notifications.domain.rules import Conditions, unmet
from notifications.domain.templates import Template, TemplateError, render
from notifications.handlers.messages import delivery_trace, outreach_event, suppressed_message
from notifications.store import outreach

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Outcome:
    sent: int = 0
    held: int = 0
    suppressed: int = 0
    failed: int = 0


class Dispatcher:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        channels: Mapping[str, Channel],
        safeguards: Safeguards,
        now: Callable[[], datetime],
        *,
        unsubscribe_url: Callable[[str], str],
        batch: int = 100,
    ) -> None:
        self.db, self.outbox, self.channels = db, outbox, channels
        self.safeguards = safeguards
        self.now = now
        self.unsubscribe_url = unsubscribe_url
        self.batch = batch
        self._conditions: dict[tuple[str, int], Conditions] = {}  # rule versions never change

    async def recover(self) -> int:
        """Report the messages a stopped process left between 'sending' and its outcome."""
        async with self.db.transaction() as conn:
            stuck = await outreach.interrupted(conn)
            error = "interrupted while sending: outcome unknown; not sent again"
            for delivery in stuck:
                await self._finish(conn, delivery, "failed", error=error)
        for delivery in stuck:
            log.error(
                "message outcome unknown after a restart",
                extra={"delivery_id": delivery["id"], "customer_id": delivery["customer_id"]},
            )
        return len(stuck)

    async def run_once(self) -> Outcome:
        """Decide every due message; send the ones that may go; return what happened."""
        now = self.now()
        async with self.db.transaction() as conn:
            due = await outreach.due(conn, now, self.batch)
            ids = {d["customer_id"] for d in due}
            customers = await outreach.load_customers(conn, ids)
            whom = [(d, customers.get(d["customer_id"]) or {}) for d in due]
            zones = [zone(c.get("time_zone"), self.safeguards.default_time_zone) for _, c in whom]
            days = [local_day(now, tz) for tz in zones]
            since = min((week_start(day) for day in days), default=None)
            versions = {(d["rule_id"], d["rule_version"]) for d in due} - self._conditions.keys()
            self._conditions.update(await outreach.conditions_of(conn, versions))
            sent = await outreach.sent_by_day(conn, ids, since=since)
            suppressed: list[tuple[dict[str, Any], str | None]] = []
            decided = [
                await self._decide(conn, d, customer, tz, today, sent, now, suppressed)
                for (d, customer), tz, today in zip(whom, zones, days, strict=True)
            ]
            await self._suppress(conn, suppressed, now)
        counts = {"sent": 0, "failed": 0, "held": 0, "suppressed": 0, "gone": 0}
        for delivery in decided:
            if delivery is not None:
                counts[await self._claim_and_send(delivery)] += 1
        return Outcome(
            sent=counts["sent"],
            failed=counts["failed"],
            suppressed=sum(1 for d in due if d["status"] == "suppressed") + counts["suppressed"],
            held=sum(1 for d in due if d["status"] == "held") + counts["held"],
        )

    async def _claim_and_send(self, delivery: dict[str, Any]) -> str:
        """Claim one decided message and send it; what became of it."""
        async with self.db.transaction() as conn:
            claimed = await self._claim(conn, delivery)
        if claimed != "sending":
            return claimed
        return await self._send(delivery)

    async def _claim(self, conn: Any, delivery: dict[str, Any]) -> str:
        """Check the message again as things stand now and mark it `sending`; or hold or
        suppress it, or leave it (`gone`: it is no longer waiting)."""
        now = self.now()
        customer = (await outreach.load_customers(conn, [delivery["customer_id"]])).get(
            delivery["customer_id"]
        ) or {}
        tz = zone(customer.get("time_zone"), self.safeguards.default_time_zone)
        today = local_day(now, tz)
        decision = self._verdict(delivery, customer, tz, now, delivery["counted"])
        waiting = ("scheduled", "held")
        if decision.verdict == "suppress":
            if not await outreach.take(conn, delivery["id"], waiting, now, status="suppressed"):
                return "gone"
            await self._suppress(conn, [(delivery, decision.reason)], now)
            return "suppressed"
        if decision.verdict == "hold":
            values = {"reason": decision.reason, "due_at": decision.until}
            taken = await outreach.take(conn, delivery["id"], waiting, now, status="held", **values)
            return "held" if taken else "gone"
        taken = await outreach.take(
            conn,
            delivery["id"],
            waiting,
            now,
            status="sending",
            reason=None,  # while sending, a reason is a cancellation asked for meanwhile
            attempts=delivery["attempts"] + 1,
            local_date=today.isoformat(),
        )
        if not taken:
            return "gone"
        delivery["customer"] = customer
        return "sending"

    async def _decide(
        self,
        conn: Any,
        delivery: dict[str, Any],
        customer: dict[str, Any],
        tz: ZoneInfo,
        today: date,
        sent: outreach.SentByDay,
        now: datetime,
        suppressed: list[tuple[dict[str, Any], str | None]],
    ) -> dict[str, Any] | None:
        """Decide one due message. `sent`: messages sent or sending by customer, channel and
        local day, read once for the run; a message this run sends is added to it, so the
        next one of the same customer counts it (as a query per message did). A message
        suppressed goes to `suppressed` (with the reason), for `_suppress`."""
        mine = sent.get((delivery["customer_id"], delivery["channel"]), {})
        counted = (
            sum(n for day, n in mine.items() if day >= today.isoformat()),
            sum(n for day, n in mine.items() if day >= week_start(today).isoformat()),
        )
        decision = self._verdict(delivery, customer, tz, now, counted)
        if decision.verdict == "suppress":
            delivery["status"] = "suppressed"
            suppressed.append((delivery, decision.reason))
            return None
        if decision.verdict == "hold":
            delivery["status"] = "held"
            await outreach.set_status(
                conn,
                delivery["id"],
                now,
                status="held",
                reason=decision.reason,
                due_at=decision.until,
            )
            return None
        # It may go: counted for the caps of the run's next messages, claimed when its
        # turn comes (`_claim`), with the counts it was decided on.
        mine = sent.setdefault((delivery["customer_id"], delivery["channel"]), {})
        mine[today.isoformat()] = mine.get(today.isoformat(), 0) + 1
        return {**delivery, "customer": customer, "counted": counted}

    def _verdict(
        self,
        delivery: dict[str, Any],
        customer: dict[str, Any],
        tz: ZoneInfo,
        now: datetime,
        counted: tuple[int, int],
    ) -> Decision:
        """Whether the message goes now: the rule version's conditions against the customer,
        then consent, caps (`counted`: sent today and this week) and quiet hours."""
        conditions = self._conditions.get((delivery["rule_id"], delivery["rule_version"]))
        unmet_now = unmet(conditions, customer) if conditions is not None else None
        if unmet_now is not None:
            return Decision("suppress", f"no longer meets the rule's conditions: {unmet_now}")
        return decide(
            channel=delivery["channel"],
            transactional=delivery["transactional"],
            consent=customer.get("consent") or {},
            tz=tz,
            now=now,
            due_at=delivery["due_at"],
            sent_today=counted[0],
            sent_this_week=counted[1],
            rules=self.safeguards,
        )

    async def _send(self, delivery: dict[str, Any]) -> str:
        # Sent in the trigger's trace: the channel's log lines carry it.
        with tracecontext.use(delivery_trace(delivery) or tracecontext.current()):
            return await self._send_in_trace(delivery)

    async def _send_in_trace(self, delivery: dict[str, Any]) -> str:
        try:
            message = await self._message(delivery)
            result = await self.channels[delivery["channel"]].send(message)
        except Exception as exc:  # this message's own failure: the run goes on
            error = (
                str(exc) if isinstance(exc, TemplateError | KeyError | ValueError) else repr(exc)
            )
            if not isinstance(exc, TemplateError | KeyError | ValueError):
                log.exception(
                    "message could not be built or sent",
                    extra={"delivery_id": delivery["id"], "channel": delivery["channel"]},
                )
            async with self.db.transaction() as conn:
                await self._finish(conn, delivery, "failed", error=error)
            return "failed"
        async with self.db.transaction() as conn:
            if result.ok:
                await self._finish(conn, delivery, "sent")
                return "sent"
            cancelled = await outreach.cancel_asked(conn, delivery["id"])
            if cancelled is not None:  # an event taken in during the attempt cancels it
                await self._finish(conn, delivery, "suppressed", reason=cancelled)
                return "suppressed"
            paused = _paused_until(self.channels[delivery["channel"]])
            if paused is not None and result.retryable:
                # The endpoint is resting after failures: wait for it without using up the
                # message's attempts.
                await outreach.set_status(
                    conn,
                    delivery["id"],
                    self.now(),
                    status="scheduled",
                    error=result.detail,
                    due_at=paused,
                    attempts=delivery["attempts"],
                )
                return "failed"
            if result.retryable and delivery["attempts"] + 1 < MAX_ATTEMPTS:
                await self._retry_later(conn, delivery, result.detail)
                return "failed"
            await self._finish(conn, delivery, "failed", error=result.detail)
        return "failed"

    async def _message(self, delivery: dict[str, Any]) -> Message:
        customer = delivery["customer"]
        async with self.db.read() as conn:
            stored = await outreach.get_template(conn, delivery["template"])
        if stored is None:
            raise ValueError(f"no template {delivery['template']!r}")
        template = Template(stored["id"], stored["channel"], stored["subject"], stored["body"])
        unsubscribe = self.unsubscribe_url(delivery["customer_id"])
        subject, body = render(
            template,
            {"contact": customer, "delivery": delivery["context"], "unsubscribe_url": unsubscribe},
        )
        to = _address(delivery["channel"], customer)
        return Message(
            delivery_id=delivery["id"],
            to=to,
            subject=subject,
            body=body,
            channel=delivery["channel"],
            metadata={"unsubscribe_url": unsubscribe, "rule_id": delivery["rule_id"]},
        )

    async def _retry_later(self, conn: Any, delivery: dict[str, Any], detail: str) -> None:
        # Exponential backoff with jitter, so a recovering endpoint is not hit all at once.
        delay = min(3600.0, 30.0 * 2 ** delivery["attempts"]) * (0.5 + random.random() / 2)
        await outreach.set_status(
            conn,
            delivery["id"],
            self.now(),
            status="scheduled",
            error=detail,
            due_at=self.now() + timedelta(seconds=delay),
        )

    async def _suppress(
        self, conn: Any, suppressed: list[tuple[dict[str, Any], str | None]], now: datetime
    ) -> None:
        """What `_finish` does for each suppressed message, for all of them in one statement
        and one outbox insert (a run decides up to a batch of messages)."""
        await outreach.suppress(
            conn, [(d["id"], reason) for d, reason in suppressed], now, clear_error=True
        )
        messages = [suppressed_message(d, reason, at=now) for d, reason in suppressed]
        await self.outbox.add(conn, messages, now)

    async def _finish(
        self,
        conn: Any,
        delivery: dict[str, Any],
        outcome: str,
        *,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        now = self.now()
        extra = {"sent_at": now} if outcome == "sent" else {}
        await outreach.set_status(
            conn, delivery["id"], now, status=outcome, reason=reason, error=error, **extra
        )
        event = outreach_event(delivery, outcome, reason=reason, error=error, at=now)  # type: ignore[arg-type]
        await self.outbox.add(
            conn, [OutgoingMessage(OUTREACH, delivery["customer_id"], event)], now
        )


def _address(channel: str, customer: dict[str, Any]) -> str:
    address = customer.get("phone") if channel == "sms" else customer.get("email")
    if channel in ("webhook", "push", "log"):
        return str(customer.get("customer_id") or "")
    if not address:
        raise ValueError(
            f"no {'phone number' if channel == 'sms' else 'email address'} known for this customer"
        )
    return str(address)


def _paused_until(channel: Channel) -> datetime | None:
    status = getattr(channel, "status", None)
    until = status().get("paused_until") if callable(status) else None
    return datetime.fromisoformat(until) if isinstance(until, str) else None
