"""The `crm` ops tool against running services (contacts and lifecycle as processes) and the
test broker: topics, imports, lag, tail, rebuild, republish, and refused tokens."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer

from crm_shared.messaging.topics import HEARTBEAT, INBOUND, MAIN_TOPICS, with_dlq
from crm_shared.ops import cli
from crm_shared.ops.metrics import scrape
from crm_shared.testing.broker import Broker, free_port
from crm_shared.testing.stack import Stack
from tests.support.events import purchase_json
from tests.support.kafka import eventually, produce

pytestmark = pytest.mark.e2e
TAG = uuid.uuid4().hex[:8]
PREFIX = f"ops{TAG}."
# The customer of the events this module sends (a key no other test uses).
CUSTOMER = f"cust-ops-{TAG}"


@dataclass(frozen=True)
class Run:
    status: int
    out: str
    err: str


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    env = {"CRM_FETCH_MAX_WAIT_MS": "10", "CRM_TOPIC_PREFIX": PREFIX}
    data_dir: Path = tmp_path_factory.mktemp("ops")
    stack = Stack(["contacts", "lifecycle"], bootstrap=broker.bootstrap, data_dir=data_dir, env=env)
    await stack.start_async()
    try:
        yield stack
    finally:
        await stack.stop_async()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def traffic(stack: Stack, broker: Broker) -> dict[str, Any]:
    """A purchase through contacts' API, and two records on crm.inbound: a valid event and
    one that is not JSON (dead-lettered by contacts)."""
    async with stack.client("contacts") as contacts:
        answer = await contacts.post("/v1/events", json=purchase_json(CUSTOMER))
        assert answer.status_code == 202, answer.text
    inbound = purchase_json(CUSTOMER, day=1)
    await produce(
        broker.bootstrap,
        PREFIX + INBOUND,
        [(CUSTOMER.encode(), json.dumps(inbound).encode()), (CUSTOMER.encode(), b"{not json")],
    )
    return inbound


def options(stack: Stack, broker: Broker, *, token: str | None = None) -> list[str]:
    return [
        "--url-contacts",
        stack.url("contacts"),
        "--url-lifecycle",
        stack.url("lifecycle"),
        "--bootstrap",
        broker.bootstrap,
        "--topic-prefix",
        PREFIX,
        "--token",
        token or stack.token(),
    ]


async def crm(
    capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
) -> Run:
    """Run the tool as `crm ARGV` would, with only the environment given."""
    capsys.readouterr()
    async with asyncio.timeout(30):
        status = await cli.run(list(argv), env=env or {})
    captured = capsys.readouterr()
    return Run(status, captured.out, captured.err)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("first_name,last_name,email,country\n" + "\n".join(rows) + "\n")
    return path


async def test_topics_create_makes_every_prefixed_topic_and_a_second_run_finds_them(
    capsys: pytest.CaptureFixture[str], broker: Broker
) -> None:
    prefix = f"opstopics{uuid.uuid4().hex[:8]}."
    argv = ["--bootstrap", broker.bootstrap, "topics", "create", "--prefix", prefix]

    first = await crm(capsys, *argv, "--partitions", "2")
    again = await crm(capsys, *argv)

    expected = {prefix + name for name in [*with_dlq(MAIN_TOPICS), HEARTBEAT]}
    assert first.status == 0, first.err
    assert "11 created, 0 existed" in first.out
    assert await partitions_of(broker.bootstrap, expected) == {name: 2 for name in expected}
    assert again.status == 0, again.err
    assert "0 created, 11 existed" in again.out
    # Asked for the default 4 partitions, the second run points out the 2 found.
    assert len(re.findall(r" exists +2 +\(not 4\)", again.out)) == 11


async def partitions_of(bootstrap: str, names: set[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        known = await consumer.topics()
        return {n: len(consumer.partitions_for_topic(n) or ()) for n in names if n in known}
    finally:
        await consumer.stop()


async def test_import_creates_the_contacts_and_reports_the_rows_that_failed(
    capsys: pytest.CaptureFixture[str], stack: Stack, broker: Broker, tmp_path: Path
) -> None:
    ada, charles = f"ada.{TAG}@example.com", f"charles.{TAG}@example.com"
    csv = write_csv(
        tmp_path / "people.csv",
        [f"Ada,Lovelace,{ada},GB", "Bad,Row,not-an-email,GB", f"Charles,Babbage,{charles},GB"],
    )

    run = await crm(capsys, *options(stack, broker), "import", str(csv))

    assert run.status == 1, run.err
    assert "3 row(s)" in run.out and "2 created" in run.out and "1 failed" in run.out
    assert re.search(r"row 2: emails?: .*not-an-email", run.out), run.out
    async with stack.client("contacts") as contacts:
        for email in (ada, charles):
            found = (await contacts.get("/v1/contacts", params={"q": email})).json()["items"]
            assert [c["profile"]["emails"] for c in found] == [[email]]


async def test_import_of_good_rows_exits_0_and_a_dry_run_writes_nothing(
    capsys: pytest.CaptureFixture[str], stack: Stack, broker: Broker, tmp_path: Path
) -> None:
    email = f"grace.{TAG}@example.com"
    csv = write_csv(tmp_path / "grace.csv", [f"Grace,Hopper,{email},US"])

    dry = await crm(capsys, *options(stack, broker), "import", str(csv), "--dry-run")

    assert dry.status == 0, dry.err
    assert "dry run" in dry.out and "1 created" in dry.out
    async with stack.client("contacts") as contacts:
        assert (await contacts.get("/v1/contacts", params={"q": email})).json()["items"] == []
    real = await crm(capsys, *options(stack, broker), "import", str(csv))
    assert real.status == 0, real.err
    assert "uploading grace.csv" in real.err


async def test_a_wrong_token_exits_1_with_the_401_detail_and_the_scope_needed(
    capsys: pytest.CaptureFixture[str], stack: Stack, broker: Broker, tmp_path: Path
) -> None:
    csv = write_csv(tmp_path / "one.csv", [f"Alan,Turing,alan.{TAG}@example.com,GB"])

    forged = await crm(capsys, *options(stack, broker, token="not-a-jwt"), "import", str(csv))
    read_only = stack.token(scopes=["contacts:read"])
    weak = await crm(capsys, *options(stack, broker, token=read_only), "import", str(csv))

    assert forged.status == 1
    assert "(401): the token is not a JWT" in forged.err
    assert "'contacts:write'" in forged.err
    assert weak.status == 1
    assert "(403)" in weak.err and "'contacts:write'" in weak.err


async def test_the_token_comes_from_the_dev_token_file_and_its_absence_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], stack: Stack, tmp_path: Path
) -> None:
    csv = write_csv(tmp_path / "file.csv", [f"Edsger,Dijkstra,edsger.{TAG}@example.com,NL"])
    env = {"CRM_CONTACTS_URL": stack.url("contacts"), "CRM_DATA_DIR": str(tmp_path / "var")}

    missing = await crm(capsys, "import", str(csv), env=env)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "dev-token").write_text(stack.token() + "\n")
    from_file = await crm(capsys, "import", str(csv), env=env)

    assert missing.status == 2
    assert "no bearer token" in missing.err
    assert from_file.status == 0, from_file.err


async def test_lag_prints_a_row_per_consumer_and_fails_when_a_service_does_not_answer(
    capsys: pytest.CaptureFixture[str], stack: Stack, broker: Broker, traffic: dict[str, Any]
) -> None:
    base = options(stack, broker)
    consumers = [
        rf"contacts +inbound +{re.escape(PREFIX + INBOUND)} +\d+ +\d+",
        rf"lifecycle +customer-events +{re.escape(PREFIX)}crm\.customer-events +\d+ +\d+",
    ]

    async def every_consumer_listed() -> Run | None:
        run = await crm(capsys, *base, "lag", "--service", "contacts", "lifecycle")
        return run if all(re.search(c, run.out) for c in consumers) else None

    run = await eventually(every_consumer_listed, within=20, interval=0.2)
    dead = f"http://127.0.0.1:{free_port()}"
    partial = await crm(capsys, *base, "--url-notifications", dead, "lag")

    assert run.status == 0, run.err
    assert re.search(r"contacts +\d+ +0 +\d+ +\d+ +0", run.out), run.out  # the outbox line
    assert partial.status == 1
    assert f"notifications does not answer at {dead}" in partial.err
    assert re.search(consumers[1], partial.out), "the services that answered are still shown"


async def test_tail_prints_the_records_sent_and_why_one_was_dead_lettered(
    capsys: pytest.CaptureFixture[str], stack: Stack, broker: Broker, traffic: dict[str, Any]
) -> None:
    base = options(stack, broker)
    key = ["--from-beginning", "--key", CUSTOMER]

    inbound = await crm(capsys, *base, "tail", INBOUND, *key, "--count", "2")
    dead = await crm(capsys, *base, "tail", f"{INBOUND}.dlq", *key, "--count", "1")
    as_json = await crm(
        capsys, *base, "tail", INBOUND, *key, "--type", "crm.purchase.*", "--json", "--idle", "1"
    )
    unknown = await crm(capsys, *base, "tail", "crm.no-such-topic", "--idle", "1")

    assert inbound.status == 0, inbound.err
    first, second = inbound.out.splitlines()
    assert f"key={CUSTOMER} type=crm.purchase.completed.v1 subject={CUSTOMER}" in first
    assert f"id={traffic['id']}" in first
    assert "not a CloudEvent, 9 bytes" in second
    assert dead.status == 0, dead.err
    assert 'dlq-reason="not valid JSON' in dead.out
    assert f"dlq-from={PREFIX}{INBOUND}/" in dead.out
    assert [json.loads(line)["event"]["id"] for line in as_json.out.splitlines()] == [traffic["id"]]
    assert unknown.status == 2
    assert f"no topic '{PREFIX}crm.no-such-topic'" in unknown.err


async def test_rebuild_of_lifecycle_succeeds_and_of_notifications_is_refused(
    capsys: pytest.CaptureFixture[str], stack: Stack, broker: Broker, traffic: dict[str, Any]
) -> None:
    async def stage_known() -> bool:
        async with stack.client("lifecycle") as lifecycle:
            return (await lifecycle.get(f"/v1/customers/{CUSTOMER}/stage")).status_code == 200

    await eventually(stage_known, within=20)

    rebuilt = await crm(capsys, *options(stack, broker), "rebuild", "lifecycle")
    refused = await crm(capsys, *options(stack, broker), "rebuild", "notifications")

    assert rebuilt.status == 0, rebuilt.err
    result = json.loads(rebuilt.out[rebuilt.out.index("{") : rebuilt.out.rindex("}") + 1])
    assert result["customers"] >= 1
    assert re.search(r"lifecycle rebuilt in \d+\.\ds", rebuilt.out)
    assert refused.status == 2
    assert "notifications has no rebuild" in refused.err


async def test_republish_reports_the_count_and_follows_until_the_relay_sent_them(
    capsys: pytest.CaptureFixture[str], stack: Stack, broker: Broker, traffic: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        before = await scrape(client, "contacts", stack.url("contacts"))

        run = await crm(capsys, *options(stack, broker), "republish", "--from-id", "1")

        after = await scrape(client, "contacts", stack.url("contacts"))
    assert run.status == 0, run.err
    marked = re.search(r"contacts: (\d+) message\(s\) from outbox id 1", run.out)
    assert marked is not None, run.out
    count = int(marked[1])
    assert count >= 2  # at least the purchase and the contact it created
    assert f"published {count} message(s) again" in run.out
    assert f"{count}/{count} msg 100%" in run.err
    assert after.published_total - before.published_total >= count


async def test_republish_takes_any_services_outbox(
    capsys: pytest.CaptureFixture[str], stack: Stack, broker: Broker, traffic: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:

        async def stage_change_published() -> bool:
            snapshot = await scrape(client, "lifecycle", stack.url("lifecycle"))
            return (snapshot.published_position or 0) > 0

        await eventually(stage_change_published, within=20)
        run = await crm(capsys, *options(stack, broker), "republish", "--service", "lifecycle")
    assert run.status == 0, run.err
    marked = re.search(r"lifecycle: (\d+) message\(s\) from outbox id 1", run.out)
    assert marked is not None, run.out
    assert int(marked[1]) >= 1
    assert f"published {marked[1]} message(s) again" in run.out
