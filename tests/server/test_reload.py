"""Hot reload of the model repository, against live loopback servers: new versions swap
in under load, broken ones are refused while the old one serves, retired versions are
unloaded once their requests finish and their memory is returned."""

from __future__ import annotations

import gc
import json
import shutil
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers.serving import (
    events_of,
    flip_a_byte,
    publish,
    reload_rpc,
    resident_bytes,
    serve_process,
    serving,
    serving_of,
    wait_for,
)

from recserve import Client
from recserve.client import RecserveError, VersionEvent
from recserve.engine.errors import ModelNotFound
from recserve.engine.validation import Limits
from recserve.server.app import RunningServer
from recserve.server.repository import ModelRepository
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

LOADED, REFUSED, UNLOADED = (
    pb.VersionEvent.LOADED,
    pb.VersionEvent.REFUSED,
    pb.VersionEvent.UNLOADED,
)


# -- publishing versions ---------------------------------------------------------------


@pytest.fixture
def source(model_repo: Path) -> Path:
    return model_repo / "deepfm" / "1"


@pytest.fixture
def repo(tmp_path: Path, source: Path) -> Path:
    """A repository of its own, holding deepfm version 1."""
    shutil.copytree(source, tmp_path / "repo" / "deepfm" / "1")
    return tmp_path / "repo"


def items_of(repository: ModelRepository, n: int = 20) -> list[int]:
    return repository.get().pipeline.item_ids[:n].tolist()


def pipeline_ref(running: RunningServer, version: int) -> weakref.ref:
    return weakref.ref(running.repository.get("deepfm", version).pipeline)


def collected(ref: weakref.ref) -> bool:
    gc.collect()
    return ref() is None


# -- under load --------------------------------------------------------------------------

LOAD_SECONDS = 20.0
TARGET_RATE = 320.0  # paced a little above the 200/s the test requires
CLIENT_THREADS = 8


@pytest.mark.slow
def test_reload_under_continuous_load_fails_no_request(repo: Path, source: Path, caplog) -> None:
    """8 client threads send Rank at 320/s for 20 s while three new versions are published:
    v2 and v4 picked up by the ReloadModels RPC, v3 by the poller. No request fails,
    each thread sees versions only move forward, and every old version is unloaded."""
    model_dir = repo / "deepfm"
    with serving(repo, poll_seconds=0.5) as running, Client(f"127.0.0.1:{running.port}") as c:
        items = items_of(running.repository)
        old = [pipeline_ref(running, 1)]
        failures: list[str] = []
        seen: list[list[int]] = [[] for _ in range(CLIENT_THREADS)]
        stop_at = time.monotonic() + LOAD_SECONDS

        def send(thread: int) -> None:
            interval, next_at = CLIENT_THREADS / TARGET_RATE, time.monotonic()
            while (now := time.monotonic()) < stop_at:
                time.sleep(max(0.0, next_at - now))
                next_at += interval
                try:
                    answer = c.rank(1 + thread, items, k=5)
                except RecserveError as exc:
                    failures.append(str(exc))
                    continue
                if len(answer.items) != 5:
                    failures.append(f"{len(answer.items)} items from v{answer.model_version}")
                seen[thread].append(answer.model_version)

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            senders = [pool.submit(send, t) for t in range(CLIENT_THREADS)]
            time.sleep(4)
            publish(source, model_dir, 2)
            response = reload_rpc(running.port)
            # Scans are serialised, so the RPC's scan sees v2 even if the poller's got it.
            assert events_of(response) in ([(LOADED, 2), (UNLOADED, 1)], [])
            assert serving_of(response) == [("deepfm", 2)]
            old.append(pipeline_ref(running, 2))
            time.sleep(4)
            publish(source, model_dir, 3)  # no RPC: the poller finds it
            wait_for(lambda: running.repository.versions("deepfm") == [3], 10, "the poll")
            old.append(pipeline_ref(running, 3))
            time.sleep(4)
            publish(source, model_dir, 4)
            assert serving_of(reload_rpc(running.port)) == [("deepfm", 4)]
            for sender in senders:
                sender.result()
        elapsed = time.monotonic() - started
        answers = sum(len(s) for s in seen)
        rate = answers / elapsed
        print(f"\n{answers} answers in {elapsed:.1f}s: {rate:.0f}/s, {len(failures)} failed")
        assert failures == []
        assert rate >= 200
        for versions in seen:
            assert versions == sorted(versions), "a thread saw an older version after a newer"
        assert {v for s in seen for v in s} == {1, 2, 3, 4}
        assert all(s[-1] == 4 for s in seen)
        wait_for(lambda: all(collected(ref) for ref in old), 10, "old versions to be freed")
        for version in (1, 2, 3):
            assert f"released deepfm/{version}: no request holds it" in caplog.text
        with pytest.raises(RecserveError) as err:
            c.rank(1, items, version=3)
        assert err.value.code == grpc.StatusCode.NOT_FOUND


