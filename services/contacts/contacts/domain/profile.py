"""A contact's profile: the fields a person has, validated and normalised.

Emails are checked for syntax and lower-cased; phones are parsed (with the
contact's country as the default region) and stored in E.164; time zones must be IANA names;
countries are ISO 3166-1 alpha-2 codes. Custom attributes keep their JSON type.
"""

from __future__ import annotations

import json
import re
from datetime import date
from functools import cache, lru_cache
from typing import Any, Literal
from zoneinfo import available_timezones

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

AgeBand = Literal["under_18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
Gender = Literal["female", "male", "non_binary", "other", "undisclosed"]
AttributeValue = str | int | float | bool | None
# Attribute values are stored for filtering as text of at most this many characters.
MAX_ATTRIBUTE_TEXT = 500
LOCALE = re.compile(r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?$")
TAG = re.compile(r"^[\w][\w .:/-]{0,63}$")
ATTRIBUTE_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

PROFILE_FIELDS = (
    "first_name",
    "last_name",
    "country",
    "emails",
    "phones",
    "birthday",
    "time_zone",
    "locale",
    "region",
    "city",
    "age_band",
    "gender",
    "company",
    "source",
    "channel",
    "tags",
    "attributes",
)


class ProfileError(ValueError):
    """A profile that cannot be stored; `field` names the culprit."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class Profile(BaseModel):
    """Everything a contact record says about the person (all optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    country: str | None = None  # before phones: it is their default region
    emails: list[str] = Field(default_factory=list, max_length=20)
    phones: list[str] = Field(default_factory=list, max_length=20)
    birthday: date | None = None
    time_zone: str | None = None
    locale: str | None = None
    region: str | None = Field(default=None, max_length=100)
    city: str | None = Field(default=None, max_length=100)
    age_band: AgeBand | None = None
    gender: Gender | None = None
    company: str | None = Field(default=None, max_length=200)
    source: str | None = Field(default=None, max_length=100)
    channel: str | None = Field(default=None, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=100)
    attributes: dict[str, AttributeValue] = Field(default_factory=dict, max_length=200)

    @field_validator("emails")
    @classmethod
    def _emails(cls, values: list[str]) -> list[str]:
        return _unique(normalise_email(v) for v in values)

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str | None) -> str | None:
        if value is not None and value not in _time_zones():
            raise ValueError(f"{value!r} is not an IANA time zone (for instance Europe/Berlin)")
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        if value is not None and not LOCALE.match(value):
            raise ValueError(f"{value!r} is not a locale tag (for instance en-GB)")
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        code = value.upper()
        if code not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
        return code

    @field_validator("tags")
    @classmethod
    def _tags(cls, values: list[str]) -> list[str]:
        for tag in values:
            if not TAG.match(tag):
                raise ValueError(f"tag {tag!r} must be 1-64 letters, digits, spaces or .:/-_")
        return _unique(values)

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, values: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
        for key, value in values.items():
            if not ATTRIBUTE_KEY.match(key):
                raise ValueError(f"attribute name {key!r} must be snake_case, at most 64 chars")
            text = value if isinstance(value, str) else json.dumps(value)
            if len(text) > MAX_ATTRIBUTE_TEXT:
                raise ValueError(f"attribute {key!r} has more than {MAX_ATTRIBUTE_TEXT} characters")
        return {k: v for k, v in values.items() if v is not None}

    @field_validator("phones")
    @classmethod
    def _phones(cls, values: list[str], info: ValidationInfo) -> list[str]:
        return _unique(normalise_phone(p, info.data.get("country")) for p in values)

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_profile(raw: dict[str, Any]) -> Profile:
    """Validate a profile; raise ProfileError naming the field."""
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or None
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ProfileError(f"{field}: {message}" if field else message, field) from None


# The check takes ~33 us (IDNA rules for every character of the domain), and the same
# address comes again and again: with every event of a customer named by email, and twice
# for a new one (its subject, then the prospect's profile). An address the check refused
# is not kept (an exception is not cached) and is checked again. 16,384 addresses take
# ~3.5 MB; the least recently used go first.
@lru_cache(maxsize=16_384)
def normalise_email(value: str) -> str:
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid email address: {exc}") from None
    # Mailbox names are case-insensitive in practice; one spelling keeps one identity.
    return f"{result.local_part}@{result.domain}".lower()


def normalise_phone(value: str, country: str | None = None) -> str:
    return _normalised_phone(value, country)  # one key however it is called


@lru_cache(maxsize=16_384)  # ~44 us a number; kept for the same reasons as addresses
def _normalised_phone(value: str, country: str | None) -> str:
    international = value.strip().startswith("+")
    if not international and not country:
        raise ValueError(
            f"{value!r}: give it in international form (+<country code> ...) "
            "or set the contact's country"
        )
    try:
        number = phonenumbers.parse(value, None if international else country)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{value!r} is not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{value!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _unique(values: Any) -> list[str]:
    return list(dict.fromkeys(values))
