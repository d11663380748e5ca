"""Admission by time: a request the batcher's queue cannot start within --max-queue-ms is
refused at once, with RESOURCE_EXHAUSTED and a message naming the limit, while health
checks keep answering; one that waited past it all the same is refused uncomputed."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recserve.engine.errors import DeadlineExceeded, Overloaded
from recserve.engine.pipeline import CatalogPipeline
from recserve.engine.request_context import RequestContext
from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.server.batching import Batcher
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

DEEPFM = pb.ModelSpec(name="deepfm")


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Gated:
    """A pipeline whose batch computation waits for ``gate``."""

    def __init__(self, pipeline: CatalogPipeline) -> None:
        self._pipeline = pipeline
        self.gate = threading.Event()
        self.batches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def compute_batch(self, batch: list) -> list:
        self.batches += 1
        assert self.gate.wait(20)
        return self._pipeline.compute_batch(batch)


def start(repo: Path, **options: Any) -> RunningServer:
    running = build_server(
        ServeOptions(model_repo=repo, port=0, metrics_port=-1, poll_seconds=0, **options)
    )
    running.repository.load_all()
    running.set_serving(True)
    return running


@pytest.fixture(scope="module")
def pipeline(model_repo: Path) -> Iterator[CatalogPipeline]:
    running = start(model_repo, max_batch_size=1)  # no batcher: the pipeline itself
    yield running.repository.get("deepfm").pipeline
    running.stop(0)


def test_a_queue_over_the_limit_refuses_new_requests_at_once(pipeline: CatalogPipeline) -> None:
    gated = Gated(pipeline)
    batcher = Batcher(gated, 2, 0.0, compute_threads=1, max_queue_s=0.05)
    items = pipeline.item_ids[:20].tolist()
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(batcher.rank, 1, items, 5)  # holds the only compute thread
        assert wait_for(lambda: gated.batches == 1)
        queued = pool.submit(batcher.rank, 2, items, 5)  # waits behind it
        assert wait_for(lambda: batcher.expected_wait() > 0.05)
        with pytest.raises(Overloaded, match=r"--max-queue-ms \(50\)") as refused:
            batcher.rank(3, items, 5)
        assert "'deepfm'" in str(refused.value)
        assert gated.batches == 1  # refused before anything was computed for it
        gated.gate.set()
        assert len(running.result(10).items) == 5
        # It waited past the limit: refused when its batch started, nothing computed.
        with pytest.raises(Overloaded, match="waited"):
            queued.result(10)
    assert gated.batches == 1
    # The queue is empty again: the next request is admitted and answered.
    assert len(batcher.rank(4, items, 5).items) == 5
    batcher.close()


def test_a_deadline_before_the_expected_turn_is_refused_at_once(
    pipeline: CatalogPipeline,
) -> None:
    gated = Gated(pipeline)
    batcher = Batcher(gated, 2, 0.0, compute_threads=1, max_queue_s=0.0)  # no queue limit
    items = pipeline.item_ids[:20].tolist()
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(batcher.rank, 1, items, 5)
        assert wait_for(lambda: gated.batches == 1)
        queued = pool.submit(batcher.rank, 2, items, 5)
        assert wait_for(lambda: batcher.expected_wait() > 0.2)
        context = RequestContext.with_timeout("short", 0.1)
        with pytest.raises(DeadlineExceeded, match="cannot be met"):
            batcher.rank(3, items, 5, request_context=context)
        gated.gate.set()
        assert len(running.result(10).items) == 5
        assert len(queued.result(10).items) == 5  # no queue limit: served late
    batcher.close()


def test_time_spent_waiting_for_a_handler_thread_counts_against_the_limit(
    pipeline: CatalogPipeline,
) -> None:
    """The compute queue is empty, but the call was taken 80 ms ago (it waited for a
    handler thread): with a 50 ms limit it is refused, saying where the time went."""
    batcher = Batcher(pipeline, 2, 0.0, compute_threads=1, max_queue_s=0.05)
    items = pipeline.item_ids[:20].tolist()
    late = RequestContext.with_timeout("late", None, accepted=time.monotonic() - 0.08)
    assert late.timings["queue"] >= 0.08  # the wait is reported as queue time
    with pytest.raises(Overloaded, match=r"ms for a handler thread, 0 ms for a compute thread"):
        batcher.rank(1, items, 5, request_context=late)
    fresh = RequestContext.with_timeout("fresh", None, accepted=time.monotonic())
    assert len(batcher.rank(2, items, 5, request_context=fresh).items) == 5
    batcher.close()


def nice_of(thread_id: int) -> int:
    """A thread's nice value (field 19 of /proc/self/task/TID/stat)."""
    stat = Path(f"/proc/self/task/{thread_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice per thread is Linux's")
def test_compute_threads_run_at_a_lower_priority_than_the_callers(
    pipeline: CatalogPipeline,
) -> None:
    batcher = Batcher(pipeline, 2, 0.0, compute_threads=2, compute_nice=7)
    assert len(batcher.rank(1, pipeline.item_ids[:20].tolist(), 5).items) == 5
    caller = nice_of(threading.get_native_id())
    workers = [nice_of(worker.native_id) for worker in batcher._workers]
    batcher.close()
    assert workers == [min(caller + 7, 19)] * 2


def health_status(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_the_server_answers_resource_exhausted_naming_the_limit_and_stays_healthy(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = start(model_repo, max_batch_size=8, compute_threads=1, max_queue_ms=50.0)
    gate, computing = threading.Event(), threading.Event()
    model = running.repository.get("deepfm")
    compute = model.pipeline.compute_batch

    def held_compute(batch: list) -> list:
        computing.set()
        assert gate.wait(20)
        return compute(batch)

    monkeypatch.setattr(model.pipeline, "compute_batch", held_compute)
    items = model.pipeline.item_ids[:20].tolist()
    request = pb.RankRequest(model=DEEPFM, user_id=1, candidate_item_ids=items, k=5)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            held = stub.Rank.future(request, timeout=20)  # holds the compute thread
            assert computing.wait(10)
            queued = stub.Rank.future(request, timeout=20)  # waits behind it
            assert wait_for(lambda: model.runner.expected_wait() > 0.05)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Rank(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert re.search(r"--max-queue-ms \(50\)", refused.value.details() or "")
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            gate.set()
            assert len(held.result().items) == 5
            with pytest.raises(grpc.RpcError) as late:  # waited past the limit
                queued.result()
            assert late.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "waited" in (late.value.details() or "")
            assert len(stub.Rank(request, timeout=5).items) == 5  # admitted again
    finally:
        gate.set()
        running.stop(0)
    sample = running.metrics.registry.get_sample_value
    labels = {"rpc": "Rank", "model": "deepfm", "version": "1", "code": "RESOURCE_EXHAUSTED"}
    assert sample("recserve_requests_total", labels) == 2
    assert sample("recserve_stage_seconds_count", {"stage": "queue"}) >= 2
