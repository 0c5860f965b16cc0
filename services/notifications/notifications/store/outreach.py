"""Reads and writes of notifications' tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Select, Text, and_, bindparam, cast, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter

from crm_shared.store.sql import upsert
from notifications.domain.rules import Conditions, Rule, RuleBody
from notifications.store.tables import customers, deliveries, rule_versions, rules, templates

CUSTOMER_DEFAULTS: dict[str, Any] = {
    "email": None,
    "phone": None,
    "first_name": None,
    "time_zone": None,
    "locale": None,
    "birthday": None,
    "tags": [],
    "attributes": {},
    "consent": {},
    "stage": None,
    "tier": None,
    "risk_band": None,
    "churn_risk": None,
    "clv": None,
    "merged_into": None,
    "erased_at": None,
}


# The statements every consumed batch runs, built once: building a statement and its cache
# key costs more than a small batch's lookup.
_IDS: BindParameter[list[str]] = bindparam("ids", expanding=True)
_CUSTOMERS = select(customers).where(customers.c.customer_id.in_(_IDS))
_ACTIVE_RULES = select(rules).where(rules.c.enabled.is_(True))
# What cancelling needs, and the context as stored (JSON text), parsed only for the messages
# cancelled. The status is matched as `status || ''`, which no index serves: without table
# statistics SQLite otherwise read the (status, due_at) index, i.e. every waiting message of
# every customer, for each consumed batch (19-25 ms a batch with 22,000 waiting against
# 2.9 ms by the customer index, measured on a copy of the CDNOW replay's database).
_CANCELLABLE = (
    select(
        *(
            deliveries.c[name]
            for name in (
                "id",
                "status",
                "customer_id",
                "rule_id",
                "channel",
                "template",
                "cancel_on",
                "due_at",
                "trigger_event_id",
                "trigger_kind",
                "trigger_time",
            )
        ),
        cast(deliveries.c.context, Text).label("context_json"),
    )
    .where(
        deliveries.c.customer_id.in_(_IDS),
        deliveries.c.status.concat("").in_(("scheduled", "held", "sending")),
    )
    .order_by(deliveries.c.customer_id, deliveries.c.created_at, deliveries.c.id)
)
# On PostgreSQL the rows stay locked until the consumer's transaction ends: a dispatcher
# cannot claim a message the consumer is cancelling, nor finish one it asks to cancel.
_CANCELLABLE_LOCKING = _CANCELLABLE.with_for_update()
_DUE = (
    select(deliveries)
    .where(deliveries.c.status == bindparam("status"), deliveries.c.due_at <= bindparam("now"))
    .order_by(deliveries.c.due_at)
    .limit(bindparam("limit"))
)
_DUE_LOCKING = _DUE.with_for_update(skip_locked=True)


async def load_customers(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = list(set(ids))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), 1000):
        result = await conn.execute(_CUSTOMERS, {"ids": wanted[start : start + 1000]})
        names = list(result.keys())  # zipped with each row: Row._mapping costs more per row
        for row in result:
            view = dict(zip(names, row, strict=True))
            found[view["customer_id"]] = view
    return found


def blank_customer(customer_id: str, now: datetime) -> dict[str, Any]:
    return {"customer_id": customer_id, **CUSTOMER_DEFAULTS, "updated_at": now}


async def save_customers(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await upsert(conn, customers, list(rows), key=["customer_id"])


PERSONAL: tuple[str, ...] = ("email", "phone", "first_name", "time_zone", "locale", "birthday")
PERSONAL += ("tags", "attributes", "consent")
ERASED_REASON = "the contact was erased"


async def forget_customers(conn: AsyncConnection, ids: Sequence[str], now: datetime) -> int:
    """Drop what is kept of erased contacts: their personal fields (and consent: nothing is
    sent to them again), the variables rendered into their messages and send errors, which
    can name an address; messages still waiting are suppressed. Returns how many were."""
    if not ids:
        return 0
    blank = {name: CUSTOMER_DEFAULTS[name] for name in PERSONAL}
    await conn.execute(
        update(customers)
        .where(customers.c.customer_id.in_(ids))
        .values(**blank, updated_at=now, erased_at=now)
    )
    waiting = await conn.execute(
        update(deliveries)
        .where(deliveries.c.customer_id.in_(ids), deliveries.c.status.in_(("scheduled", "held")))
        .values(status="suppressed", reason=ERASED_REASON, updated_at=now)
    )
    await conn.execute(
        update(deliveries).where(deliveries.c.customer_id.in_(ids)).values(context={}, error=None)
    )
    return int(waiting.rowcount)


# Parsed rules by database, id, version and when it was written: a version's body never
# changes (every change of a rule, enabling it included, makes a new version), and every
# consumed batch with triggers asks for the active ones.
_parsed: dict[tuple[object, str, int, datetime], Rule] = {}


async def active_rules(conn: AsyncConnection) -> list[Rule]:
    found = []
    for row in await conn.execute(_ACTIVE_RULES):
        key = (conn.engine.url, row.id, row.version, row.updated_at)
        rule = _parsed.get(key)
        if rule is None:
            if len(_parsed) >= 1000:
                _parsed.clear()
            rule = _parsed[key] = rule_of(row._mapping)
        found.append(rule)
    return found


def rule_of(row: Any) -> Rule:
    return Rule.model_validate({**row["body"], "id": row["id"], "version": row["version"]})


async def conditions_of(
    conn: AsyncConnection, versions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], Conditions]:
    """The conditions of these rule versions (a version never changes)."""
    found: dict[tuple[str, int], Conditions] = {}
    for rule_id, version in set(versions):
        row = (
            await conn.execute(
                select(rule_versions.c.body).where(
                    rule_versions.c.rule_id == rule_id, rule_versions.c.version == version
                )
            )
        ).first()
        if row is not None:
            found[(rule_id, version)] = RuleBody.model_validate(row.body).conditions
    return found


async def all_rules(conn: AsyncConnection) -> list[Rule]:
    return [rule_of(r._mapping) for r in await conn.execute(select(rules).order_by(rules.c.id))]


async def get_rule(conn: AsyncConnection, rule_id: str) -> Rule | None:
    row = (await conn.execute(select(rules).where(rules.c.id == rule_id))).first()
    return rule_of(row._mapping) if row else None


async def put_rule(conn: AsyncConnection, rule_id: str, body: RuleBody, now: datetime) -> Rule:
    """Create the rule or make a new version of it; every version is kept."""
    current = await get_rule(conn, rule_id)
    version = 1 if current is None else current.version + 1
    data = body.model_dump(mode="json")
    await upsert(
        conn,
        rules,
        [
            {
                "id": rule_id,
                "version": version,
                "enabled": body.enabled,
                "body": data,
                "updated_at": now,
            }
        ],
        key=["id"],
    )
    await conn.execute(
        rule_versions.insert().values(rule_id=rule_id, version=version, body=data, created_at=now)
    )
    return Rule.model_validate({**data, "id": rule_id, "version": version})


async def rule_history(conn: AsyncConnection, rule_id: str) -> list[dict[str, Any]]:
    query = (
        select(rule_versions)
        .where(rule_versions.c.rule_id == rule_id)
        .order_by(rule_versions.c.version)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def get_template(conn: AsyncConnection, template_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(templates).where(templates.c.id == template_id))).first()
    return dict(row._mapping) if row else None


async def put_template(
    conn: AsyncConnection,
    template_id: str,
    channel: str,
    subject: str | None,
    body: str,
    now: datetime,
) -> dict[str, Any]:
    current = await get_template(conn, template_id)
    row = {
        "id": template_id,
        "version": 1 if current is None else current["version"] + 1,
        "channel": channel,
        "subject": subject,
        "body": body,
        "updated_at": now,
    }
    await upsert(conn, templates, [row], key=["id"])
    return row


async def add_deliveries(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Schedule messages; one already scheduled for the same key is kept as it is."""
    if rows:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(deliveries).on_conflict_do_nothing(
            index_elements=["idempotency_key"]
        )
        await conn.execute(statement, list(rows))


