"""--stream-idle-seconds: a RankStream that waits on its client too long is cancelled, one
that keeps sending is not, however long it lasts; the watch itself on fake streams."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from helpers.metrics import sample_value, scrape

from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.server.stream_watch import StreamWatch
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

IDLE_SECONDS = 1.0


@pytest.fixture(scope="module")
def watched_server(model_repo: Path) -> Iterator[RunningServer]:
    running = build_server(
        ServeOptions(
            model_repo=model_repo, port=0, metrics_port=0, stream_idle_seconds=IDLE_SECONDS
        )
    )
    running.repository.load_all()
    running.set_serving(True)
    yield running
    running.stop(0)


@pytest.fixture
def stub(watched_server: RunningServer) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{watched_server.port}") as channel:
        yield pb_grpc.RecommenderStub(channel)


def rank_request(server: RunningServer, request_id: str) -> pb.RankRequest:
    items = server.repository.get().pipeline.item_ids[:20].tolist()
    return pb.RankRequest(user_id=1, candidate_item_ids=items, k=3, request_id=request_id)


def cancelled_count(server: RunningServer) -> float:
    families = scrape(server.metrics_port)
    return sample_value(
        families["recserve_idle_streams_cancelled"], "recserve_idle_streams_cancelled_total"
    )


def test_a_stream_that_goes_quiet_is_cancelled_after_the_limit(
    stub: pb_grpc.RecommenderStub, watched_server: RunningServer
) -> None:
    before = cancelled_count(watched_server)
    outgoing: queue.Queue[pb.RankRequest | None] = queue.Queue()
    outgoing.put(rank_request(watched_server, "first"))
    answers = stub.RankStream(iter(outgoing.get, None), timeout=30)
    assert next(answers).request_id == "first"
    quiet_since = time.monotonic()  # the client keeps the stream open and sends nothing
    with pytest.raises(grpc.RpcError) as info:
        next(answers)
    waited = time.monotonic() - quiet_since
    outgoing.put(None)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert IDLE_SECONDS * 0.5 <= waited < 10, waited  # well before the 30 s deadline
    assert cancelled_count(watched_server) == before + 1
    # the server goes on: a new stream is answered
    again = stub.RankStream(iter([rank_request(watched_server, "again")]), timeout=10)
    assert [a.request_id for a in again] == ["again"]


def test_a_stream_that_keeps_sending_outlives_the_limit(
    stub: pb_grpc.RecommenderStub, watched_server: RunningServer
) -> None:
    before = cancelled_count(watched_server)

    def slow_requests() -> Iterator[pb.RankRequest]:
        for n in range(15):  # 15 x 0.2 s: 3 limits in all, never one at a stretch
            yield rank_request(watched_server, f"r{n}")
            time.sleep(IDLE_SECONDS / 5)

    ids = [a.request_id for a in stub.RankStream(slow_requests(), timeout=30)]
    assert ids == [f"r{n}" for n in range(15)]
    assert cancelled_count(watched_server) == before


class FakeContext:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def cancel(self) -> None:
        self.cancelled.set()

    def is_active(self) -> bool:
        return not self.cancelled.is_set()


def test_the_watch_cancels_only_waiting_streams_and_zero_turns_it_off() -> None:
    counted: list[int] = []
    watch = StreamWatch(0.2, on_cancel=lambda: counted.append(1))
    waiting, working = FakeContext(), FakeContext()
    try:
        with watch.watch(waiting), watch.watch(working) as busy:
            busy.working()  # e.g. a long request: the server's own time does not count
            assert waiting.cancelled.wait(5)
            time.sleep(0.4)
            assert not working.cancelled.is_set()
            busy.waiting()
            assert working.cancelled.wait(5)
        assert counted == [1, 1]
    finally:
        watch.close()
    off = StreamWatch(0.0)
    quiet = FakeContext()
    with off.watch(quiet):
        time.sleep(0.3)
    assert not quiet.cancelled.is_set()
    off.close()


class BrokenContext(FakeContext):
    def peer(self) -> str:
        raise RuntimeError("the call is gone")


def test_the_watch_outlives_a_stream_it_fails_to_cancel() -> None:
    watch = StreamWatch(0.2)
    try:
        broken, later = BrokenContext(), FakeContext()
        with watch.watch(broken):
            time.sleep(0.6)  # found idle, and cancelling it raised
        with watch.watch(later):
            assert later.cancelled.wait(5)
    finally:
        watch.close()
