"""The CloudEvents envelope and the event registry."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from crm_shared.events import CATALOG, CloudEvent, InvalidEvent, decode_envelope, parse_envelope
from crm_shared.events.catalog import PurchaseCompleted
from crm_shared.events.registry import EventData, EventRegistry
from tests.support.events import purchase_json


def rejection(raw: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        CATALOG.validate(parse_envelope(raw))
    return caught.value


def test_a_valid_purchase_validates_into_its_typed_frozen_model() -> None:
    event = CATALOG.validate(parse_envelope(purchase_json("c1", amount="19.90")))
    assert isinstance(event.data, PurchaseCompleted)
    assert str(event.data.amount) == "19.90"
    assert event.subject == "c1" and event.time.tzinfo is not None
    with pytest.raises(Exception, match="frozen"):
        event.data.amount = 0  # type: ignore[misc, assignment]


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"type": "crm.nope.v1"}, "type: unknown event type 'crm.nope.v1'", "type"),
        ({"specversion": "0.3"}, "specversion: specversion must be '1.0'", "specversion"),
        ({"id": ""}, "id: String should have at least 1 character", "id"),
        ({"subject": None}, "subject: required (the customer the event is about)", "subject"),
        ({"time": None}, "time: required (when it happened, RFC 3339)", "time"),
        (
            {"time": "2026-01-01T00:00:00"},
            "time: time must carry a time zone offset (RFC 3339)",
            "time",
        ),
        ({"data": [1]}, "data: must be a JSON object", "data"),
    ],
)
def test_an_invalid_envelope_is_rejected_naming_the_field(
    change: dict[str, Any], reason: str, field: str
) -> None:
    error = rejection({**purchase_json("c1"), **change})
    assert (error.reason, error.field) == (reason, field)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"amount": "1", "currency": "EUR"}, "data.order_id: Field required"),
        (
            {"order_id": "o", "amount": "-1", "currency": "EUR"},
            "data.amount: Input should be greater than or equal to 0",
        ),
        (
            {"order_id": "o", "amount": "1", "currency": "euro"},
            "data.currency: String should match pattern '^[A-Z]{3}$'",
        ),
        (
            {"order_id": "o", "amount": "1", "currency": "EUR", "colour": "red"},
            "data.colour: Extra inputs are not permitted",
        ),
    ],
)
def test_an_invalid_payload_is_rejected_naming_the_field(data: dict[str, Any], reason: str) -> None:
    assert rejection({**purchase_json("c1"), "data": data}).reason == reason


def test_feedback_scores_are_checked_against_their_scale() -> None:
    raw = {**purchase_json("c1"), "type": "crm.feedback.submitted.v1", "data": {"csat": 9}}
    assert rejection(raw).reason == "data.csat: Input should be less than or equal to 5"
    raw["data"] = {"comment": "meh"}
    assert rejection(raw).reason == "data: give nps (0-10), csat (1-5) or both"


def test_bytes_that_are_not_json_are_rejected() -> None:
    with pytest.raises(InvalidEvent, match="not valid JSON"):
        decode_envelope(b"\xff{")
    with pytest.raises(InvalidEvent, match="must be a JSON object"):
        decode_envelope(b"[1, 2]")


def test_an_envelope_round_trips_through_json_with_its_extensions() -> None:
    event = parse_envelope({**purchase_json("c1"), "partitionkey": "c1"})
    again = decode_envelope(event.to_json())
    assert again == event
    assert again.extensions == {"partitionkey": "c1"}


def test_every_type_is_namespaced_versioned_and_has_a_json_schema() -> None:
    schemas = CATALOG.json_schemas()
    assert "crm.purchase.completed.v1" in schemas
    assert schemas["crm.purchase.completed.v1"]["required"] == ["order_id", "amount", "currency"]
    assert all(name.startswith("crm.") and ".v" in name for name in schemas if name != "custom.*")


def test_a_registry_refuses_unversioned_names_and_duplicates() -> None:
    registry = EventRegistry()
    with pytest.raises(ValueError, match=r"end in \.vN"):
        registry.register("crm.thing.happened")
    registry.register("crm.thing.happened.v1")(type("A", (EventData,), {}))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("crm.thing.happened.v1")(type("B", (EventData,), {}))


def test_the_envelope_model_is_frozen() -> None:
    event = CloudEvent.model_validate(purchase_json("c1"))
    with pytest.raises(Exception, match="frozen"):
        event.subject = "c2"  # type: ignore[misc]


def test_custom_types_take_any_object_but_still_need_a_sensible_name() -> None:
    raw = {**purchase_json("c1"), "type": "custom.webinar.attended", "data": {"minutes": 42}}
    event = CATALOG.validate(parse_envelope(raw))
    assert event.data.model_dump() == {"minutes": 42}
    assert rejection({**raw, "type": "custom."}).reason == "type: unknown event type 'custom.'"
    assert rejection({**raw, "type": "custom.Bad Name"}).field == "type"


def test_an_event_names_its_envelopes_id_type_and_subject_and_follows_a_new_envelope() -> None:
    event = CATALOG.validate(parse_envelope(purchase_json("c1")))
    assert (event.id, event.type, event.subject) == (
        event.envelope.id,
        "crm.purchase.completed.v1",
        "c1",
    )
    other = event.envelope.model_copy(update={"id": "e-2", "subject": "c2"})
    moved = dataclasses.replace(event, envelope=other)
    assert (moved.id, moved.subject, moved.data) == ("e-2", "c2", event.data)