async def cancellable(conn: AsyncConnection, customer_ids: Iterable[str]) -> list[dict[str, Any]]:
    """These customers' messages not sent yet (waiting, or with a channel now), by customer
    in the order they were made: what cancelling one needs, its context still as JSON text
    (`context_json`)."""
    wanted = sorted(set(customer_ids))
    found: list[dict[str, Any]] = []
    query = _CANCELLABLE_LOCKING if conn.dialect.name == "postgresql" else _CANCELLABLE
    for start in range(0, len(wanted), 1000):
        rows = await conn.execute(query, {"ids": wanted[start : start + 1000]})
        found += [dict(r._mapping) for r in rows]
    return found


async def due(conn: AsyncConnection, now: datetime, limit: int) -> list[dict[str, Any]]:
    """The `limit` messages due longest, scheduled or held. One query per status: each
    reads the index on (status, due_at) in order and stops at `limit`, where one query for
    both statuses read every due message and sorted them all (a backlog made each run
    cost as much as the whole backlog). On PostgreSQL up to twice `limit` rows stay locked
    until the caller's transaction ends."""
    found: list[dict[str, Any]] = []
    # On PostgreSQL replicas take different messages.
    query = _DUE_LOCKING if conn.dialect.name == "postgresql" else _DUE
    for status in ("scheduled", "held"):
        rows = await conn.execute(query, {"status": status, "now": now, "limit": limit})
        found += [dict(r._mapping) for r in rows]
    return sorted(found, key=lambda d: d["due_at"])[:limit]


