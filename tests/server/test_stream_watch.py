"""--stream-idle-seconds: a RankStream that waits on its client too long is cancelled, one
that keeps sending is not, however long it lasts; the limit itself on fake streams."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from helpers.metrics import sample_value, scrape

from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.server.stream_watch import IdleLimit, StreamIdle
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
    """A stream's context whose client takes ``read_seconds`` to read each answer."""

    def __init__(self, read_seconds: float = 0.0) -> None:
        self.read_seconds = read_seconds
        self.written: list[int] = []

    async def write(self, answer: int) -> None:
        await asyncio.sleep(self.read_seconds)
        self.written.append(answer)


async def requests_every(seconds: float, count: int) -> AsyncIterator[int]:
    for n in range(count):
        await asyncio.sleep(seconds)
        yield n


async def answer_all(
    limit: IdleLimit, context: FakeContext, requests: AsyncIterator[int], work: float = 0.0
) -> list[int]:
    """What RankStream does: each request answered after ``work`` seconds."""
    stream = limit.stream(context)  # type: ignore[arg-type]
    async for request in stream.requests(requests):
        await asyncio.sleep(work)  # the server's own time: never counts
        await stream.send(request)
    return context.written


def test_a_late_request_or_an_unread_answer_ends_the_stream_and_zero_turns_it_off() -> None:
    limit = IdleLimit(0.2)
    # 6 requests 0.1 s apart (0.6 s in all) with 0.3 s of work each: never late
    assert asyncio.run(answer_all(limit, FakeContext(), requests_every(0.1, 6), work=0.3)) == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    with pytest.raises(StreamIdle, match=r"waited 0\.[2-9] s on its client"):
        asyncio.run(answer_all(limit, FakeContext(), requests_every(0.5, 2)))
    with pytest.raises(StreamIdle, match=r"--stream-idle-seconds is 0\.2"):
        asyncio.run(answer_all(limit, FakeContext(read_seconds=0.5), requests_every(0, 2)))
    off = IdleLimit(0.0)
    assert asyncio.run(answer_all(off, FakeContext(0.3), requests_every(0.3, 2))) == [0, 1]
