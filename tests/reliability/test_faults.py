"""Fault injection against live servers: damaged artifacts, version directories deleted
while serving, SIGKILL during a reload, clients that vanish mid-stream or never read.
Each test ends with the server healthy and no good model lost (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from reliability_helpers import (
    MIB,
    events_of,
    flip_a_byte,
    process_figures,
    publish,
    reload_rpc,
    serve_process,
    serving,
    serving_of,
    wait_for,
)

from recserve.server.app import RunningServer
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")

REFUSED, LOADED, UNLOADED = (
    pb.VersionEvent.REFUSED,
    pb.VersionEvent.LOADED,
    pb.VersionEvent.UNLOADED,
)


def stub_for(port: int) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.RecommenderStub(channel)


def rank_request(items: list[int], user: int = 1, k: int = 5, **kw) -> pb.RankRequest:
    return pb.RankRequest(user_id=user, candidate_item_ids=items, k=k, **kw)


def answer_of(response: pb.RankResponse) -> list[tuple[int, float]]:
    return [(item.item_id, item.score) for item in response.items]


def known_items(running: RunningServer, n: int = 50) -> list[int]:
    return running.repository.get().pipeline.item_ids[:n].tolist()


# -- damaged artifacts ---------------------------------------------------------------------


def truncate(filename: str, keep: float = 0.5) -> Callable[[Path], None]:
    def damage(version_dir: Path) -> None:
        path = version_dir / filename
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return damage


def drop_last_byte(filename: str) -> Callable[[Path], None]:
    def damage(version_dir: Path) -> None:
        path = version_dir / filename
        path.write_bytes(path.read_bytes()[:-1])

    return damage


def edit_checksum(version_dir: Path) -> None:
    """The manifest's sha256 of head.pt rewritten (a well-formed, wrong digest)."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["files"]["head.pt"]["sha256"] = "0" * 64
    (version_dir / "manifest.json").write_text(json.dumps(manifest))


# version -> (what is done after the manifest was written, words the refusal must hold)
DAMAGES: dict[int, tuple[Callable[[Path], None], str]] = {
    2: (truncate("model.pt"), "checksum mismatch for model.pt"),
    3: (drop_last_byte("crossing_embedding.npy"), "checksum mismatch for crossing_embedding.npy"),
    4: (lambda d: flip_a_byte(d, "crossing_w1.npy"), "checksum mismatch for crossing_w1.npy"),
    5: (lambda d: flip_a_byte(d, "item_ids.npy"), "checksum mismatch for item_ids.npy"),
    6: (truncate("head.pt", keep=0.0), "checksum mismatch for head.pt"),
    7: (edit_checksum, "checksum mismatch for head.pt"),
    8: (truncate("manifest.json"), "unreadable manifest"),
}


def test_truncated_or_altered_files_are_refused_and_the_good_version_keeps_answering(
    repo: Path, source: Path, caplog
) -> None:
    """Seven versions, each damaged after its manifest was written (truncated program,
    table one byte short, one byte altered in a weight table and in the id table, empty
    head, a wrong digest in the manifest, half a manifest): each is refused with its
    reason while Rank answers from version 1 before, during and after the scan stay
    bit-identical and no request fails."""
    with serving(repo, poll_seconds=0) as running:
        items = known_items(running)
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            expected = answer_of(stub.Rank(rank_request(items), timeout=10))
            stop = threading.Event()
            answers: list[list[tuple[int, float]]] = []
            failures: list[str] = []

            def keep_asking() -> None:
                while not stop.is_set():
                    try:
                        answers.append(answer_of(stub.Rank(rank_request(items), timeout=10)))
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")

            with ThreadPoolExecutor(2) as pool:
                askers = [pool.submit(keep_asking) for _ in range(2)]
                for version, (damage, _) in DAMAGES.items():
                    publish(source, repo / "deepfm", version, damage=damage)
                response = reload_rpc(running.port)
                stop.set()
                for asker in askers:
                    asker.result()
            after = answer_of(stub.Rank(rank_request(items), timeout=10))
    assert events_of(response) == [(REFUSED, v) for v in sorted(DAMAGES, reverse=True)]
    for event in response.events:
        assert DAMAGES[event.model.version][1] in event.reason, event.reason
        assert f"not serving deepfm/{event.model.version}" in caplog.text
    assert serving_of(response) == [("deepfm", 1)]
    print(
        f"\n{len(DAMAGES)} damaged versions refused; {len(answers)} answers meanwhile, "
        f"{len(failures)} failed"
    )
    assert failures == []
    assert answers and all(a == expected for a in answers)
    assert after == expected


