"""What a service's `/metrics` says about its consumers and its outbox."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from crm_shared.ops.api import unreachable
from crm_shared.ops.command import OpsError

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Lag:
    consumer: str
    topic: str
    partition: int
    lag: int


@dataclass(frozen=True)
class Snapshot:
    """One reading of a service's metrics (None: the service does not report it)."""

    service: str
    lags: tuple[Lag, ...]
    outbox_backlog: int | None
    outbox_parked: int | None
    published_position: int | None
    published_total: int
    parked_total: int
    relay_failures: int


def parse(service: str, text: str) -> Snapshot:
    lags: list[Lag] = []
    gauges: dict[str, int] = {}
    published = parked = failures = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, int(sample.value)
            if name == "crm_consumer_lag":
                lags.append(
                    Lag(labels["consumer"], labels["topic"], int(labels["partition"]), value)
                )
            elif name in (
                "crm_outbox_backlog",
                "crm_outbox_parked",
                "crm_outbox_published_position",
            ):
                gauges[name] = value
            elif name == "crm_events_published_total":
                published += value
            elif name == "crm_relay_parked_total":
                parked += value
            elif name == "crm_relay_failures_total":
                failures += value
    return Snapshot(
        service=service,
        lags=tuple(sorted(lags, key=lambda x: (x.consumer, x.topic, x.partition))),
        outbox_backlog=gauges.get("crm_outbox_backlog"),
        outbox_parked=gauges.get("crm_outbox_parked"),
        published_position=gauges.get("crm_outbox_published_position"),
        published_total=published,
        parked_total=parked,
        relay_failures=failures,
    )


async def scrape(client: httpx.AsyncClient, service: str, url: str) -> Snapshot:
    """Read a service's metrics; OpsError if it does not answer."""
    try:
        response = await client.get(f"{url}/metrics", timeout=TIMEOUT_S)
    except httpx.HTTPError as error:
        raise unreachable(service, url, error) from error
    if response.status_code != 200:
        raise OpsError(f"{service} answered {response.status_code} at {url}/metrics")
    return parse(service, response.text)
