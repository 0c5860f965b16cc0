"""CloudEvents 1.0 envelope in JSON structured mode.

The envelope is validated at the edge: every rejection names the attribute at fault, so a
sender learns what to fix. `data` is left raw here and validated against the event type's
model by the registry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from crm_shared import tracecontext
from crm_shared.ids import new_id
from crm_shared.tracecontext import TraceContext

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class InvalidEvent(ValueError):
    """An event that cannot be accepted; `reason` says why and names the field."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope. `subject` names the customer the event is about."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    specversion: str = SPECVERSION
    id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=500)
    type: str = Field(min_length=1, max_length=200)
    subject: str | None = Field(default=None, min_length=1, max_length=500)
    time: datetime | None = None
    datacontenttype: str | None = "application/json"
    dataschema: str | None = None
    data: Any = None
    # CloudEvents Distributed Tracing extension: the W3C trace of the work that produced it.
    traceparent: str | None = Field(
        default=None, description="W3C trace context of the work that produced the event"
    )
    tracestate: str | None = Field(default=None, description="vendor trace state (W3C)")

    @field_validator("traceparent", mode="before")
    @classmethod
    def _valid_traceparent(cls, value: Any) -> str | None:
        # As W3C asks of a malformed header: ignore it (the event itself is fine).
        return tracecontext.normalized(value) if isinstance(value, str) else None

    @field_validator("tracestate", mode="before")
    @classmethod
    def _valid_tracestate(cls, value: Any, info: ValidationInfo) -> str | None:
        if not isinstance(value, str) or info.data.get("traceparent") is None:
            return None  # a state without a valid parent means nothing
        return tracecontext.parse_state(value)

    @field_validator("specversion")
    @classmethod
    def _supported_version(cls, value: str) -> str:
        if value != SPECVERSION:
            raise ValueError(f"specversion must be {SPECVERSION!r}")
        return value

    @field_validator("time")
    @classmethod
    def _aware_time(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("time must carry a time zone offset (RFC 3339)")
        try:
            return value.astimezone(UTC) if value is not None else None
        except OverflowError:  # 0001-01-01T00:00+01:00 is the year 0 in UTC
            raise ValueError("time is out of range (years 1 to 9999 in UTC)") from None

    @property
    def extensions(self) -> dict[str, Any]:
        """Extension attributes (anything beyond the spec's own)."""
        return dict(self.model_extra or {})

    def event_time(self) -> datetime:
        """When it happened in the world; events without `time` never reach a fold."""
        if self.time is None:
            raise InvalidEvent("time is required", field="time")
        return self.time

    def trace(self) -> TraceContext | None:
        """The trace the event belongs to (None when it carries none)."""
        return tracecontext.parse(self.traceparent, self.tracestate)

    def with_trace(self, context: TraceContext | None) -> CloudEvent:
        """The same event carrying `context` (itself when there is none to give)."""
        if context is None:
            return self
        return self.model_copy(
            update={"traceparent": context.traceparent, "tracestate": context.tracestate}
        )

    def to_json(self) -> bytes:
        """Structured-mode JSON, without unset optional attributes."""
        return self.model_dump_json(exclude_none=True).encode()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def new_event(
    *,
    type: str,
    source: str,
    subject: str,
    data: Any,
    time: datetime,
    id: str | None = None,
    trace: TraceContext | None = None,
    **extensions: Any,
) -> CloudEvent:
    """Build an envelope for an event this system emits. It joins the trace of what caused
    it: a new span under `trace` if given, else under the current trace, if any."""
    span = trace.child() if trace is not None else tracecontext.child_of_current()
    if span is not None:
        extensions = {"traceparent": span.traceparent, "tracestate": span.tracestate, **extensions}
    return CloudEvent(
        id=id or new_id(),
        source=source,
        type=type,
        subject=subject,
        time=time,
        data=data,
        **extensions,
    )


def parse_envelope(raw: Any) -> CloudEvent:
    """Validate a decoded JSON object as a CloudEvent; raise InvalidEvent naming the field."""
    if not isinstance(raw, dict):
        raise InvalidEvent("an event must be a JSON object")
    try:
        return CloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc) from None


def decode_envelope(payload: bytes | str) -> CloudEvent:
    """Decode structured-mode JSON bytes into a CloudEvent."""
    try:
        # Parsing and validating in one pass (pydantic-core) is the consumers' hot path.
        return CloudEvent.model_validate_json(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "json_invalid":
            raise InvalidEvent(f"not valid JSON: {error['msg']}") from None
        if error["type"] == "model_type" and not error["loc"]:
            raise InvalidEvent("an event must be a JSON object") from None
        raise _first_error(exc) from None


def _first_error(exc: ValidationError, prefix: str = "") -> InvalidEvent:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    field = prefix + location if location else prefix.rstrip(".")
    message = error["msg"].removeprefix("Value error, ")
    return InvalidEvent(f"{field}: {message}" if field else message, field=field or None)


def validation_reason(exc: ValidationError, prefix: str = "") -> InvalidEvent:
    """The first validation error as an InvalidEvent whose reason names the field."""
    return _first_error(exc, prefix)
