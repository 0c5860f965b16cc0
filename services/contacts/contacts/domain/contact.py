"""The contact aggregate: a pure fold of its record events, and the decisions on commands.

A contact's record stream holds only record events (created, updated, identified, consent
changed, merged, unmerged); its activity (purchases, logins, ...) lives in the timeline.
Decisions return event payloads; the caller appends them with the version it read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from contacts.domain.identity import external_id
from contacts.domain.profile import PROFILE_FIELDS, ProfileError, parse_profile
from crm_shared.events.catalog import (
    ConsentChanged,
    ContactCreated,
    ContactErased,
    ContactIdentified,
    ContactMerged,
    ContactUnmerged,
    ContactUpdated,
    made_before,
)
from crm_shared.events.registry import EventData

Status = Literal["active", "merged", "erased"]
CHANNELS = ("email", "sms", "push", "phone")
LIST_FIELDS = ("emails", "phones", "tags")


class DomainError(Exception):
    """A command the contact's current state refuses; `status` is the HTTP status to use."""

    def __init__(self, reason: str, *, status: int = 409, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status, self.field = reason, status, field


@dataclass(frozen=True, slots=True)
class Contact:
    id: str
    version: int
    profile: dict[str, Any]
    origin: str
    created_at: datetime
    updated_at: datetime
    external_ids: tuple[str, ...] = ()
    consent: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: Status = "active"
    merged_into: str | None = None

    @property
    def identifiers(self) -> list[str]:
        """Every identifier that resolves to this contact, in subject form."""
        return (
            [f"email:{e}" for e in self.profile.get("emails", [])]
            + [f"phone:{p}" for p in self.profile.get("phones", [])]
            + [f"ext:{x}" for x in self.external_ids]
        )


def fold(state: Contact | None, data: EventData, at: datetime, contact_id: str) -> Contact:
    """Apply one record event of this contact's stream."""
    if isinstance(data, ContactCreated):
        return Contact(
            contact_id, 1, dict(data.profile), data.origin, at, at, tuple(data.external_ids)
        )
    if state is None:
        raise ValueError(f"contact {contact_id}: {type(data).__name__} before creation")
    state = replace(state, version=state.version + 1, updated_at=at)
    if isinstance(data, ContactUpdated):
        return replace(state, profile=_patched(state.profile, data.changes))
    if isinstance(data, ContactIdentified):
        if data.external_id is None:  # erased since
            return state
        return replace(state, external_ids=(*state.external_ids, data.external_id))
    if isinstance(data, ConsentChanged):
        entry = {
            "status": data.status,
            "source": data.source,
            "changed_at": data.changed_at.isoformat(),
        }
        return replace(state, consent={**state.consent, data.channel: entry})
    if isinstance(data, ContactMerged):
        return _fold_merge(state, data)
    if isinstance(data, ContactUnmerged):
        return _fold_unmerge(state, data)
    if isinstance(data, ContactErased):
        # Nothing personal survives; merged_into stays so the survivor's history holds.
        return replace(state, status="erased", profile={}, external_ids=(), consent={})
    return state


def _fold_merge(state: Contact, data: ContactMerged) -> Contact:
    if state.id == data.survivor_id:
        gained = [x for ids in data.moved.values() for x in ids if x.startswith("ext:")]
        external = (*state.external_ids, *(x.removeprefix("ext:") for x in gained))
        return replace(
            state,
            profile=_patched(state.profile, data.changes),
            external_ids=tuple(dict.fromkeys(external)),
        )
    return replace(state, status="merged", merged_into=data.survivor_id)


def _fold_unmerge(state: Contact, data: ContactUnmerged) -> Contact:
    if state.id == data.survivor_id:
        lost = {x.removeprefix("ext:") for x in data.moved if x.startswith("ext:")}
        return replace(
            state,
            profile=_patched(state.profile, data.changes),
            external_ids=tuple(x for x in state.external_ids if x not in lost),
        )
    return replace(state, status="active", merged_into=None)


def _patched(profile: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    return {**profile, **changes}


# --- decisions -------------------------------------------------------------------------


def create(
    contact_id: str,
    raw_profile: dict[str, Any],
    *,
    origin: str,
    external_ids: list[str],
    actor: str | None,
) -> ContactCreated:
    profile = _valid_profile(raw_profile)
    ids = [_external_id(x) for x in external_ids]
    return ContactCreated(
        contact_id=contact_id,
        profile=profile,
        origin=origin,
        external_ids=list(dict.fromkeys(ids)),
        actor=actor,
    )


def update(state: Contact, patch: dict[str, Any], *, actor: str | None) -> list[EventData]:
    """Apply a JSON merge patch (RFC 7396) to the profile; return the events (none if no-op)."""
    _require_active(state)
    external = patch.pop("external_ids", None)
    unknown = set(patch) - set(PROFILE_FIELDS)
    if unknown:
        name = sorted(unknown)[0]
        raise DomainError(f"{name}: not a contact field", status=422, field=name)
    merged = merge_patch(state.profile, patch)
    profile = _valid_profile(merged)
    changes = {k: v for k, v in profile.items() if state.profile.get(k) != v}
    events: list[EventData] = []
    if changes:
        events.append(ContactUpdated(contact_id=state.id, changes=changes, actor=actor))
    for x in _new_external_ids(state, external):
        events.append(ContactIdentified(contact_id=state.id, external_id=x))
    return events


def change_consent(
    state: Contact, channel: str, status: str, *, source: str, at: datetime
) -> ConsentChanged | None:
    _require_active(state)
    if channel not in CHANNELS:
        raise DomainError(
            f"channel must be one of {', '.join(CHANNELS)}", status=422, field="channel"
        )
    entry = state.consent.get(channel, {})
    current = entry.get("status")
    if current == status or made_before(at, entry.get("changed_at")):
        return None  # nothing changes; or a change made before the one on record, late
    if status == "revoked" and current != "granted":
        raise DomainError(
            f"consent on {channel} can only be revoked once granted "
            f"(it is {current or 'not given'})",
            field="status",
        )
    return ConsentChanged(
        contact_id=state.id,
        channel=channel,
        status=status,
        source=source,
        changed_at=at,
    )


def merge(
    survivor: Contact, others: list[Contact], choices: dict[str, str], *, actor: str | None
) -> ContactMerged:
    """Merge `others` into `survivor`; `choices` says per field whose value to keep."""
    _require_active(survivor)
    by_id = {c.id: c for c in others}
    if not others or survivor.id in by_id:
        raise DomainError(
            "merge needs other contacts than the survivor", status=422, field="others"
        )
    for other in others:
        _require_active(other)
    changes = _chosen_fields(survivor, by_id, choices)
    changes = _with_union_of_lists(survivor, others, changes)
    previous = {k: survivor.profile.get(k) for k in changes}
    moved = {c.id: c.identifiers for c in others}
    return ContactMerged(
        survivor_id=survivor.id,
        merged_ids=[c.id for c in others],
        changes=changes,
        previous=previous,
        moved=moved,
        actor=actor,
    )


def unmerge(
    survivor: Contact,
    restored: Contact,
    merge_event: ContactMerged,
    *,
    actor: str | None,
    survivor_before: Contact | None = None,
) -> ContactUnmerged:
    """Undo the merge of `restored` into `survivor`.

    The identifiers and tags `restored` brought move back, except those the survivor had
    itself before the merge (`survivor_before`: the survivor just before it); the survivor's
    fields taken from it at the merge return to their previous values unless they have been
    changed since."""
    _require_active(survivor)  # an erased one took the contacts merged into it along
    if restored.merged_into != survivor.id:
        raise DomainError(
            f"contact {restored.id} is not merged into {survivor.id}", field="contact_id"
        )
    own = set(survivor_before.identifiers) if survivor_before is not None else set()
    moved = [x for x in merge_event.moved.get(restored.id, []) if x not in own]
    changes = {
        name: merge_event.previous.get(name)
        for name, value in merge_event.changes.items()
        if name not in LIST_FIELDS
        and survivor.profile.get(name) == value
        and restored.profile.get(name) == value
    }
    changes.update(_identifiers_leaving(survivor, merge_event, moved))
    changes.update(_tags_leaving(survivor, restored, merge_event))
    return ContactUnmerged(
        survivor_id=survivor.id, restored_id=restored.id, changes=changes, moved=moved, actor=actor
    )


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396: null removes, objects merge recursively, anything else replaces."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_patch(result[key], value)
        else:
            result[key] = value
    return result


def _valid_profile(raw: dict[str, Any]) -> dict[str, Any]:
    try:
        return parse_profile(raw).as_json()
    except ProfileError as exc:
        raise DomainError(exc.reason, status=422, field=exc.field) from None


def _external_id(value: Any) -> str:
    try:
        return external_id(value if isinstance(value, str) else repr(value))
    except ValueError as exc:
        raise DomainError(f"external_ids: {exc}", status=422, field="external_ids") from None


def _new_external_ids(state: Contact, external: Any) -> list[str]:
    if external is None:
        return []
    if not isinstance(external, list):
        raise DomainError(
            "external_ids must be a list (ids can be added, not removed)",
            status=422,
            field="external_ids",
        )
    ids = [_external_id(x) for x in external]
    return [x for x in dict.fromkeys(ids) if x not in state.external_ids]


def erase(state: Contact, absorbed: list[str], *, actor: str | None) -> ContactErased:
    """Erase the contact and every contact merged into it (they are the same person)."""
    if state.status == "merged":
        raise DomainError(
            f"contact {state.id} was merged into {state.merged_into}; erase that contact",
            field="contact_id",
        )
    _require_active(state)
    return ContactErased(contact_id=state.id, erased_ids=absorbed, actor=actor)


def _require_active(state: Contact) -> None:
    if state.status == "erased":
        raise DomainError(f"contact {state.id} has been erased", status=410, field="contact_id")
    if state.status == "merged":
        raise DomainError(
            f"contact {state.id} was merged into {state.merged_into}", field="contact_id"
        )


def _chosen_fields(
    survivor: Contact, by_id: dict[str, Contact], choices: dict[str, str]
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name, source in choices.items():
        if name not in PROFILE_FIELDS:
            raise DomainError(f"{name}: not a contact field", status=422, field=f"fields.{name}")
        if source == survivor.id:
            continue
        if source not in by_id:
            raise DomainError(
                f"fields.{name}: {source!r} is not one of the merged contacts",
                status=422,
                field=f"fields.{name}",
            )
        value = by_id[source].profile.get(name)
        if value != survivor.profile.get(name):
            changes[name] = value
    return changes


def _with_union_of_lists(
    survivor: Contact, others: list[Contact], changes: dict[str, Any]
) -> dict[str, Any]:
    """Emails, phones and tags of every merged contact stay reachable on the survivor."""
    result = dict(changes)
    for name in LIST_FIELDS:
        own = survivor.profile.get(name) or []
        chosen = result.get(name) or []  # first, where another contact's list was chosen
        others_values = (v for c in others for v in c.profile.get(name, []))
        union = list(dict.fromkeys([*chosen, *own, *others_values]))
        if union != survivor.profile.get(name, []):
            result[name] = union
    return result


def _identifiers_leaving(
    survivor: Contact, merge_event: ContactMerged, moved: list[str]
) -> dict[str, Any]:
    """Emails and phones the restored contact brought leave the survivor again, except
    those the survivor had itself before the merge."""
    result: dict[str, Any] = {}
    for name, prefix in (("emails", "email:"), ("phones", "phone:")):
        if name not in merge_event.changes:
            continue
        own = set(merge_event.previous.get(name) or [])
        gone = {x.removeprefix(prefix) for x in moved if x.startswith(prefix)} - own
        current = survivor.profile.get(name, [])
        kept = [v for v in current if v not in gone]
        if kept != current:
            result[name] = kept
    return result


def _tags_leaving(
    survivor: Contact, restored: Contact, merge_event: ContactMerged
) -> dict[str, Any]:
    """Tags the restored contact brought leave the survivor again, except those the
    survivor had itself before the merge."""
    if "tags" not in merge_event.changes:
        return {}
    gone = set(restored.profile.get("tags", [])) - set(merge_event.previous.get("tags") or [])
    current = survivor.profile.get("tags", [])
    kept = [t for t in current if t not in gone]
    return {"tags": kept} if kept != current else {}
