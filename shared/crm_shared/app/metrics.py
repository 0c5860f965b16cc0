"""Prometheus metrics of one service, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "crm_http_requests", "HTTP requests served", ["method", "route", "status"], registry=r
        )
        self.http_latency = Histogram(
            "crm_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.events_consumed = Counter(
            "crm_events_consumed", "Events applied by a consumer", ["consumer", "topic"], registry=r
        )
        self.events_duplicate = Counter(
            "crm_events_duplicate",
            "Redelivered events skipped by the inbox",
            ["consumer"],
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "crm_events_dead_lettered",
            "Messages sent to a dead-letter topic",
            ["consumer", "topic"],
            registry=r,
        )
        self.events_published = Counter(
            "crm_events_published", "Messages published from the outbox", ["topic"], registry=r
        )
        self.consumer_lag = Gauge(
            "crm_consumer_lag",
            "Messages behind the partition's high watermark as last fetched",
            ["consumer", "topic", "partition"],
            registry=r,
        )
        self.consumer_batch_seconds = Histogram(
            "crm_consumer_batch_seconds",
            "Time to apply one consumed batch",
            ["consumer"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.outbox_backlog = Gauge(
            "crm_outbox_backlog", "Outbox messages not yet published", registry=r
        )
        self.outbox_parked = Gauge(
            "crm_outbox_parked",
            "Outbox messages set aside because no broker would take them (too large)",
            registry=r,
        )
        self.relay_parked = Counter(
            "crm_relay_parked", "Outbox messages this process's relay parked", registry=r
        )
        self.outbox_position = Gauge(
            "crm_outbox_published_position", "Id of the newest outbox message published", registry=r
        )
        self.relay_failures = Counter(
            "crm_relay_failures",
            "Outbox publish rounds that failed and will be retried",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