def poller_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "repository-poll"}


def test_the_poller_finds_a_new_version_and_stops_with_the_server(repo: Path, source: Path) -> None:
    before = poller_threads()
    with serving(repo, poll_seconds=0.1) as running:
        ours = poller_threads() - before
        assert len(ours) == 1, "the server started no repository poller"
        publish(source, repo / "deepfm", 2)
        wait_for(lambda: running.repository.versions("deepfm") == [2], 10, "the poll")
    wait_for(lambda: not any(t.is_alive() for t in ours), 5, "the poller to stop")


# -- refusals ---------------------------------------------------------------------------


def test_broken_versions_are_refused_while_the_old_one_serves(
    repo: Path, source: Path, caplog
) -> None:
    """A file altered after its manifest was written, a version missing a file, and one
    without a manifest are each refused once, with the reason in the log and in the RPC's
    events; version 1 keeps answering. Completed later, they load on the next scan."""
    model_dir = repo / "deepfm"
    with serving(repo, poll_seconds=0) as running, Client(f"127.0.0.1:{running.port}") as c:
        items = items_of(running.repository)
        publish(source, model_dir, 2, damage=flip_a_byte)
        publish(source, model_dir, 3, damage=lambda d: (d / "item_ids.npy").unlink())
        publish(source, model_dir, 4, damage=lambda d: (d / "manifest.json").unlink())
        response = reload_rpc(running.port)
        assert events_of(response) == [(REFUSED, 4), (REFUSED, 3), (REFUSED, 2)]
        reasons = [e.reason for e in response.events]
        assert "no manifest.json" in reasons[0]
        assert "file item_ids.npy listed in the manifest is missing" in reasons[1]
        assert "checksum mismatch for model.pt" in reasons[2]
        assert serving_of(response) == [("deepfm", 1)]
        for version, reason in zip((4, 3, 2), reasons, strict=True):
            assert f"not serving deepfm/{version}: {reason}" in caplog.text
        assert c.rank(1, items, k=3).model_version == 1

        again = reload_rpc(running.port)  # unchanged since: not retried, not logged again
        assert events_of(again) == [] and serving_of(again) == [("deepfm", 1)]
        assert caplog.text.count("not serving deepfm/3:") == 1
        assert c.rank(1, items, k=3).model_version == 1

        shutil.copy(source / "item_ids.npy", model_dir / "3")  # the copy completes
        assert events_of(reload_rpc(running.port)) == [(LOADED, 3), (UNLOADED, 1)]
        assert c.rank(1, items, k=3).model_version == 3
        manifest = json.loads((source / "manifest.json").read_text())
        (model_dir / "4" / "manifest.json").write_text(json.dumps({**manifest, "version": 4}))
        assert events_of(reload_rpc(running.port)) == [(LOADED, 4), (UNLOADED, 3)]
        assert c.rank(1, items, k=3).model_version == 4


