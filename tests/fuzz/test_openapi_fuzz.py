"""HTTP fuzzing of every operation of every service's OpenAPI document with schemathesis:
valid and invalid inputs; no 5xx, and status, content type, headers and body as
documented, `Allow` on a 405, authentication not ignored, valid input accepted.

Each service runs in-process over ASGI on a fresh SQLite file, migrated and seeded with a
few customers so listings and reports answer with items, not only empty pages. Kafka is
not started: what the services would publish stays in their outboxes.

What is not asserted, and why:
- that invalid input is refused (schemathesis' `negative_data_rejection`): Pydantic's lax
  mode accepts, on purpose, some values the schema calls invalid (a number for a
  date-time, read as Unix time; true/false or a numeric string for a number), and an event
  batch answers 200 with a verdict per event, invalid ones included. The invalid inputs
  are still sent, and every other check applies to their answers.
- that valid input is accepted, for the inputs in UNSTATABLE: their validity is not
  something a schema can state.
- that `GET /readyz` is not a 5xx: without Kafka it answers 503, as documented.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis import Case, checks
from schemathesis.specs.openapi.schemas import OpenApiSchema
from starlette.types import Receive, Scope, Send

from crm_shared.app.runtime import Runtime
from crm_shared.events import CATALOG, CloudEvent
from crm_shared.messaging.topics import CUSTOMER_EVENTS
from tests.support.apps import SERVICES, service_app
from tests.support.auth import auth_headers
from tests.support.events import purchase_json

pytestmark = pytest.mark.fuzz

# As schemathesis.toml would say it. A fixed seed and no example database: CI sends the
# same cases every run. Examples per operation bound the run: 1 minute on 2 idle cores,
# 2 minutes under load.
CONFIG: dict[str, Any] = {
    "seed": 20240601,
    "suppress-health-check": ["all"],
    "generation": {
        "max-examples": 60,
        "deterministic": True,
        "database": "none",
        # Unknown query parameters are ignored on purpose (older clients keep working).
        "allow-extra-parameters": False,
    },
    "checks": {
        # 412 too: a stale If-Match is refused whatever the body holds.
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
        },
    },
}

# (operation, input) -> why a schema-valid value of that input (or of a field inside it)
# may still be refused. The problem's `field` names the input refused; the refusal of any
# other valid input fails the test.
UNSTATABLE: dict[tuple[str, str], str] = {
    ("*", "cursor"): "opaque: only a page the API returned holds a valid one",
    ("GET /v1/unsubscribe", "token"): "signed by the service for one customer",
    ("POST /v1/contacts", "Idempotency-Key"): "a key reused with another body is refused",
    ("POST /v1/contacts", "body.emails"): "checked by an email syntax library",
    ("POST /v1/contacts", "body.phones"): "checked against numbering plans",
    ("POST /v1/contacts", "body.time_zone"): "an IANA zone name",
    ("POST /v1/contacts", "body.country"): "an ISO 3166-1 code",
    ("GET /v1/contacts", "ref"): "an email or phone is checked as the profile's are",
    ("POST /v1/imports", "file"): "UTF-8 CSV text with known columns",
    ("POST /v1/events", "data"): "what the payload holds depends on the event type",
    ("POST /v1/events", "subject"): "an email, phone or contact the service must know",
    ("POST /v1/admin/what-if", "body"): "churn after dormancy: fields compared with each other",
    ("PUT /v1/rules/{rule_id}", "action.template"): "a template that exists",
    ("POST /v1/rules/{rule_id}/dry-run", "action.template"): "a template that exists",
}


def unstatable(operation: str, field: str) -> bool:
    """Whether `field`, or an input it is part of (`data` for `data.amount`), is listed."""
    return any(
        (where, name) in UNSTATABLE
        for where in (operation, "*")
        for name in [field, *(field[:i] for i, c in enumerate(field) if c == ".")]
    )


CUSTOMERS = ("cust-1", "cust-2", "cust-3")


def purchases() -> list[dict[str, Any]]:
    return [
        purchase_json(customer, day=day, event_id=f"{customer}-{day}")
        for customer in CUSTOMERS
        for day in (0, 30, 45)
    ]


async def seed_through_the_api(app: FastAPI) -> None:
    """Contacts: a contact and a few purchases, as another system would send them."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://seed", headers=auth_headers()
    ) as client:
        created = await client.post("/v1/contacts", json={"first_name": "Ada"})
        assert created.status_code == 201, created.text
        batch = await client.post(
            "/v1/events",
            json=purchases(),
            headers={"content-type": "application/cloudevents-batch+json"},
        )
        assert batch.status_code == 200 and batch.json()["accepted"] == 9, batch.text