async def take(
    conn: AsyncConnection,
    delivery_id: str,
    statuses: Sequence[str],
    now: datetime,
    **values: Any,
) -> bool:
    """Set these values on the message if it is in one of `statuses`; whether it was (a
    message another writer moved on meanwhile is left as it is)."""
    result = await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.status.in_(statuses))
        .values(updated_at=now, **values)
    )
    return bool(result.rowcount)


async def set_status(conn: AsyncConnection, delivery_id: str, now: datetime, **values: Any) -> None:
    await conn.execute(
        update(deliveries).where(deliveries.c.id == delivery_id).values(updated_at=now, **values)
    )


_SUPPRESS = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("delivery_id"))
    .values(status="suppressed", reason=bindparam("why"), updated_at=bindparam("at"))
)
_SUPPRESS_CLEARING = _SUPPRESS.values(error=None)


async def suppress(
    conn: AsyncConnection,
    reasons: Sequence[tuple[str, str | None]],
    now: datetime,
    *,
    clear_error: bool = False,
) -> None:
    """Suppress these messages (id, reason), in one statement; `clear_error` also clears
    the error an earlier attempt left."""
    if reasons:
        rows = [{"delivery_id": i, "why": why, "at": now} for i, why in reasons]
        await conn.execute(_SUPPRESS_CLEARING if clear_error else _SUPPRESS, rows)


_ASK_CANCEL = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("delivery_id"), deliveries.c.status == "sending")
    .values(reason=bindparam("why"), updated_at=bindparam("at"))
)


async def ask_to_cancel(
    conn: AsyncConnection, reasons: Sequence[tuple[str, str]], now: datetime
) -> None:
    """Note on messages being sent (id, reason) that they are cancelled should this attempt
    fail: the dispatcher then suppresses them instead of trying again."""
    if reasons:
        rows = [{"delivery_id": i, "why": why, "at": now} for i, why in reasons]
        await conn.execute(_ASK_CANCEL, rows)


async def cancel_asked(conn: AsyncConnection, delivery_id: str) -> str | None:
    """Why a message being sent is to be cancelled, if it is."""
    query = select(deliveries.c.reason).where(
        deliveries.c.id == delivery_id, deliveries.c.status == "sending"
    )
    reason: str | None = (await conn.execute(query)).scalar()
    return reason