def test_a_version_that_fails_its_warm_up_is_refused(
    repo: Path, source: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verified and built, but crashing on a real request: refused before any client
    sees it, with the traceback in the log."""
    from recserve.engine.pipeline import RankerPipeline

    with serving(repo, poll_seconds=0) as running:
        served = running.repository.get().pipeline
        real_rank = RankerPipeline.rank

        def rank(self: RankerPipeline, *args: Any, **kwargs: Any) -> Any:
            if self is not served:
                raise IndexError("index 7 is out of bounds")
            return real_rank(self, *args, **kwargs)

        monkeypatch.setattr(RankerPipeline, "rank", rank)
        publish(source, repo / "deepfm", 2)
        response = reload_rpc(running.port)
        assert events_of(response) == [(REFUSED, 2)]
        assert "warm-up request failed: IndexError: index 7" in response.events[0].reason
        assert "Traceback" in caplog.text
        assert running.repository.versions("deepfm") == [1]


def test_models_come_and_go_but_a_model_with_only_bad_versions_keeps_serving(
    repo: Path, source: Path, caplog
) -> None:
    """A new model directory is loaded and a removed one unloaded; a model whose only
    remaining version is bad keeps the version it served."""
    with serving(repo, poll_seconds=0) as running:
        publish(source, repo / "other", 1)
        response = reload_rpc(running.port)
        assert serving_of(response) == [("deepfm", 1), ("other", 1)]
        shutil.rmtree(repo / "other")
        with Client(f"127.0.0.1:{running.port}", timeout=60) as client:  # the typed client
            events, served = client.reload_models()
        assert served == [("deepfm", 1)]
        assert events == [VersionEvent("other", 1, "unloaded")]

        shutil.rmtree(repo / "deepfm" / "1")
        publish(source, repo / "deepfm", 2, damage=flip_a_byte)
        response = reload_rpc(running.port)
        assert events_of(response) == [(REFUSED, 2)]
        assert serving_of(response) == [("deepfm", 1)]
        assert "no good version of deepfm" in caplog.text


# -- pinning and in-flight requests -------------------------------------------------------


def test_pinned_versions_with_keep_versions_two(repo: Path, source: Path) -> None:
    publish(source, repo / "deepfm", 2)
    with (
        serving(repo, poll_seconds=0, keep_versions=2) as running,
        Client(f"127.0.0.1:{running.port}") as c,
    ):
        items = items_of(running.repository)
        assert c.rank(1, items, version=1).model_version == 1
        assert c.rank(1, items, version=2).model_version == 2
        assert c.rank(1, items).model_version == 2
        assert c.model_info().loaded_versions == [2, 1]
        publish(source, repo / "deepfm", 3)
        assert events_of(reload_rpc(running.port)) == [(LOADED, 3), (UNLOADED, 1)]
        with pytest.raises(RecserveError) as err:
            c.rank(1, items, version=1)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert "loaded versions: 3, 2" in err.value.message
        assert c.rank(1, items, version=2).model_version == 2
        assert c.rank(1, items).model_version == 3


class RecordingRunner:
    """A runner in front of a pipeline that records whether it was closed."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.closed = threading.Event()

    def rank(self, *args: Any, **kwargs: Any) -> Any:
        assert not self.closed.is_set(), "a closed runner got a request"
        return self.pipeline.rank(*args, **kwargs)

    def close(self) -> None:
        self.closed.set()


def test_an_old_version_is_unloaded_only_after_its_requests_finish(
    repo: Path, source: Path
) -> None:
    repository = ModelRepository(repo, Limits(), make_runner=RecordingRunner)
    repository.load_all()
    items = items_of(repository)
    with repository.acquire() as held:
        publish(source, repo / "deepfm", 2)
        assert [(e.action, e.version) for e in repository.reload()] == [
            ("loaded", 2),
            ("unloaded", 1),
        ]
        assert repository.get().version == 2
        with pytest.raises(ModelNotFound, match="loaded versions: 2"):
            repository.get(version=1)
        time.sleep(0.2)
        assert not held.runner.closed.is_set()  # still answering its request
        assert len(held.runner.rank(1, items, k=3).items) == 3
    closed, pipeline = held.runner.closed, weakref.ref(held.pipeline)
    del held
    assert closed.wait(5)
    wait_for(lambda: collected(pipeline), 5, "version 1 to be freed")

    newer = repository.get().runner
    publish(source, repo / "deepfm", 3)
    repository.reload()  # nobody holds version 2: closed before reload returns
    assert newer.closed.is_set() and not repository.get().runner.closed.is_set()


# -- SIGHUP and memory, in a `recserve serve` process --------------------------------------


def test_sighup_reloads_and_sigterm_exits_cleanly(
    repo: Path, source: Path, tmp_path: Path, free_port: int
) -> None:
    log_path = tmp_path / "serve.log"
    with (
        serve_process(repo, free_port, log_path, "--log-format", "json") as process,
        Client(f"127.0.0.1:{free_port}") as c,
    ):
        assert c.recommend(1, k=3).model_version == 1
        publish(source, repo / "deepfm", 2)
        time.sleep(0.5)
        assert c.recommend(1, k=3).model_version == 1  # no polling: nothing moves by itself
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: c.recommend(1, k=3).model_version == 2, 30, "version 2 after SIGHUP")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log_path.read_text()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    events = [(e["action"], e["model"], e["version"]) for e in lines if "action" in e]
    assert events == [("loaded", "deepfm", 1), ("loaded", "deepfm", 2), ("unloaded", "deepfm", 1)]
    assert any(e["message"] == "released deepfm/1: no request holds it" for e in lines)


