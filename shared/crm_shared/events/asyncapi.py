"""An AsyncAPI 3.0 document of the Kafka side of one service, generated from the registry.

Channels are every topic (with its dead-letter twin and the relays' heartbeat topic) under
the configured prefix; messages are every registered event type, in its CloudEvents
envelope, with the type's JSON Schema as the `data`; operations are what this service
sends and receives. Like the OpenAPI document, it is built from the code, so it cannot
drift from what the services accept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crm_shared.events.envelope import CONTENT_TYPE, CloudEvent
from crm_shared.events.registry import EventRegistry
from crm_shared.messaging.topics import (
    CUSTOMER_EVENTS,
    HEARTBEAT,
    INBOUND,
    LIFECYCLE,
    MAIN_TOPICS,
    OUTREACH,
    SCORES,
    dlq_topic,
)

ASYNCAPI = "3.0.0"
KAFKA_BINDING = "0.5.0"
# What each service-owned topic carries (by type-name prefix, so a `.v2` lands there too);
# every other type is a customer event: sent to crm.inbound, published on customer-events.
SERVICE_OUTPUTS: dict[str, tuple[str, ...]] = {
    LIFECYCLE: ("crm.lifecycle.",),
    SCORES: ("crm.score.",),
    OUTREACH: ("crm.outreach.sent.", "crm.outreach.suppressed.", "crm.outreach.failed."),
}
DEAD_LETTER = "DeadLetter"
HEARTBEAT_MESSAGE = "Heartbeat"
ENVELOPE = "CloudEvent"
HEADERS = "KafkaHeaders"
_KEY = re.compile(r"[^a-zA-Z0-9.\-_]")


@dataclass(frozen=True)
class ServiceTopics:
    """One service's Kafka side: what it publishes and, per consumer (inbox name), what it
    consumes; and where (bootstrap servers, topic prefix, partitions, consumer group)."""

    name: str
    publishes: Sequence[str]
    consumes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = 4
    consumer_group: str = ""


def document(
    service: ServiceTopics,
    registry: EventRegistry,
    *,
    title: str,
    version: str,
    description: str = "",
) -> dict[str, Any]:
    """The AsyncAPI document of `service`'s topics, messages and operations."""
    types = sorted(registry.json_schemas())
    return {
        "asyncapi": ASYNCAPI,
        "info": {"title": title, "version": version, "description": description},
        "defaultContentType": CONTENT_TYPE,
        "servers": _servers(service.bootstrap),
        "channels": _channels(service, types),
        "operations": _operations(service, types),
        "components": _components(registry),
    }


def message_key(type_name: str) -> str:
    """A component key for an event type (`custom.*` becomes `custom`)."""
    return _KEY.sub("", type_name).rstrip(".")


def types_on(topic: str, types: Iterable[str]) -> list[str]:
    """The event types a topic carries."""
    if topic in SERVICE_OUTPUTS:
        return [t for t in types if t.startswith(SERVICE_OUTPUTS[topic])]
    if topic in (INBOUND, CUSTOMER_EVENTS):
        owned = tuple(p for prefixes in SERVICE_OUTPUTS.values() for p in prefixes)
        return [t for t in types if not t.startswith(owned)]
    return []


def _servers(bootstrap: str) -> dict[str, Any]:
    hosts = [h.strip() for h in bootstrap.split(",") if h.strip()]
    return {
        f"kafka-{n}": {
            "host": host,
            "protocol": "kafka",
            "description": "a bootstrap server (CRM_KAFKA_BOOTSTRAP)",
        }
        for n, host in enumerate(hosts, start=1)
    }


def _channels(service: ServiceTopics, types: list[str]) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    for topic in MAIN_TOPICS:
        keys = [message_key(t) for t in types_on(topic, types)]
        channels[topic] = _channel(service, topic, keys, _TOPIC_DESCRIPTIONS[topic])
        channels[dlq_topic(topic)] = _channel(
            service,
            dlq_topic(topic),
            [DEAD_LETTER],
            f"What consumers of {topic} could not accept, with the reason in its headers.",
        )
    channels[HEARTBEAT] = _channel(
        service,
        HEARTBEAT,
        [HEARTBEAT_MESSAGE],
        "Tiny records whose offsets tell a relay the broker kept its log.",
    )
    return channels


