"""The harness that runs services as child processes: ports and who answers on them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from crm_shared.testing.broker import Broker, free_ports, port_is_free
from crm_shared.testing.stack import ServiceError, ServiceProcess, Stack, sqlite_url

pytestmark = pytest.mark.broker


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(64)
    assert len(set(ports)) == 64
    assert all(port_is_free("127.0.0.1", port) for port in ports)


def test_a_stack_gives_each_service_its_own_port(broker: Broker, tmp_path: Path) -> None:
    # Ports picked one at a time can repeat, and then one service answers for another.
    for _ in range(20):
        stack = Stack(bootstrap=broker.bootstrap, data_dir=tmp_path)
        assert len({stack[name].port for name in stack.names}) == len(stack.names)


def test_a_chosen_port_is_kept_and_never_handed_to_another_service(
    broker: Broker, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen = sock.getsockname()[1]
    stack = Stack(bootstrap=broker.bootstrap, data_dir=tmp_path, ports={"scoring": chosen})
    assert stack["scoring"].port == chosen
    assert [name for name in stack.names if stack[name].port == chosen] == ["scoring"]


def test_readiness_answered_by_another_service_is_not_taken_for_ours(
    broker: Broker, tmp_path: Path
) -> None:
    # A lifecycle process under the name "scoring": what a shared port looks like from outside.
    impostor = ServiceProcess(
        "scoring",
        module="lifecycle.main",
        port=free_ports(1)[0],
        bootstrap=broker.bootstrap,
        database_url=sqlite_url(tmp_path / "lifecycle.db"),
        log_path=tmp_path / "impostor.log",
        env={"CRM_DATA_DIR": str(tmp_path)},
    )
    impostor.start()
    try:
        with pytest.raises(ServiceError, match="answered by 'lifecycle'"):
            impostor.wait_ready(within=60)
    finally:
        impostor.stop()