# -- version directories deleted while serving ------------------------------------------


def test_deleting_version_directories_while_serving_under_load(
    repo: Path, source: Path, caplog
) -> None:
    """Four client threads send Rank all along. The served version's directory is deleted:
    it keeps answering from memory, then the next scan falls back to the older good
    version. Then the only version left is deleted (the model's directory is empty): the
    model keeps its in-memory version rather than stop (no good model lost) until a new
    version is published. A poller rescans every 0.2 s, so scans race the deletions."""
    model_dir = repo / "deepfm"
    publish(source, model_dir, 2)
    with serving(repo, poll_seconds=0.2) as running:
        items = known_items(running)
        assert running.repository.versions("deepfm") == [2]
        failures: list[str] = []
        seen: list[int] = []
        stop = threading.Event()

        def keep_asking() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = pb_grpc.RecommenderStub(channel)
                while not stop.is_set():
                    try:
                        response = stub.Rank(rank_request(items), timeout=10)
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                        continue
                    if len(response.items) != 5:
                        failures.append(f"{len(response.items)} items")
                    seen.append(response.model.version)

        with ThreadPoolExecutor(4) as pool:
            askers = [pool.submit(keep_asking) for _ in range(4)]
            time.sleep(1)
            shutil.rmtree(model_dir / "2")  # the version being served
            wait_for(lambda: running.repository.versions("deepfm") == [1], 20, "fallback to v1")
            time.sleep(1)
            shutil.rmtree(model_dir / "1")  # the only version left: the folder is empty
            time.sleep(1.5)  # several polls
            assert running.repository.versions("deepfm") == [1]
            response = reload_rpc(running.port)
            assert events_of(response) == [] and serving_of(response) == [("deepfm", 1)]
            publish(source, model_dir, 3)
            wait_for(lambda: running.repository.versions("deepfm") == [3], 20, "version 3")
            time.sleep(0.5)
            stop.set()
            for asker in askers:
                asker.result()
    print(f"\n{len(seen)} answers across 2 deletions and 1 publish, {len(failures)} failed")
    assert failures == []
    assert seen[0] == 2 and seen[-1] == 3 and {1, 2, 3} <= set(seen)
    assert "still serving version(s) 1 from memory" in caplog.text


# -- SIGKILL during a reload ----------------------------------------------------------------

BIG_VERSION_BYTES = 256 * MIB  # takes a second or more to read, verify and load