async def seed_through_the_consumers(app: FastAPI) -> None:
    """The other services: the purchases, applied as their consumers apply them."""
    runtime: Runtime = app.state.runtime
    events = [CATALOG.validate(CloudEvent.model_validate(p)) for p in purchases()]
    for subscription in runtime.subscriptions:
        if CUSTOMER_EVENTS in subscription.topics:
            async with runtime.db.transaction() as conn:
                await subscription.handler(conn, events)


class Served:
    """A service on a SQLite file (see `open`) whose lifespan migrates and seeds the
    database, once, instead of starting the Kafka side. Schemathesis runs the app on an
    event loop of its own, so the database is only used from that loop; it ends the
    lifespan after each operation, which closes the connections, and starts it again."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.seed = seed_through_the_api if service == "contacts" else seed_through_the_consumers
        self.app: FastAPI | None = None
        self.seeded = False

    def open(self, folder: Path) -> None:
        self.app = service_app(self.service, f"sqlite+aiosqlite:///{folder / self.service}.db")
        self.seeded = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "the `databases` fixture opens the services"
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        runtime: Runtime = self.app.state.runtime
        await receive()  # lifespan.startup
        try:
            if not self.seeded:
                await runtime.migrate()
                await self.seed(self.app)
                self.seeded = True
        except Exception as exc:
            await runtime.db.dispose()
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await runtime.db.dispose()
        await send({"type": "lifespan.shutdown.complete"})


SERVED = {service: Served(service) for service in SERVICES}


@pytest.fixture(scope="module", autouse=True)
def databases(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    for served in SERVED.values():
        served.open(folder)


def load(service: str) -> OpenApiSchema:
    """The service's OpenAPI document (from an app that never connects), sent to SERVED."""
    document = service_app(service, "sqlite+aiosqlite://").openapi()
    schema = schemathesis.openapi.from_dict(document, config=schemathesis.Config.from_dict(CONFIG))
    schema.app = SERVED[service]
    return schema


def refused_inputs(response: schemathesis.Response) -> set[str]:
    """The inputs a problem response names as at fault."""
    try:
        problem = response.json()
    except ValueError:
        return set()
    if not isinstance(problem, dict):
        return set()
    named = [problem.get("field")] + [e.get("field") for e in problem.get("errors", [])]
    return {field for field in named if isinstance(field, str)}


def valid_input_is_accepted(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case[Any]
) -> bool | None:
    """`positive_data_acceptance`, except when only inputs in UNSTATABLE were refused."""
    refused = refused_inputs(response)
    if refused and all(unstatable(case.operation.label, field) for field in refused):
        return None
    return checks.positive_data_acceptance(ctx, response, case)  # type: ignore[no-any-return]


def fuzz(case: Case[Any]) -> None:
    excluded = [checks.negative_data_rejection, checks.positive_data_acceptance]
    if case.operation.label == "GET /readyz":
        excluded.append(checks.not_a_server_error)
    case.call_and_validate(
        headers=auth_headers(),
        excluded_checks=excluded,
        additional_checks=[valid_input_is_accepted],
    )


contacts = load("contacts")
lifecycle = load("lifecycle")
scoring = load("scoring")
notifications = load("notifications")


@contacts.parametrize()
def test_contacts_answers_every_request_as_documented(case: Case[Any]) -> None:
    fuzz(case)


@lifecycle.parametrize()
def test_lifecycle_answers_every_request_as_documented(case: Case[Any]) -> None:
    fuzz(case)


@scoring.parametrize()
def test_scoring_answers_every_request_as_documented(case: Case[Any]) -> None:
    fuzz(case)


@notifications.parametrize()
def test_notifications_answers_every_request_as_documented(case: Case[Any]) -> None:
    fuzz(case)