def _channel(service: ServiceTopics, topic: str, keys: list[str], about: str) -> dict[str, Any]:
    address = service.topic_prefix + topic
    return {
        "address": address,
        "description": about,
        "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in keys},
        "bindings": {
            "kafka": {
                "topic": address,
                "partitions": service.partitions,
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }


def _operations(service: ServiceTopics, types: list[str]) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for topic in service.publishes:
        operations[f"send.{topic}"] = _operation("send", topic, _keys_on(topic, types))
    dead: list[str] = []
    for consumer, topics in service.consumes.items():
        for topic in topics:
            operation = _operation("receive", topic, _keys_on(topic, types))
            operation["bindings"] = _consumer_binding(service, consumer)
            operations[f"receive.{consumer}.{topic}"] = operation
            dead += [dlq_topic(topic)] if dlq_topic(topic) not in dead else []
    for topic in dead:
        operations[f"send.{topic}"] = _operation("send", topic, [DEAD_LETTER])
    operations[f"send.{HEARTBEAT}"] = _operation("send", HEARTBEAT, [HEARTBEAT_MESSAGE])
    return operations


def _keys_on(topic: str, types: list[str]) -> list[str]:
    return [message_key(t) for t in types_on(topic, types)]


def _operation(action: str, topic: str, keys: list[str]) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{topic}"},
        "messages": [{"$ref": f"#/channels/{topic}/messages/{key}"} for key in keys],
    }


def _consumer_binding(service: ServiceTopics, consumer: str) -> dict[str, Any]:
    group = f"{service.consumer_group}.{consumer}"
    return {
        "kafka": {
            "groupId": {"type": "string", "enum": [group]},
            "clientId": {"type": "string", "enum": [f"crm-{service.name}-{consumer}"]},
            "bindingVersion": KAFKA_BINDING,
        }
    }


def _components(registry: EventRegistry) -> dict[str, Any]:
    schemas: dict[str, Any] = {ENVELOPE: CloudEvent.model_json_schema(), HEADERS: _HEADERS}
    messages: dict[str, Any] = {DEAD_LETTER: _DEAD_LETTER, HEARTBEAT_MESSAGE: _HEARTBEAT}
    for type_name, schema in registry.json_schemas().items():
        key = message_key(type_name)
        schemas[key] = _hoisted(key, schema, schemas)
        messages[key] = _message(type_name, key, schema)
    return {"schemas": schemas, "messages": messages}


def _hoisted(key: str, schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """The schema with its local `$defs` moved into the components (a `#/$defs/...`
    reference would otherwise point into the AsyncAPI document's root)."""
    if "$defs" not in schema:
        return schema
    defs = schema["$defs"]
    rename = {f"#/$defs/{name}": f"#/components/schemas/{key}.{name}" for name in defs}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: rename.get(v, v) if k == "$ref" else rewrite(v) for k, v in node.items()}
        return [rewrite(item) for item in node] if isinstance(node, list) else node

    for name, definition in defs.items():
        schemas[f"{key}.{name}"] = rewrite(definition)
    hoisted: dict[str, Any] = rewrite({k: v for k, v in schema.items() if k != "$defs"})
    return hoisted


def _message(type_name: str, key: str, schema: dict[str, Any]) -> dict[str, Any]:
    about = (schema.get("description") or "").strip()
    type_rule = (
        {"const": type_name}
        if not type_name.endswith("*")
        else {"pattern": "^" + re.escape(type_name[:-1]) + r"[a-z0-9][a-z0-9_.-]*$"}
    )
    return {
        "name": type_name,
        "title": schema.get("title", key),
        "summary": about.splitlines()[0] if about else type_name,
        "description": about,
        "contentType": CONTENT_TYPE,
        "headers": {"$ref": f"#/components/schemas/{HEADERS}"},
        "payload": {
            "allOf": [
                {"$ref": f"#/components/schemas/{ENVELOPE}"},
                {
                    "type": "object",
                    "required": ["subject", "time", "data"],
                    "properties": {
                        "type": type_rule,
                        "subject": {"type": "string", "description": "the customer"},
                        "time": {"type": "string", "format": "date-time"},
                        "data": {"$ref": f"#/components/schemas/{key}"},
                    },
                },
            ]
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "the customer id (the subject): one customer, one partition",
                },
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }


_TOPIC_DESCRIPTIONS = {
    INBOUND: "Raw customer events from other systems; contacts validates, resolves and "
    "publishes them on crm.customer-events (invalid ones go to crm.inbound.dlq).",
    CUSTOMER_EVENTS: "Canonical customer events (subject and key = contact id) and contact "
    "record changes, published by contacts.",
    LIFECYCLE: "Lifecycle stage changes with their reason, published by lifecycle.",
    SCORES: "Material changes of a customer's scores, published by scoring.",
    OUTREACH: "What happened to each outreach message, published by notifications.",
}
_HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "content-type": {"type": "string", "const": CONTENT_TYPE},
        "crm-seq": {"type": "string", "description": "the publishing service's outbox id"},
        "traceparent": {"type": "string", "description": "W3C trace context (as the event's)"},
        "tracestate": {"type": "string", "description": "W3C vendor trace state"},
    },
}
_DEAD_LETTER: dict[str, Any] = {
    "name": "dead letter",
    "title": "A message a consumer could not accept",
    "summary": "The original key, value (at most 900 kB) and headers, plus why.",
    "contentType": "application/octet-stream",
    "payload": {"description": "the original message value, unchanged (maybe not JSON)"},
    "headers": {
        "type": "object",
        "required": ["crm-dlq-reason", "crm-dlq-topic", "crm-dlq-consumer"],
        "properties": {
            name: {"type": "string", "description": about}
            for name, about in {
                "crm-dlq-reason": "why it was rejected, naming the field at fault",
                "crm-dlq-topic": "where it was consumed",
                "crm-dlq-partition": "its partition there",
                "crm-dlq-offset": "its offset there",
                "crm-dlq-consumer": "the consumer (inbox name) that rejected it",
                "crm-dlq-service": "the service that rejected it",
                "crm-dlq-truncated": "true when the value was cut to fit",
            }.items()
        },
    },
}
_HEARTBEAT: dict[str, Any] = {
    "name": "heartbeat",
    "title": "Relay heartbeat",
    "summary": "An empty object keyed by the service name; consumers need not read it.",
    "contentType": "application/json",
    "payload": {"type": "object", "maxProperties": 0},
    "bindings": {
        "kafka": {
            "key": {"type": "string", "description": "the service name"},
            "bindingVersion": KAFKA_BINDING,
        }
    },
}
