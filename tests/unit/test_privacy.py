"""Sealing personal data: readable with the contact's key, empty of the right shape once the
key is destroyed, untouched where nothing is personal."""

from __future__ import annotations

from crm_shared import privacy

KEY = privacy.new_key()


def test_a_sealed_value_opens_with_its_key_and_hides_the_plain_text() -> None:
    sealed = privacy.seal({"emails": ["ann@example.com"]}, KEY, "c1")
    assert privacy.is_sealed(sealed) and "ann@example.com" not in sealed
    assert privacy.open_value(sealed, {"c1": KEY}) == {"emails": ["ann@example.com"]}


def test_without_its_key_a_value_opens_empty_of_its_kind() -> None:
    for value, empty in (({"a": 1}, {}), (["x"], []), ("ann", None), (5, None)):
        assert privacy.open_value(privacy.seal(value, KEY, "c1"), {}) == empty


def test_a_contact_id_with_colons_seals_and_opens() -> None:
    # A bare subject that is not email:, phone: or ext: is a contact id, colons and all.
    for contact_id in ("id:n1", "shop:77:a", "c:"):
        sealed = privacy.seal({"emails": ["ann@example.com"]}, KEY, contact_id)
        assert privacy.key_ids(sealed) == {contact_id}
        assert privacy.open_value(sealed, {contact_id: KEY}) == {"emails": ["ann@example.com"]}


def test_a_value_sealed_for_one_contact_does_not_open_with_anothers_key() -> None:
    sealed = privacy.seal("ann", KEY, "c1")
    forged = sealed.replace(":c1:", ":c2:")
    assert privacy.open_value(forged, {"c2": KEY}) == forged  # not decrypted, not trusted


def test_only_the_personal_fields_of_an_event_are_sealed() -> None:
    event = {
        "type": "crm.contact.created.v1",
        "subject": "c1",
        "crmidentity": "email:ann@example.com",
        "data": {"contact_id": "c1", "profile": {"first_name": "Ann"}, "origin": "api"},
    }
    sealed = privacy.seal_event(event, KEY, "c1")
    assert sealed["data"]["contact_id"] == "c1" and sealed["data"]["origin"] == "api"
    assert privacy.is_sealed(sealed["data"]["profile"])
    assert privacy.is_sealed(sealed["crmidentity"])
    assert privacy.key_ids(sealed) == {"c1"}
    assert privacy.open_all(sealed, {"c1": KEY}) == event
    erased = privacy.open_all(sealed, {})
    assert erased["data"]["profile"] == {} and erased["crmidentity"] is None


def test_a_purchase_holds_nothing_personal_and_every_custom_field_is() -> None:
    purchase = {"type": "crm.purchase.completed.v1", "data": {"amount": "10.00"}}
    assert privacy.seal_event(purchase, KEY, "c1") == purchase
    custom = {"type": "custom.quote", "data": {"note": "call Ann", "n": 2}}
    sealed = privacy.seal_event(custom, KEY, "c1")
    assert all(privacy.is_sealed(v) for v in sealed["data"].values())
