"""Crypto-shredding: personal data in stored events is sealed with a key per contact.

A sealed value is a string `crm-sealed:1:<kind>:<key id>:<base64 nonce+ciphertext>`
(AES-256-GCM, the key id as associated data), so it fits wherever the plain value stood,
even in a CloudEvents extension attribute. Destroying a contact's key makes every sealed
value of that contact unreadable for good, in every copy of every event that holds it,
while the rest of the event (ids, amounts, times) stays as it was. Opening a value whose
key is gone yields the empty value of its kind (`{}`, `[]` or `null`), so the event still
has its shape.

Which fields of which event types are personal is declared here, next to the catalog.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crm_shared.store import jsontext

PREFIX = "crm-sealed:1:"
KEY_BYTES = 32
# The extension attribute contacts adds with the identifier an event was resolved from.
IDENTITY_EXTENSION = "crmidentity"
# Personal fields of each event type's `data`; `*` means every field.
PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "crm.contact.created.v1": ("profile", "external_ids"),
    "crm.contact.updated.v1": ("changes",),
    "crm.contact.identified.v1": ("external_id",),
    "crm.contact.merged.v1": ("changes", "previous", "moved"),
    "crm.contact.unmerged.v1": ("changes", "moved"),
    "crm.customer.registered.v1": ("email", "name", "birthday"),
    "crm.feedback.submitted.v1": ("comment",),
    "crm.ticket.opened.v1": ("topic",),
}
CUSTOM_PREFIX = "custom."
_EMPTY: dict[str, Callable[[], Any]] = {"o": dict, "a": list, "v": lambda: None}

Keys = Mapping[str, bytes]


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def personal_fields(event_type: str, data: Mapping[str, Any]) -> list[str]:
    """The fields of `data` that hold personal data for this event type."""
    if event_type.startswith(CUSTOM_PREFIX):
        return list(data)
    return [name for name in PERSONAL_FIELDS.get(event_type, ()) if name in data]


def seal(value: Any, key: bytes, key_id: str) -> str:
    kind = "o" if isinstance(value, dict) else "a" if isinstance(value, list) else "v"
    nonce = os.urandom(12)
    plain = json.dumps(value, separators=(",", ":"), default=str).encode()
    sealed = AESGCM(key).encrypt(nonce, plain, key_id.encode())
    return f"{PREFIX}{kind}:{key_id}:{base64.b64encode(nonce + sealed).decode()}"


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _parts(value: str) -> tuple[str, str, str]:
    """kind, key id, blob of a sealed value. A key id (a contact id) may hold colons; the
    kind and the blob (base64) never do."""
    kind, rest = value[len(PREFIX) :].split(":", 1)
    key_id, blob = rest.rsplit(":", 1)
    return kind, key_id, blob


def key_id_of(value: str) -> str:
    return _parts(value)[1]


def open_value(value: str, keys: Keys) -> Any:
    """The plain value, or the empty value of its kind when its key is gone. A string that
    only looks sealed (it does not decrypt) is returned as it is."""
    try:
        kind, key_id, blob = _parts(value)
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        return value
    if kind not in _EMPTY:
        return value
    key = keys.get(key_id)
    if key is None:
        return _EMPTY[kind]()
    try:
        return jsontext.loads(AESGCM(key).decrypt(raw[:12], raw[12:], key_id.encode()))
    except (InvalidTag, ValueError):
        return value


def seal_event(envelope: dict[str, Any], key: bytes, key_id: str) -> dict[str, Any]:
    """A copy of a CloudEvent (as a dict) with its personal fields sealed."""
    return {**envelope, **sealed_attributes(envelope, key, key_id)}


def sealed_attributes(envelope: Mapping[str, Any], key: bytes, key_id: str) -> dict[str, Any]:
    """The attributes of a CloudEvent that change when its personal fields are sealed
    (`data`, the identity extension), with their sealed values; empty if none do."""
    changed: dict[str, Any] = {}
    data = envelope.get("data")
    if isinstance(data, dict):
        fields = personal_fields(str(envelope.get("type", "")), data)
        if fields:
            changed["data"] = {
                name: seal(value, key, key_id)
                if name in fields and value is not None and not is_sealed(value)
                else value
                for name, value in data.items()
            }
    identity = envelope.get(IDENTITY_EXTENSION)
    if isinstance(identity, str) and not is_sealed(identity):
        changed[IDENTITY_EXTENSION] = seal(identity, key, key_id)
    return changed


def key_ids(value: Any) -> set[str]:
    """The key ids of every sealed value inside a JSON value."""
    found: set[str] = set()

    def collect(sealed: str) -> str:
        found.add(key_id_of(sealed))
        return sealed

    _walk(value, collect)
    return found


def open_all(value: Any, keys: Keys) -> Any:
    """A copy of a JSON value with every sealed value opened (or emptied)."""
    return _walk(value, lambda sealed: open_value(sealed, keys))


def _walk(value: Any, visit: Callable[[str], Any]) -> Any:
    if isinstance(value, str):
        return visit(value) if value.startswith(PREFIX) else value
    if isinstance(value, dict):
        return {name: _walk(item, visit) for name, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, visit) for item in value]
    return value


def may_hold_sealed(raw: bytes | str) -> bool:
    """A cheap test before parsing: can this serialized event hold a sealed value?"""
    if isinstance(raw, bytes):
        return PREFIX.encode() in raw
    return PREFIX in raw


def all_key_ids(values: Iterable[Any]) -> set[str]:
    found: set[str] = set()
    for value in values:
        found |= key_ids(value)
    return found
