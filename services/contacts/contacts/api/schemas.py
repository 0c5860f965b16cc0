"""Request and response bodies of the contacts API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contacts.domain.contact import Contact
from contacts.domain.profile import ATTRIBUTE_KEY, LOCALE, TAG, Profile

EXAMPLE_CONTACT: dict[str, Any] = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "emails": ["ada@example.com"],
    "phones": ["+44 20 7946 0958"],
    "country": "GB",
    "city": "London",
    "time_zone": "Europe/London",
    "locale": "en-GB",
    "company": "Analytical Engines Ltd",
    "source": "webinar",
    "channel": "organic",
    "tags": ["vip"],
    "attributes": {"plan": "gold", "seats": 5},
    "external_ids": ["shop:42"],
}


def _document_profile(schema: dict[str, Any]) -> None:
    """The profile's rules a pattern states. Emails, phones, time zones and countries are
    checked against real data (syntax, numbering plans, IANA zones, ISO codes)."""
    schema["examples"] = [EXAMPLE_CONTACT]
    fields = schema["properties"]
    fields["attributes"]["propertyNames"] = {"pattern": ATTRIBUTE_KEY.pattern}
    fields["tags"]["items"]["pattern"] = TAG.pattern
    fields["locale"]["anyOf"][0]["pattern"] = LOCALE.pattern
    fields["external_ids"]["items"].update(pattern="^[^:]+:.+", maxLength=200)  # system:id


class ContactCreate(Profile):
    """A new contact: any profile fields, and ids it has in other systems (`system:id`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_document_profile)

    external_ids: list[str] = Field(default_factory=list, max_length=20)


class ConsentEntry(BaseModel):
    status: Literal["granted", "denied", "revoked"]
    source: str
    changed_at: datetime


class ContactView(BaseModel):
    id: str
    version: int
    status: Literal["active", "merged"]
    merged_into: str | None
    origin: str
    created_at: datetime
    updated_at: datetime
    profile: dict[str, Any]
    external_ids: list[str]
    consent: dict[str, ConsentEntry]

    @classmethod
    def of(cls, state: Contact) -> ContactView:
        return cls(
            id=state.id,
            version=state.version,
            status=state.status,
            merged_into=state.merged_into,
            origin=state.origin,
            created_at=state.created_at,
            updated_at=state.updated_at,
            profile=state.profile,
            external_ids=list(state.external_ids),
            consent={k: ConsentEntry.model_validate(v) for k, v in state.consent.items()},
        )


class ContactPage(BaseModel):
    items: list[ContactView]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class ConsentChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"status": "granted", "source": "signup-form"}]},
    )

    status: Literal["granted", "denied", "revoked"]
    source: str = Field(min_length=1, max_length=200)
    at: datetime | None = Field(default=None, description="when it was given; default now")


class MergeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"others": ["6c1f..."], "fields": {"first_name": "6c1f..."}}]
        },
    )

    others: list[str] = Field(
        min_length=1, max_length=20, description="contacts to merge into this one"
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="per field, the id of the contact whose value the survivor keeps "
        "(default: the survivor's own); emails, phones and tags are always united",
    )


class UnmergeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"contact_id": "6c1f..."}]}
    )

    contact_id: str = Field(description="the merged contact to restore")


class FieldChange(BaseModel):
    field: str
    from_: Any = Field(alias="from")
    to: Any

    model_config = ConfigDict(populate_by_name=True)


class HistoryEntry(BaseModel):
    version: int
    at: datetime
    type: str
    event_id: str
    actor: str | None
    changes: list[FieldChange]


class DuplicateCandidate(BaseModel):
    contact_id: str
    reasons: list[str]