PADDING_BYTES = 24 * 1024 * 1024  # per version: 20 versions kept by mistake are 480 MiB
CYCLES = 20


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_memory_is_returned_over_reload_cycles(
    repo: Path, source: Path, tmp_path: Path, free_port: int
) -> None:
    """Measured on a `recserve serve` subprocess, not in this test process (which holds
    the other tests' models and servers): each cycle publishes a version carrying a
    24 MiB table, reloads over the RPC, removes the replaced version's directory and
    sends a few requests. Resident memory after 20 cycles must stay within 10% of
    resident memory after the first."""
    model_dir = repo / "deepfm"
    shutil.rmtree(model_dir / "1")
    publish(source, model_dir, 1, padding_bytes=PADDING_BYTES)
    with (
        serve_process(repo, free_port, tmp_path / "serve.log") as process,
        Client(f"127.0.0.1:{free_port}") as c,
    ):
        items = [i.item_id for i in c.recommend(1, k=20, include_seen=True).items]
        resident = []
        for version in range(2, CYCLES + 2):
            publish(source, model_dir, version, padding_bytes=PADDING_BYTES)
            response = reload_rpc(free_port)
            assert events_of(response) == [(LOADED, version), (UNLOADED, version - 1)]
            shutil.rmtree(model_dir / str(version - 1))
            for user in range(1, 11):
                assert c.rank(user, items, k=5).model_version == version
            resident.append(resident_bytes(process.pid))
    first, last = resident[0], resident[-1]
    mib = 2**20
    print(f"\nresident after cycle 1: {first / mib:.1f} MiB, after {CYCLES}: {last / mib:.1f} MiB")
    assert last <= 1.10 * first


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads in /proc/<pid>/status")


HANDLER_THREADS = 16


def fill_the_handler_pool(port: int, items: list[int]) -> None:
    """Makes the server's pool create all its threads: HANDLER_THREADS streams open at
    once, each answered once (so each holds a thread), then closed."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        releases = [threading.Event() for _ in range(HANDLER_THREADS)]

        def held_open(release: threading.Event) -> Iterator[pb.RankRequest]:
            yield pb.RankRequest(user_id=1, candidate_item_ids=items, k=3)
            release.wait(30)

        streams = [stub.RankStream(held_open(r), timeout=30) for r in releases]
        for stream in streams:
            next(stream)  # answered: its handler thread is taken until it closes
        for release, stream in zip(releases, streams, strict=True):
            release.set()
            assert list(stream) == []


def settled_thread_count(pid: int, at_most: int, seconds: float = 5.0) -> int:
    """The thread count once it is at most ``at_most`` (a transient thread, e.g. the
    retired version's "unload", has ended), or the last count after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (count := thread_count(pid)) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_reloads_over_the_rpc_leave_no_thread_behind(
    repo: Path, source: Path, tmp_path: Path, free_port: int
) -> None:
    """A reload warms the new version up in the handler thread that took the RPC. A
    thread that had not adopted the server's torch thread count kept a matrix-product
    team alive after it (one more thread per handler thread that ever reloaded, a
    growth the soak saw). With the pool full from the start, 8 reloads (each on some
    handler thread) between bursts of concurrent requests must leave the count where
    it was."""
    model_dir = repo / "deepfm"
    with (
        serve_process(
            repo, free_port, tmp_path / "serve.log", "--workers", str(HANDLER_THREADS)
        ) as process,
        Client(f"127.0.0.1:{free_port}", timeout=30) as c,
        ThreadPoolExecutor(HANDLER_THREADS) as pool,
    ):
        items = [i.item_id for i in c.recommend(1, k=100, include_seen=True).items]
        fill_the_handler_pool(free_port, items)
        time.sleep(1.0)  # the streams' handlers return their threads to the pool
        full = thread_count(process.pid)
        counts = []
        for version in range(2, 10):
            list(pool.map(lambda user: c.rank(user, items, k=10), range(4 * HANDLER_THREADS)))
            publish(source, model_dir, version)
            assert serving_of(reload_rpc(free_port)) == [("deepfm", version)]
            counts.append(settled_thread_count(process.pid, at_most=full))
    print(f"\nthreads with the pool full: {full}; after each reload: {counts}")
    assert max(counts) <= full, counts
