"""--max-connection-age-seconds: clients are moved to new connections (so a dns:/// client
re-resolves and finds new replicas) without a failed call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from recserve import Client
from recserve.server.app import RunningServer, ServeOptions, build_server

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")

CALLING_SECONDS = 4.0
ESTABLISHED = "01"


def client_ports(server_port: int) -> set[int]:
    """Remote ports of the established TCP connections to ``server_port`` (grpc's sockets
    are IPv6 ones taking IPv4 too, so both tables)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            local, remote, state = line.split()[1:4]
            if state == ESTABLISHED and int(local.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(remote.rsplit(":", 1)[1], 16))
    return ports


@contextmanager
def serving(model_repo: Path, age: float) -> Iterator[RunningServer]:
    running = build_server(
        ServeOptions(model_repo=model_repo, port=0, metrics_port=-1, max_connection_age_seconds=age)
    )
    running.repository.load_all()
    running.set_serving(True)
    try:
        yield running
    finally:
        running.stop(0)


def calls_and_connections(running: RunningServer) -> tuple[int, list[Exception], set[int]]:
    """Rank calls from one client for CALLING_SECONDS: (calls, failures, client ports the
    server saw, sampled every 20 ms)."""
    seen: set[int] = set()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.update(client_ports(running.port))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    items = running.repository.get().pipeline.item_ids[:20].tolist()
    calls, failures = 0, []
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=10) as client:
            deadline = time.monotonic() + CALLING_SECONDS
            while time.monotonic() < deadline:
                try:
                    client.rank(1 + calls % 50, items, k=3)
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    failures.append(exc)
                calls += 1
    finally:
        done.set()
        sampler.join()
    return calls, failures, seen


@pytest.mark.parametrize("age", [0.0, 1.0])
def test_old_connections_are_replaced_without_a_failed_call(model_repo: Path, age: float) -> None:
    with serving(model_repo, age) as running:
        calls, failures, ports = calls_and_connections(running)
    print(f"\nage {age:g} s: {calls} calls, {len(failures)} failed, {len(ports)} connections")
    assert calls > 0 and failures == []
    if age:  # 4 s of calls: the first connection and at least two replacements
        assert len(ports) >= 3, ports
    else:  # the control: one connection throughout
        assert len(ports) == 1, ports
