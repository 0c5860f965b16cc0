"""Identifiers: how an inbound event names its customer.

A CloudEvents `subject` is one of: a contact id, `email:<address>`, `phone:<number>` or
`ext:<system>:<id>` (an id in another system). Identifiers are normalised so that the same
person is found however the sender wrote them.
"""

from __future__ import annotations

from typing import Any

from contacts.domain.profile import normalise_email, normalise_phone

PREFIXES = ("email:", "phone:", "ext:")
# A contact's event streams are named `contact-<id>` and `timeline-<id>`, in a column of 200.
MAX_CONTACT_ID = 190


def parse_identifier(subject: str) -> str:
    """The normalised identifier (`id:<contact id>` for a bare id); ValueError if malformed."""
    subject = subject.strip()
    if subject.startswith("email:"):
        return "email:" + normalise_email(subject.removeprefix("email:"))
    if subject.startswith("phone:"):
        return "phone:" + normalise_phone(subject.removeprefix("phone:"))
    if subject.startswith("ext:"):
        return "ext:" + external_id(subject.removeprefix("ext:"))
    if not subject or any(ch.isspace() for ch in subject):
        raise ValueError(f"{subject!r} is neither a contact id nor email:, phone: or ext:")
    if len(subject) > MAX_CONTACT_ID:
        raise ValueError(f"a contact id has at most {MAX_CONTACT_ID} characters")
    return "id:" + subject


def external_id(value: str) -> str:
    """`system:id`, the system lower-cased."""
    system, sep, ident = value.partition(":")
    if not sep or not system or not ident or len(value) > 200:
        raise ValueError(f"{value!r} must read system:id (for instance shop:42)")
    return f"{system.lower()}:{ident}"


def prospect_profile(identifier: str) -> tuple[dict[str, Any], list[str]]:
    """What a prospect created from an unknown identifier knows: its profile and external ids."""
    kind, _, value = identifier.partition(":")
    if kind == "email":
        return {"emails": [value]}, []
    if kind == "phone":
        return {"phones": [value]}, []
    if kind == "ext":
        return {}, [value]
    return {}, []
