"""The contact aggregate: given record events, when a command, then events (or a refusal)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contacts.domain import contact as domain
from contacts.domain.contact import Contact, DomainError, fold, merge_patch
from contacts.domain.identity import parse_identifier, prospect_profile
from contacts.domain.profile import normalise_email, normalise_phone
from crm_shared.events.catalog import ContactMerged
from crm_shared.events.registry import EventData

T = datetime(2026, 5, 1, tzinfo=UTC)


def given(contact_id: str, profile: dict[str, Any], *more: EventData) -> Contact:
    state = fold(
        None,
        domain.create(contact_id, profile, origin="api", external_ids=[], actor=None),
        T,
        contact_id,
    )
    for data in more:
        state = fold(state, data, T, contact_id)
    return state


def test_creating_normalises_emails_phones_and_country() -> None:
    event = domain.create(
        "c1",
        {"emails": ["Ada@Example.COM"], "phones": ["020 7946 0958"], "country": "gb"},
        origin="api",
        external_ids=["Shop:42"],
        actor="ops",
    )
    assert event.profile["emails"] == ["ada@example.com"]
    assert event.profile["phones"] == ["+442079460958"]
    assert event.profile["country"] == "GB"
    assert event.external_ids == ["shop:42"]


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        ({"emails": ["not-an-email"]}, "emails"),
        ({"phones": ["12"]}, "phones"),
        ({"time_zone": "Europe/Atlantis"}, "time_zone"),
        ({"country": "ZZ"}, "country"),
        ({"locale": "english"}, "locale"),
        ({"age_band": "30ish"}, "age_band"),
        ({"attributes": {"Bad Key": 1}}, "attributes"),
        ({"favourite_colour": "blue"}, "favourite_colour"),
    ],
)
def test_an_invalid_profile_is_refused_naming_the_field(
    profile: dict[str, Any], field: str
) -> None:
    with pytest.raises(DomainError) as caught:
        domain.create("c1", profile, origin="api", external_ids=[], actor=None)
    assert caught.value.status == 422 and caught.value.field == field


def test_a_merge_patch_changes_only_what_differs_and_null_clears() -> None:
    state = given("c1", {"first_name": "Ada", "city": "London", "attributes": {"plan": "gold"}})
    events = domain.update(
        state, {"city": None, "first_name": "Ada", "attributes": {"seats": 3}}, actor="ops"
    )
    assert len(events) == 1
    changes = events[0].changes  # type: ignore[attr-defined]
    assert changes == {"city": None, "attributes": {"plan": "gold", "seats": 3}}
    after = fold(state, events[0], T, "c1")
    assert after.profile["city"] is None and after.version == 2


def test_a_patch_that_changes_nothing_makes_no_event() -> None:
    state = given("c1", {"first_name": "Ada"})
    assert domain.update(state, {"first_name": "Ada"}, actor=None) == []


def test_rfc7396_merge_patch() -> None:
    assert merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}}) == {
        "a": "z",
        "c": {"d": "e"},
    }
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}


def test_consent_can_be_granted_and_revoked_but_not_revoked_before_granted() -> None:
    state = given("c1", {})
    with pytest.raises(DomainError, match="only be revoked once granted"):
        domain.change_consent(state, "email", "revoked", source="form", at=T)
    granted = domain.change_consent(state, "email", "granted", source="form", at=T)
    assert granted is not None
    state = fold(state, granted, T, "c1")
    assert domain.change_consent(state, "email", "granted", source="form", at=T) is None
    revoked = domain.change_consent(state, "email", "revoked", source="unsubscribe", at=T)
    assert fold(state, revoked, T, "c1").consent["email"]["status"] == "revoked"  # type: ignore[arg-type]


def test_a_merge_keeps_chosen_fields_and_unites_emails_phones_and_tags() -> None:
    survivor = given("s", {"first_name": "Ada", "emails": ["ada@a.com"], "tags": ["vip"]})
    other = given(
        "o",
        {"first_name": "Augusta", "city": "Paris", "emails": ["ada@b.com"], "tags": ["newsletter"]},
    )
    event = domain.merge(survivor, [other], {"first_name": "o", "city": "o"}, actor="ops")
    assert event.changes == {
        "first_name": "Augusta",
        "city": "Paris",
        "emails": ["ada@a.com", "ada@b.com"],
        "tags": ["vip", "newsletter"],
    }
    assert event.moved == {"o": ["email:ada@b.com"]}
    merged_survivor = fold(survivor, event, T, "s")
    merged_other = fold(other, event, T, "o")
    assert merged_survivor.identifiers == ["email:ada@a.com", "email:ada@b.com"]
    assert (merged_other.status, merged_other.merged_into) == ("merged", "s")
    with pytest.raises(DomainError, match="was merged into s"):
        domain.update(merged_other, {"city": "Rome"}, actor=None)


def test_a_merge_refuses_the_survivor_itself_and_unknown_sources() -> None:
    survivor, other = given("s", {}), given("o", {})
    with pytest.raises(DomainError, match="other contacts than the survivor"):
        domain.merge(survivor, [survivor], {}, actor=None)
    with pytest.raises(DomainError, match="not one of the merged contacts"):
        domain.merge(survivor, [other], {"city": "x"}, actor=None)


def test_an_unmerge_restores_the_contact_and_takes_back_what_it_brought() -> None:
    survivor = given("s", {"first_name": "Ada", "emails": ["ada@a.com"]})
    other = given("o", {"first_name": "Augusta", "emails": ["ada@b.com"]})
    merged = domain.merge(survivor, [other], {"first_name": "o"}, actor=None)
    survivor, other = fold(survivor, merged, T, "s"), fold(other, merged, T, "o")
    undo = domain.unmerge(survivor, other, merged, actor=None)
    assert undo.changes == {"first_name": "Ada", "emails": ["ada@a.com"]}
    restored = fold(other, undo, T, "o")
    assert (restored.status, restored.merged_into) == ("active", None)
    assert fold(survivor, undo, T, "s").identifiers == ["email:ada@a.com"]


def test_an_unmerge_keeps_a_field_changed_since_the_merge() -> None:
    survivor = given("s", {"first_name": "Ada"})
    other = given("o", {"first_name": "Augusta"})
    merged = domain.merge(survivor, [other], {"first_name": "o"}, actor=None)
    survivor, other = fold(survivor, merged, T, "s"), fold(other, merged, T, "o")
    survivor = fold(
        survivor, domain.update(survivor, {"first_name": "Countess"}, actor=None)[0], T, "s"
    )
    assert "first_name" not in domain.unmerge(survivor, other, merged, actor=None).changes


def test_unmerging_a_contact_that_was_not_merged_is_refused() -> None:
    survivor, other = given("s", {}), given("o", {})
    with pytest.raises(DomainError, match="not merged into"):
        domain.unmerge(
            survivor, other, ContactMerged(survivor_id="s", merged_ids=["x"]), actor=None
        )


@pytest.mark.parametrize(
    ("subject", "identifier"),
    [
        ("email:Ada@Example.com", "email:ada@example.com"),
        ("phone:+44 20 7946 0958", "phone:+442079460958"),
        ("ext:Shop:42", "ext:shop:42"),
        ("c-123", "id:c-123"),
    ],
)
def test_subjects_are_normalised_into_identifiers(subject: str, identifier: str) -> None:
    assert parse_identifier(subject) == identifier


@pytest.mark.parametrize("subject", ["email:nope", "phone:0123", "ext:shop", "two words", ""])
def test_malformed_subjects_are_refused(subject: str) -> None:
    with pytest.raises(ValueError):
        parse_identifier(subject)


def test_addresses_seen_again_normalise_alike_and_bad_ones_are_refused_each_time() -> None:
    """Normalised addresses are kept; every spelling still gets its own answer, and a refused
    address is refused again (nothing kept for it)."""
    spellings = [" Ada@Example.com", "ada@EXAMPLE.com", "ADA@example.com "]
    for _ in range(2):
        assert {normalise_email(s) for s in spellings} == {"ada@example.com"}
        for bad in ("nope", "a@b@c.com", "ada@example..com"):
            with pytest.raises(ValueError, match="is not a valid email address"):
                normalise_email(bad)
    assert normalise_email("Grace@Hopper.example") == "grace@hopper.example"


def test_numbers_seen_again_normalise_alike_and_bad_ones_are_refused_each_time() -> None:
    for _ in range(2):
        assert normalise_phone("+44 20 7946 0958") == "+442079460958"
        assert normalise_phone("020 7946 0958", "GB") == "+442079460958"
        assert normalise_phone("030 901820", "DE") == "+4930901820"
        for bad, country in (("020 7946 0958", None), ("+44 1", None), ("12", "GB")):
            with pytest.raises(ValueError):
                normalise_phone(bad, country)


def test_a_prospect_carries_the_identifier_it_was_first_seen_by() -> None:
    assert prospect_profile("email:a@b.com") == ({"emails": ["a@b.com"]}, [])
    assert prospect_profile("ext:shop:42") == ({}, ["shop:42"])