async def deliveries_of(conn: AsyncConnection, customer_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Every message of these customers (id, customer, status, reason, trigger), read by the
    customer index."""
    wanted = sorted(set(customer_ids))
    columns = ("id", "customer_id", "status", "reason", "trigger_event_id")
    found: list[dict[str, Any]] = []
    for start in range(0, len(wanted), 1000):
        query = select(*(deliveries.c[c] for c in columns)).where(
            deliveries.c.customer_id.in_(wanted[start : start + 1000])
        )
        found += [dict(r._mapping) for r in await conn.execute(query)]
    return found


async def reschedule(conn: AsyncConnection, ids: Sequence[str], now: datetime) -> None:
    """Suppressed messages waiting again (due when they were), their reason cleared."""
    for start in range(0, len(ids), 1000):
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(ids[start : start + 1000]))
            .values(status="scheduled", reason=None, updated_at=now)
        )


_MOVE = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("delivery_id"))
    .values(
        due_at=bindparam("due"),
        trigger_event_id=bindparam("trigger"),
        trigger_time=bindparam("trigger_time"),
        context=bindparam("context", type_=deliveries.c.context.type),
        updated_at=bindparam("at"),
    )
)


async def move(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Give these messages another trigger (its id and time), due time and context, in one
    statement: each row has `delivery_id`, `trigger`, `trigger_time`, `due`, `context`, `at`."""
    if rows:
        await conn.execute(_MOVE, list(rows))


# (customer id, channel) -> local date (ISO) -> messages sent or sending that day
SentByDay = dict[tuple[str, str], dict[str, int]]


async def sent_by_day(
    conn: AsyncConnection, customer_ids: Iterable[str], *, since: date | None
) -> SentByDay:
    """What caps count: these customers' messages sent (or being sent) on each local day
    from `since` on, by channel."""
    wanted = sorted(set(customer_ids))
    found: SentByDay = {}
    if since is None:
        return found
    for start in range(0, len(wanted), 1000):
        query = sent_query(wanted[start : start + 1000], since)
        for customer_id, channel, day, count in await conn.execute(query):
            found.setdefault((customer_id, channel), {})[day] = int(count)
    return found


def sent_query(customer_ids: list[str], since: date) -> Select[Any]:
    """Messages sent or being sent to these customers from `since` on, counted by customer,
    channel and local day."""
    return (
        select(
            deliveries.c.customer_id, deliveries.c.channel, deliveries.c.local_date, func.count()
        )
        .where(
            deliveries.c.customer_id.in_(customer_ids),
            # No index for the status (see _CANCELLABLE): by the (status, due_at) one, SQLite
            # read every message ever sent, for each run of the dispatcher.
            deliveries.c.status.concat("").in_(("sent", "sending")),
            deliveries.c.local_date >= since.isoformat(),
        )
        .group_by(deliveries.c.customer_id, deliveries.c.channel, deliveries.c.local_date)
    )


async def interrupted(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Messages caught between 'sending' and its outcome (the process stopped)."""
    rows = await conn.execute(select(deliveries).where(deliveries.c.status == "sending"))
    return [dict(r._mapping) for r in rows]


async def list_deliveries(
    conn: AsyncConnection,
    *,
    customer_id: str | None,
    status: str | None,
    rule_id: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    query = select(deliveries).order_by(deliveries.c.created_at, deliveries.c.id)
    for column, value in (
        (deliveries.c.customer_id, customer_id),
        (deliveries.c.status, status),
        (deliveries.c.rule_id, rule_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if cursor:
        created, _, last_id = cursor.partition("|")
        try:
            moment = datetime.fromisoformat(created)
        except ValueError as exc:
            raise ValueError("cursor: not a cursor this API returned") from exc
        query = query.where(
            (deliveries.c.created_at > moment)
            | and_(deliveries.c.created_at == moment, deliveries.c.id > last_id)
        )
    rows = [dict(r._mapping) for r in await conn.execute(query.limit(limit + 1))]
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], f"{last['created_at'].isoformat()}|{last['id']}"
