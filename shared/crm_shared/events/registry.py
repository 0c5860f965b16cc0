"""The event registry: every event type is a frozen, typed model with a versioned name.

A type name is namespaced and versioned (`crm.purchase.completed.v1`); a change that is not
backwards compatible gets a new name (`...v2`), so stored and in-flight events keep their
meaning forever.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from crm_shared.events.envelope import CloudEvent, InvalidEvent, validation_reason

TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_-]*)+\.v[1-9][0-9]*$")
OPEN_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,150}$")


class EventData(BaseModel):
    """Base of every event payload: immutable, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


D = TypeVar("D", bound=EventData)
M = TypeVar("M", bound=type[EventData])


@dataclass(frozen=True, slots=True)
class Event(Generic[D]):
    """A validated event: its envelope and its typed payload."""

    envelope: CloudEvent
    data: D
    # The envelope's, copied once: consumers read them several times per event at every
    # step of a batch (9 reads of `id` per event in the CDNOW replay), where a property
    # call cost 3x an attribute.
    id: str = field(init=False)
    type: str = field(init=False)
    subject: str = field(init=False)

    def __post_init__(self) -> None:
        envelope = self.envelope
        assert envelope.subject is not None  # the registry refuses events without one
        object.__setattr__(self, "id", envelope.id)
        object.__setattr__(self, "type", envelope.type)
        object.__setattr__(self, "subject", envelope.subject)

    @property
    def time(self) -> Any:
        return self.envelope.event_time()


class EventRegistry:
    """Maps type names to payload models; validates envelopes against them."""

    def __init__(self) -> None:
        self._models: dict[str, type[EventData]] = {}
        self._open: dict[str, type[EventData]] = {}

    def register(self, type_name: str) -> Callable[[M], M]:
        """Class decorator: register a payload model under a versioned type name."""
        if not TYPE_NAME.match(type_name):
            raise ValueError(f"event type {type_name!r} must be namespaced and end in .vN")

        def decorate(model: M) -> M:
            if type_name in self._models:
                raise ValueError(f"event type {type_name!r} is registered twice")
            self._models[type_name] = model
            model.__event_type__ = type_name  # type: ignore[attr-defined]
            return model

        return decorate

    def register_open(self, prefix: str, model: type[EventData]) -> None:
        """Accept every type under `prefix` (for instance `custom.`) with one payload model."""
        if not prefix.endswith("."):
            raise ValueError("an open prefix ends with a dot")
        self._open[prefix] = model

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._models

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._models))

    def model_for(self, type_name: str) -> type[EventData]:
        model = self._models.get(type_name)
        if model is not None:
            return model
        for prefix, open_model in self._open.items():
            if type_name.startswith(prefix) and OPEN_NAME.match(type_name[len(prefix) :]):
                return open_model
        raise InvalidEvent(f"type: unknown event type {type_name!r}", field="type")

    def validate(self, envelope: CloudEvent) -> Event[EventData]:
        """Check the envelope's type, subject, time and payload; raise InvalidEvent if wrong."""
        model = self.model_for(envelope.type)
        if not envelope.subject:
            raise InvalidEvent(
                "subject: required (the customer the event is about)", field="subject"
            )
        if envelope.time is None:
            raise InvalidEvent("time: required (when it happened, RFC 3339)", field="time")
        if not isinstance(envelope.data, dict):
            raise InvalidEvent("data: must be a JSON object", field="data")
        try:
            data = model.model_validate(envelope.data)
        except ValidationError as exc:
            raise validation_reason(exc, prefix="data.") from None
        return Event(envelope=envelope, data=data)

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """The JSON Schema of every registered payload, by type name."""
        schemas = {name: self._models[name].model_json_schema() for name in self}
        schemas.update({f"{p}*": m.model_json_schema() for p, m in self._open.items()})
        return schemas


def type_name_of(model: type[EventData]) -> str:
    """The registered type name of a payload model."""
    name: str = model.__event_type__  # type: ignore[attr-defined]
    return name
