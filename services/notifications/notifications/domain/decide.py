"""Whether a due message goes out now: consent, frequency caps and quiet hours, decided in
the customer's own time zone. Pure: the clock and the counts are passed in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["send", "hold", "suppress"]
# The consent each channel needs for marketing messages (webhooks go to the business's own
# systems, not to the customer).
CONSENT_FOR = {"email": "email", "sms": "sms", "push": "push", "log": "email"}


class Safeguards(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    per_day: int = Field(default=1, ge=0)
    per_week: int = Field(default=3, ge=0)
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    max_hold: timedelta = timedelta(hours=36)
    # Replays and backfills must not mail customers about the distant past.
    max_overdue: timedelta = timedelta(days=30)
    transactional_bypasses_caps: bool = True
    default_time_zone: str = "UTC"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str | None = None
    until: datetime | None = None


def zone(name: str | None, fallback: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or fallback)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(fallback)


def local_day(moment: datetime, tz: ZoneInfo) -> date:
    return moment.astimezone(tz).date()


def week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def decide(
    *,
    channel: str,
    transactional: bool,
    consent: dict[str, Any],
    tz: ZoneInfo,
    now: datetime,
    due_at: datetime,
    sent_today: int,
    sent_this_week: int,
    rules: Safeguards,
) -> Decision:
    """Send, hold until the quiet hours end, or suppress with the reason."""
    if now - due_at > rules.max_overdue:
        return Decision("suppress", f"stale: due {(now - due_at).days} days ago")
    needed = CONSENT_FOR.get(channel)
    if not transactional and needed is not None:
        status = (consent.get(needed) or {}).get("status")
        if status != "granted":
            return Decision("suppress", f"no consent on {needed} ({status or 'not given'})")
    capped = not (transactional and rules.transactional_bypasses_caps)
    if capped and sent_today >= rules.per_day:
        return Decision("suppress", f"capped: {sent_today} sent today on {channel}")
    if capped and sent_this_week >= rules.per_week:
        return Decision("suppress", f"capped: {sent_this_week} sent this week on {channel}")
    opens = quiet_until(now, tz, rules)
    if opens is None:
        return Decision("send")
    # A message is held at most `max_hold` from when it could first have gone out.
    if opens - max(due_at, now) > rules.max_hold:
        return Decision("suppress", "quiet hours expired")
    return Decision("hold", "quiet hours", opens)


def quiet_until(now: datetime, tz: ZoneInfo, rules: Safeguards) -> datetime | None:
    """When the quiet hours around `now` end (None when it is not quiet now)."""
    local = now.astimezone(tz)
    start, end = rules.quiet_start, rules.quiet_end
    clock = local.time()
    overnight = start > end
    quiet = (clock >= start or clock < end) if overnight else (start <= clock < end)
    if not quiet:
        return None
    day = local.date() + timedelta(days=1) if overnight and clock >= start else local.date()
    return datetime.combine(day, end, tzinfo=tz)
