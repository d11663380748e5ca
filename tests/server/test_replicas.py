"""Stateless replicas: client-side round-robin over two `recserve serve` processes,
failover when one is killed, and a catalog sharded across servers, merged exactly."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from recserve import Client
from recserve.client import REPLICA_SERVICE_CONFIG, ShardedCatalog, channel_target
from recserve.engine.artifact import load_artifact
from recserve.engine.sharding import split_artifact
from recserve.loadtest import BenchOptions, run
from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.training import topn
from recserve.training.data import make_synthetic_movielens

START_SECONDS = 90.0  # most a replica process may take to import, load and say SERVING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bpr_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    data = make_synthetic_movielens(n_users=50, n_items=40, n_interactions=700, seed=2)
    repo = tmp_path_factory.mktemp("replicas-repo")
    topn.train_bpr(data, topn.BPRConfig(epochs=2, embedding_dim=8)).export(repo, "bpr", "synthetic")
    return repo


# -- replicas and failover ------------------------------------------------------------


class _Replica:
    def __init__(self, repo: Path) -> None:
        self.port, self.metrics_port = _free_port(), _free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recserve.cli",
                "serve",
                "--model-repo",
                str(repo),
                "--port",
                str(self.port),
                "--metrics-port",
                str(self.metrics_port),
                "--poll-seconds",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, deadline: float) -> None:
        with Client(self.target, timeout=2) as probe:
            while not probe.is_serving():
                if self.process.poll() is not None:
                    raise AssertionError(f"replica exited: {self.process.stderr.read()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"replica {self.target} not SERVING in time")
                time.sleep(0.2)

    def recommend_count(self) -> int:
        """Finished Recommend calls, from the replica's own /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return int(
            sum(
                sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "recserve_requests"
                for sample in family.samples
                if sample.name == "recserve_requests_total" and sample.labels["rpc"] == "Recommend"
            )
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.process.stderr.close()


@pytest.fixture
def replicas(bpr_repo: Path) -> Iterator[list[_Replica]]:
    started = [_Replica(bpr_repo), _Replica(bpr_repo)]
    try:
        deadline = time.monotonic() + START_SECONDS
        for replica in started:
            replica.wait_serving(deadline)
        yield started
    finally:
        for replica in started:
            replica.stop()


class _Traffic:
    """Threads sending Recommend back to back; each call timed and its outcome kept."""

    def __init__(self, client: Client, threads: int = 3) -> None:
        self.client = client
        self.calls: list[tuple[float, float, str]] = []  # (start, end, "" or error)
        self.lock = threading.Lock()
        self.go = threading.Event()
        self.stopping = threading.Event()
        self.idle = [threading.Event() for _ in range(threads)]
        self.threads = [
            threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(threads)
        ]

    def _loop(self, n: int) -> None:
        rng = np.random.default_rng(n)
        while not self.stopping.is_set():
            if not self.go.is_set():
                self.idle[n].set()
                self.go.wait(0.05)
                continue
            self.idle[n].clear()
            start = time.monotonic()
            try:
                self.client.recommend(int(rng.integers(1, 60)), k=5, model="bpr")
                error = ""
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                error = str(exc)
            with self.lock:
                self.calls.append((start, time.monotonic(), error))

    def start(self) -> None:
        self.go.set()
        for thread in self.threads:
            thread.start()

    def pause(self) -> None:
        """Returns once no call is in flight."""
        self.go.clear()
        for idle in self.idle:
            assert idle.wait(10)

    def resume(self) -> None:
        for idle in self.idle:
            idle.clear()
        self.go.set()

    def stop(self) -> None:
        self.stopping.set()
        self.go.set()
        for thread in self.threads:
            thread.join(15)

    def completed(self) -> int:
        with self.lock:
            return len(self.calls)