def bytes_read(pid: int) -> int:
    """Bytes the process has read from files and sockets (rchar of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/<pid>/io")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_sigkill_during_a_reload_then_restart_serves_the_newest_good_version(
    repo: Path, source: Path, tmp_path: Path, free_port: int
) -> None:
    """A `recserve serve` process is killed with SIGKILL while a SIGHUP reload is reading
    a 256 MiB version (caught in the act: it has read 64 MiB of it, and the version is not
    yet serving; read, not resident: tables are checksummed, then memory-mapped). A
    killed trainer also left a half-written hidden staging directory. Restarted, the
    server serves the newest good version (2), ignores the staging directory, and
    answers."""
    model_dir = repo / "deepfm"
    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    with serve_process(repo, free_port, log1) as process:
        with grpc.insecure_channel(f"127.0.0.1:{free_port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            items = list(stub.GetModelInfo(pb.GetModelInfoRequest(include_ids=True)).item_ids)
            items = items[:50]
            assert stub.Rank(rank_request(items), timeout=10).model.version == 1
        publish(source, model_dir, 2, padding_bytes=BIG_VERSION_BYTES)
        before = bytes_read(process.pid)
        process.send_signal(signal.SIGHUP)
        hup_at = time.monotonic()
        wait_for(lambda: bytes_read(process.pid) > before + 64 * MIB, 60, "the reload to read v2")
        process.send_signal(signal.SIGKILL)
        killed_after = time.monotonic() - hup_at
        assert process.wait(10) == -signal.SIGKILL
    assert "loaded deepfm/2" not in log1.read_text(), "killed too late: v2 had loaded"

    # What a trainer killed mid-publish leaves: a hidden staging directory, half written.
    staging = model_dir / ".staging-3-k1ll3d"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    (staging / "manifest.json").write_text(json.dumps({**manifest, "version": 3}))
    truncate("model.pt")(staging)
    listing = sorted(os.listdir(model_dir))

    with (
        serve_process(repo, free_port, log2, "--log-format", "json") as process,
        grpc.insecure_channel(f"127.0.0.1:{free_port}") as channel,
    ):
        stub = pb_grpc.RecommenderStub(channel)
        response = stub.Rank(rank_request(items), timeout=10)
        assert response.model.version == 2 and len(response.items) == 5
        assert serving_of(reload_rpc(free_port)) == [("deepfm", 2)]
    lines = [json.loads(line) for line in log2.read_text().splitlines()]
    actions = [(e["action"], e["version"]) for e in lines if "action" in e]
    assert actions == [("loaded", 2)]  # nothing refused: the staging directory is not seen
    assert ".staging" not in log2.read_text()
    assert sorted(os.listdir(model_dir)) == listing  # the server never writes the repository
    print(f"\nSIGKILL {killed_after:.2f} s into the reload of v2; after the restart: v2")


# -- clients that go away or never read -----------------------------------------------------


def in_flight(running: RunningServer) -> float:
    return running.metrics.registry.get_sample_value("recserve_in_flight") or 0.0


def endless_requests(items: list[int], sent: list[int] | None = None) -> Iterator[pb.RankRequest]:
    n = 0
    while True:
        n += 1
        if sent is not None:
            sent[0] = n
        yield rank_request(items, user=1 + n % 50, k=10, request_id=f"r{n}")


DISCONNECTS = 30


def test_clients_that_disconnect_mid_stream_leave_nothing_behind(repo: Path) -> None:
    """30 RankStream calls, each fed an endless request iterator, read 1 to 7 answers and
    then vanish: cancelled, or their channel closed under them. After each the server's
    in-flight gauge returns to 0; afterwards its thread count is within its handler pool
    of where it started, and unary and streaming calls are answered."""
    workers = 4
    with serving(repo, poll_seconds=0, workers=workers) as running:
        items = known_items(running)
        target = f"127.0.0.1:{running.port}"
        threads_before = threading.active_count()
        answered = 0
        for n in range(DISCONNECTS):
            channel = grpc.insecure_channel(target)
            stub = pb_grpc.RecommenderStub(channel)
            call = stub.RankStream(endless_requests(items), timeout=30)
            for _ in range(1 + n % 7):
                response = next(call)
                assert response.error_code == 0 and len(response.response.items) == 10
                answered += 1
            if n % 2:
                call.cancel()
            else:
                channel.close()  # the connection goes away under the call
            channel.close()
            wait_for(lambda: in_flight(running) == 0, 10, f"in-flight back to 0 after {n}")
        wait_for(lambda: running.servicer.wait_until_idle(0), 10, "the servicer to be idle")
        time.sleep(0.5)  # the client's request-feeding threads end with their calls
        threads_after = threading.active_count()
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            assert len(stub.Rank(rank_request(items), timeout=10).items) == 5
            streamed = list(stub.RankStream(iter([rank_request(items)] * 3), timeout=10))
            assert [len(r.response.items) for r in streamed] == [5, 5, 5]
    print(
        f"\n{DISCONNECTS} disconnects after {answered} answers; threads {threads_before} -> "
        f"{threads_after} (handler pool of {workers})"
    )
    assert threads_after <= threads_before + workers


def level_off(counts: list[list[int]], seconds: float) -> list[int]:
    """The counts once none has moved for LEVEL_SECONDS (AssertionError after ``seconds``)."""
    deadline = time.monotonic() + seconds
    last, since = [c[0] for c in counts], time.monotonic()
    while time.monotonic() - since < LEVEL_SECONDS:
        if time.monotonic() > deadline:
            raise AssertionError(f"still sending after {seconds}s: {last}; nothing holds them")
        time.sleep(0.1)
        now = [c[0] for c in counts]
        if now != last:
            last, since = now, time.monotonic()
    return last


LEVEL_SECONDS = 2.0
NEVER_READ_STREAMS = 4
OFFERED_PER_STREAM = 200_000  # each stream would send this many requests if let


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX")
def test_clients_that_send_and_never_read_are_held_back_by_flow_control(
    repo: Path, tmp_path: Path, free_port: int
) -> None:
    """Four RankStream clients write requests (200 candidates, k = 100) as fast as they
    can and never read an answer. HTTP/2 flow control must stop them: the requests they
    manage to send level off far below what they offer, the server's resident memory
    stays bounded, and another client is answered meanwhile. When they go away, their handler threads
    are free again (a new call is answered, no thread or descriptor is added) and memory
    does not grow further.
    """
    # Flow control alone: the idle-stream limit (the next test) would end the streams.
    with serve_process(
        repo, free_port, tmp_path / "serve.log", "--stream-idle-seconds", "0"
    ) as process:
        target = f"127.0.0.1:{free_port}"
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            items = list(stub.GetModelInfo(pb.GetModelInfoRequest(include_ids=True)).item_ids)
            items = items[:200]
            for _ in range(20):  # the server's steady state for one well-behaved client
                stub.Rank(rank_request(items, k=100), timeout=10)
        idle = process_figures(process.pid)

        counts = [[0] for _ in range(NEVER_READ_STREAMS)]
        channels = [grpc.insecure_channel(target) for _ in range(NEVER_READ_STREAMS)]
        calls = []
        for channel, sent in zip(channels, counts, strict=True):
            stub = pb_grpc.RecommenderStub(channel)

            def offered(sent: list[int] = sent) -> Iterator[pb.RankRequest]:
                for request in endless_requests(items, sent):
                    yield pb.RankRequest(
                        user_id=request.user_id,
                        candidate_item_ids=items,
                        k=100,
                        request_id=request.request_id,
                    )
                    if sent[0] >= OFFERED_PER_STREAM:
                        return

            calls.append(stub.RankStream(offered(), timeout=120))
        early = level_off(counts, 60)
        latencies, failures = [], []
        with grpc.insecure_channel(target) as channel:  # another client, meanwhile
            stub = pb_grpc.RecommenderStub(channel)
            for user in range(100):
                started = time.perf_counter()
                try:
                    stub.Rank(rank_request(items, user=user + 1, k=10), timeout=10)
                except grpc.RpcError as exc:
                    failures.append(exc.code().name)
                latencies.append(time.perf_counter() - started)
        late = level_off(counts, 60)  # gRPC may widen its windows a little meanwhile
        held = process_figures(process.pid)
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
        time.sleep(2)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            assert len(stub.Rank(rank_request(items, k=10), timeout=10).items) == 10
        after = process_figures(process.pid)
    sent = sum(late)
    request_bytes = rank_request(items, k=100, request_id="r12345").ByteSize()
    p99 = float(np.percentile(latencies, 99))
    print(
        f"\nnever-reading streams sent {early} requests when they levelled off, {late} "
        "after 100 other requests "
        f"(of {OFFERED_PER_STREAM:,} each offered; {request_bytes} B each, "
        f"{max(late) * request_bytes / MIB:.1f} MiB per stream); other client: 100 answers, "
        f"{len(failures)} failed, p99 {p99 * 1000:.1f} ms; server RSS idle "
        f"{idle.resident / MIB:.1f} MiB, held {held.resident / MIB:.1f} MiB, after "
        f"{after.resident / MIB:.1f} MiB; threads {idle.threads} -> {held.threads} -> "
        f"{after.threads}; fds {idle.fds} -> {held.fds} -> {after.fds}"
    )
    assert sent < NEVER_READ_STREAMS * OFFERED_PER_STREAM  # stopped, not exhausted
    assert failures == [] and p99 < 1.0
    # Bound: what flow control lets through, the requests sent times their size and
    # their answers' size, plus gRPC's per-stream buffers; far below what the
    # clients offered (200,000 requests x ~2 KB per stream = ~1.5 GiB).
    assert held.resident - idle.resident < 64 * MIB
    assert after.fds <= idle.fds + 1
    assert after.threads <= held.threads
    assert after.resident <= held.resident + 4 * MIB


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX")
def test_streams_that_never_read_are_cancelled_and_give_their_threads_back(
    repo: Path, tmp_path: Path, free_port: int
) -> None:
    """--workers 4: four never-reading streams (as above) take every handler thread (each
    has been read far beyond what the HTTP/2 windows hold, so each has its thread), and a
    Rank call sent then must wait for one. Once flow control has stopped the streams'
    answers and they have waited --stream-idle-seconds (2) at a stretch, the server
    cancels them and their threads are free: the Rank is answered long before the
    streams' own 120 s deadline, and the log names the 4 streams. (The clients themselves
    learn it only when they read: the status waits behind their unread answers.)"""
    log_path = tmp_path / "serve.log"
    # No queue-time limit: the Rank waits seconds for a handler thread by design here, and
    # --max-queue-ms would refuse it for that wait (tests/server/test_admission.py).
    flags = ["--workers", str(NEVER_READ_STREAMS), "--stream-idle-seconds", "2"]
    flags += ["--max-queue-ms", "0"]
    with serve_process(repo, free_port, log_path, *flags):
        target = f"127.0.0.1:{free_port}"
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            items = list(stub.GetModelInfo(pb.GetModelInfoRequest(include_ids=True)).item_ids)
        items = items[:200]
        channels = [grpc.insecure_channel(target) for _ in range(NEVER_READ_STREAMS + 1)]
        counts = [[0] for _ in range(NEVER_READ_STREAMS)]
        calls = []
        try:
            for channel, sent in zip(channels, counts, strict=False):
                requests = (
                    rank_request(items, user=r.user_id, k=100, request_id=r.request_id)
                    for r in endless_requests(items, sent)
                )
                calls.append(pb_grpc.RecommenderStub(channel).RankStream(requests, timeout=120))
            # ~2 KB each: 1,000 requests are far more than the windows hold unread
            wait_for(lambda: min(c[0] for c in counts) > 1000, 60, "the 4 streams to run")
            started = time.monotonic()
            answer = pb_grpc.RecommenderStub(channels[-1]).Rank(
                rank_request(items, k=10), timeout=60
            )
            answered_after = time.monotonic() - started
            still_open = sum(not call.done() for call in calls)
            wait_for(
                lambda: log_path.read_text().count("cancelling a RankStream") == len(calls),
                30,
                "every never-reading stream to be cancelled",
            )
        finally:
            for call in calls:
                call.cancel()
            for channel in channels:
                channel.close()
    print(
        f"\nthe Rank sent while 4 never-reading streams held the 4 handler threads was "
        f"answered after {answered_after:.1f} s ({still_open} of the streams still open on "
        f"the client side); the log names {len(calls)} cancelled streams"
    )
    assert len(answer.items) == 10
    assert answered_after < 30  # without the limit: only after the streams' 120 s deadline
