"""Events: the CloudEvents envelope, the registry of typed event models, the catalogue."""

from crm_shared.events.catalog import CATALOG
from crm_shared.events.envelope import (
    BATCH_CONTENT_TYPE,
    CloudEvent,
    InvalidEvent,
    decode_envelope,
    new_event,
    parse_envelope,
)
from crm_shared.events.registry import Event, EventData, EventRegistry, type_name_of

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CATALOG",
    "CloudEvent",
    "Event",
    "EventData",
    "EventRegistry",
    "InvalidEvent",
    "decode_envelope",
    "new_event",
    "parse_envelope",
    "type_name_of",
]