@pytest.mark.slow  # two `recserve serve` processes start: 10-20 s on 2 shared cores
def test_round_robin_and_failover(replicas: list[_Replica]) -> None:
    survivor, victim = replicas
    policy = REPLICA_SERVICE_CONFIG["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 5
    targets = [survivor.target, victim.target]
    assert channel_target(targets)[0] == f"ipv4:{survivor.target},{victim.target}"
    before = [r.recommend_count() for r in replicas]
    with Client(targets, timeout=10) as client:
        traffic = _Traffic(client)
        traffic.start()
        time.sleep(1.5)
        traffic.pause()  # nothing in flight: the counters can be compared exactly
        phase1 = traffic.completed()
        counts = [r.recommend_count() - b for r, b in zip(replicas, before, strict=True)]
        # both replicas got requests, and they add up to what the client sent
        assert min(counts) > 0, counts
        assert sum(counts) == phase1, (counts, phase1)
        # round robin: about half each (not weighted by anything)
        assert min(counts) >= 0.3 * phase1, counts
        survivor_at_pause = survivor.recommend_count()

        traffic.resume()
        time.sleep(0.5)
        killed_at = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        time.sleep(2.0)
        traffic.stop()

    errors = [call for call in traffic.calls if call[2]]
    assert errors == [], errors[:3]
    after_kill = [call for call in traffic.calls if call[0] >= killed_at]
    straddling = [call for call in traffic.calls if call[0] < killed_at <= call[1]]
    assert len(after_kill) > 20
    # Every call that started after the kill was answered by the survivor, which
    # counted at least those (and the victim's share between resume and the kill is
    # the rest of the calls since the pause).
    survivor_since_pause = survivor.recommend_count() - survivor_at_pause
    assert survivor_since_pause >= len(after_kill)
    assert survivor_since_pause <= len(traffic.calls) - phase1
    print(
        f"\nreplicas: phase 1 {phase1} calls split {counts}; after SIGKILL of one "
        f"{len(after_kill)} calls, all on the survivor; {len(straddling)} calls spanned the "
        f"kill; {len(errors)} errors"
    )


def _served(running: RunningServer) -> int:
    labels = {"rpc": "Recommend", "model": "bpr", "version": "1", "code": "OK"}
    return int(running.metrics.registry.get_sample_value("recserve_requests_total", labels) or 0)


def _wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_health_checked_balancing_and_graceful_drain(bpr_repo: Path) -> None:
    """A replica that says NOT_SERVING gets no calls; one stopped gracefully (as on
    SIGTERM: NOT_SERVING, drain, close) costs no call an error."""
    a, b = _in_process_server(bpr_repo), _in_process_server(bpr_repo)
    try:
        with Client([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], timeout=10) as client:
            for user in range(20):
                client.recommend(user + 1, k=3, model="bpr")
            assert _served(a) > 0 and _served(b) > 0
            a.set_serving(False)  # pushed to the client by its health Watch
            _wait_until(lambda: _sends_only_to(client, b, a))
            before = _served(a), _served(b)
            for user in range(30):
                client.recommend(user + 1, k=3, model="bpr")
            assert (_served(a), _served(b)) == (before[0], before[1] + 30)
            a.set_serving(True)
            _wait_until(lambda: not _sends_only_to(client, b, a))

            traffic = _Traffic(client)
            traffic.start()
            time.sleep(0.5)
            a.stop(2.0)
            stopped = time.monotonic()
            time.sleep(0.5)
            traffic.stop()
        errors = [call for call in traffic.calls if call[2]]
        assert errors == [], errors[:3]
        assert sum(1 for call in traffic.calls if call[0] > stopped) > 10
    finally:
        a.stop(0)
        b.stop(0)


def _sends_only_to(client: Client, to: RunningServer, other: RunningServer) -> bool:
    """Whether 10 calls in a row all reached ``to`` (none ``other``)."""
    before = _served(other)
    for user in range(10):
        client.recommend(user + 1, k=3, model="bpr")
    return _served(other) == before


def test_bench_balances_over_several_targets(bpr_repo: Path, tmp_path: Path) -> None:
    a, b = _in_process_server(bpr_repo), _in_process_server(bpr_repo)
    try:
        targets = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
        options = BenchOptions(
            target=targets, rpc="recommend", model="bpr", concurrency=4, processes=1,
            duration=1.0, warmup=0.2, seed=1, json=str(tmp_path / "bench.json"), progress=False,
        )  # fmt: skip
        out, err = io.StringIO(), io.StringIO()
        assert run(options, out, err) == 0, err.getvalue()
        report = json.loads((tmp_path / "bench.json").read_text())
        assert report["targets"] == 2 and report["target"] == targets
        assert report["requests"]["errors"] == 0 and report["requests"]["completed"] > 0
        assert f"2 targets ({targets})" in err.getvalue() and "2 targets" in out.getvalue()
        sent = report["requests"]["sent"] + report["warmup_requests"]
        assert _served(a) + _served(b) == sent  # both together served every request,
        assert min(_served(a), _served(b)) >= 0.3 * sent  # about half each
    finally:
        a.stop(0)
        b.stop(0)


def test_client_without_list_keeps_one_channel_as_before() -> None:
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", False)
    assert channel_target("dns:///recserve.internal:50051") == (
        "dns:///recserve.internal:50051",
        True,
    )
    with pytest.raises(ValueError, match="DNS name"):
        channel_target(["recserve-a:1", "recserve-b:1"])


# -- a catalog sharded across servers --------------------------------------------------


def _in_process_server(repo: Path) -> RunningServer:
    running = build_server(ServeOptions(model_repo=repo, port=0, metrics_port=-1))
    running.repository.load_all()
    running.set_serving(True)
    return running


@pytest.fixture(scope="module")
def sharded_servers(
    bpr_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, list[RunningServer]]]:
    out = tmp_path_factory.mktemp("shards")
    paths = split_artifact(bpr_repo / "bpr" / "1", 2, out)
    assert paths == [out / "shard-0" / "bpr" / "1", out / "shard-1" / "bpr" / "1"]
    whole = _in_process_server(bpr_repo)
    shards = [_in_process_server(out / f"shard-{s}") for s in range(2)]
    yield whole, shards
    for running in [whole, *shards]:
        running.stop(0)


def test_split_artifact_tables(bpr_repo: Path, tmp_path: Path) -> None:
    source = load_artifact(bpr_repo / "bpr" / "1")
    paths = split_artifact(source.path, 3, tmp_path)
    shards = [load_artifact(p) for p in paths]  # every checksum verified
    t = source.tables
    for key in ("item_ids", "item_titles", "item_vectors", "popularity"):
        np.testing.assert_array_equal(np.concatenate([s.tables[key] for s in shards]), t[key])
    np.testing.assert_array_equal(shards[0].tables["user_vectors"], t["user_vectors"])
    offsets = np.cumsum([0] + [s.tables["item_ids"].size for s in shards])
    for user in range(t["user_ids"].size):
        seen = t["seen_items"][t["seen_indptr"][user] : t["seen_indptr"][user + 1]]
        parts = [
            s.tables["seen_items"][
                s.tables["seen_indptr"][user] : s.tables["seen_indptr"][user + 1]
            ]
            + offset
            for s, offset in zip(shards, offsets, strict=False)
        ]
        np.testing.assert_array_equal(np.concatenate(parts), seen)
    assert [s.manifest["shard"]["item_rows"] for s in shards] == [[0, 13], [13, 26], [26, 40]]
    assert shards[1].schema.features[1].cardinality == 14


def test_split_refuses_a_family_that_reads_the_whole_catalog(tmp_path: Path) -> None:
    data = make_synthetic_movielens(n_users=20, n_items=15, n_interactions=200, seed=3)
    config = topn.SequenceConfig(
        epochs=1, embedding_dim=4, hidden_size=4, max_length=5, num_threads=1
    )
    path = topn.train_sequence(data, config).export(tmp_path / "repo", "gru", "synthetic")
    with pytest.raises(ValueError, match="cannot be sharded"):
        split_artifact(path, 2, tmp_path / "out")


@pytest.mark.parametrize("include_seen", [False, True])
def test_sharded_recommend_equals_unsharded(
    sharded_servers: tuple[RunningServer, list[RunningServer]], bpr_repo: Path, include_seen: bool
) -> None:
    whole, shards = sharded_servers
    t = load_artifact(bpr_repo / "bpr" / "1").tables
    seen_of = {
        int(user): set(
            t["item_ids"][t["seen_items"][t["seen_indptr"][u] : t["seen_indptr"][u + 1]]]
        )
        for u, user in enumerate(t["user_ids"])
    }
    clients = [Client(f"127.0.0.1:{s.port}", timeout=10) for s in shards]
    try:
        with Client(f"127.0.0.1:{whole.port}", timeout=10) as one, ShardedCatalog(clients) as fan:
            users = [*range(1, 51), 999_999]  # the last is unknown: popularity, cold start
            compared = 0
            for user in users:
                for k in (1, 5, 25, 40):
                    recent = [3, 17, 31, 424_242]  # ids of both shards, and one unknown
                    a = one.recommend(user, k, recent_item_ids=recent, include_seen=include_seen)
                    b = fan.recommend(user, k, recent_item_ids=recent, include_seen=include_seen)
                    assert [i.item_id for i in b.items] == [i.item_id for i in a.items]
                    assert [i.score for i in b.items] == [i.score for i in a.items]
                    assert [i.title for i in b.items] == [i.title for i in a.items]
                    assert b.cold_start_user == a.cold_start_user == (user == 999_999)
                    assert b.unknown_item_ids == a.unknown_item_ids == [424_242]
                    excluded = seen_of.get(user, set()) | {3, 17, 31}
                    got = {i.item_id for i in b.items}
                    if include_seen:
                        assert len(got) == k  # the whole catalog is selectable
                    else:
                        assert not got & excluded
                        assert len(got) == min(k, 40 - len(excluded & set(t["item_ids"])))
                    compared += 1
            assert compared == len(users) * 4
            assert one.model_info("bpr").num_items == 40
            assert [c.model_info("bpr").num_items for c in clients] == [20, 20]
    finally:
        for client in clients:
            client.close()
