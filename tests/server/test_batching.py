"""Dynamic batching (server/batching.py) through a live loopback server: concurrent
requests share batches and each gets exactly its unbatched answer.

Scores are compared for exact equality, not within a tolerance: recserve.engine.batch_plan
makes a request's float32 scores independent of its batch-mates (the head's rows are
padded to a fixed multiple, the top-k inner product runs in chunks of one kernel path),
and tests/python/test_batch_plan.py checks that bitwise at the pipeline level.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from helpers.sequences import SMALL_SEQUENCE

from recserve import Client, RecserveError
from recserve.engine.errors import DeadlineExceeded, ModelUnavailable
from recserve.engine.pipeline import CatalogPipeline
from recserve.engine.request_context import RequestContext
from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.server.batching import Batcher, runner_factory
from recserve.training import gan, topn
from recserve.training.data import make_synthetic_movielens
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

ONE_EPOCH = {**SMALL_SEQUENCE, "epochs": 1}

THREADS = 16
MODELS = ("deepfm", "bpr", "gru4rec", "cfgan")  # a ranker and each top-N family
COLD_USER = 10**12
DEEPFM = pb.ModelSpec(name="deepfm")  # the default model is the first by name, "bpr"


@pytest.fixture(scope="module")
def repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    repo = tmp_path_factory.mktemp("batching-repo")
    shutil.copytree(model_repo / "deepfm", repo / "deepfm")
    data = make_synthetic_movielens(n_users=50, n_items=40, n_interactions=700, seed=2)
    topn.train_bpr(data, topn.BPRConfig(epochs=1, embedding_dim=8)).export(repo, "bpr", "s")
    topn.train_sequence(data, topn.SequenceConfig(**ONE_EPOCH)).export(repo, "gru4rec", "s")
    cfgan = gan.CFGANConfig(epochs=1, generator_hidden=[8], discriminator_hidden=[8])
    gan.train_cfgan(data, cfgan).export(repo, "cfgan", "s")
    return repo


def start(repo: Path, **options: Any) -> RunningServer:
    running = build_server(
        ServeOptions(
            model_repo=repo, port=0, metrics_port=-1, poll_seconds=0, max_candidates=200, **options
        )
    )
    running.repository.load_all()
    running.set_serving(True)
    return running


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    running = start(repo, max_batch_size=32, max_batch_delay_ms=20.0)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def patient_server(repo: Path) -> Iterator[RunningServer]:
    """Waits up to a whole second for company, when it expects some."""
    running = start(repo, max_batch_size=32, max_batch_delay_ms=1000.0)
    yield running
    running.stop(0)


def pipeline_of(running: RunningServer, name: str) -> CatalogPipeline:
    return running.repository.get(name).pipeline


def mixed_calls(pipeline: CatalogPipeline, name: str, n: int, seed: int) -> list[tuple[str, dict]]:
    """Client calls: Rank and Recommend, known and cold-start users, unknown ids, any k."""
    rng = np.random.default_rng(seed)
    items = pipeline.item_ids
    calls = []
    for i in range(n):
        user = COLD_USER + i if i % 5 == 0 else int(rng.choice(pipeline.user_ids))
        features = {"gender": "F"} if name == "deepfm" and i % 4 == 1 else {}
        if i % 2:
            recent = [*rng.choice(items, 2, replace=False).tolist(), 900_000 + i][: i % 4]
            kwargs = dict(k=int(rng.choice([0, 3, 25])), recent_item_ids=recent)
            calls.append(("recommend", dict(user_id=user, include_seen=i % 3 == 0, **kwargs)))
        else:
            size = int(rng.integers(1, min(150, items.size)))
            candidates = [*rng.choice(items, size, replace=False).tolist(), 800_000 + i]
            kwargs = dict(item_ids=candidates, k=int(rng.choice([0, 1, 7, 100])))
            calls.append(("rank", dict(user_id=user, user_features=features, **kwargs)))
    return calls


def unbatched(pipeline: CatalogPipeline, method: str, kwargs: dict) -> tuple:
    """The pipeline's own answer, as the client sees answers."""
    kw = dict(kwargs)
    context = kw.pop("user_features", {})
    if method == "rank":
        answer = pipeline.rank(kw["user_id"], kw["item_ids"], k=kw["k"], context=context)
    else:
        answer = pipeline.recommend(**kw, context=context)
    return answer.items, answer.cold_start_user, answer.unknown_item_ids


def burst(port: int, calls: list[Callable[[Client], Any]]) -> list[Any]:
    """Runs the calls from THREADS threads released together; an error is returned."""
    barrier = threading.Barrier(THREADS)

    def run_share(share: int) -> list[tuple[int, Any]]:
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            client.is_serving()  # connected before the barrier
            barrier.wait()
            out = []
            for i in range(share, len(calls), THREADS):
                try:
                    out.append((i, calls[i](client)))
                except RecserveError as exc:
                    out.append((i, exc))
            return out

    with ThreadPoolExecutor(THREADS) as pool:
        shares = list(pool.map(run_share, range(THREADS)))
    return [result for _, result in sorted(r for share in shares for r in share)]


def batches(running: RunningServer, name: str) -> tuple[float, float]:
    """(batches executed, requests in them) for a model so far."""
    sample = running.metrics.registry.get_sample_value
    labels = {"model": name}
    return (
        sample("recserve_batch_size_count", labels) or 0.0,
        sample("recserve_batch_size_sum", labels) or 0.0,
    )


def client_call(method: str, model: str, kwargs: dict) -> Callable[[Client], Any]:
    def call(client: Client) -> tuple:
        answer = getattr(client, method)(**kwargs, model=model)
        return answer.items, answer.cold_start_user, answer.unknown_item_ids

    return call


@pytest.mark.parametrize("name", MODELS)
def test_concurrent_answers_equal_unbatched_ones(server: RunningServer, name: str) -> None:
    pipeline = pipeline_of(server, name)
    calls = mixed_calls(pipeline, name, 6 * THREADS, seed=len(name))
    expected = [unbatched(pipeline, method, kwargs) for method, kwargs in calls]
    assert any(cold for _, cold, _ in expected) and any(unknown for *_, unknown in expected)
    before = batches(server, name)
    got = burst(server.port, [client_call(method, name, kwargs) for method, kwargs in calls])
    assert got == expected  # same ids, order, float32 scores, titles and flags
    count, size = (a - b for a, b in zip(batches(server, name), before, strict=True))
    if name == "cfgan":  # a generator's Recommend has no batch work: nothing queued
        assert count == 0
    else:
        assert size > count > 0  # some batch held more than one request


def test_a_bad_request_fails_alone(server: RunningServer) -> None:
    pipeline = pipeline_of(server, "deepfm")
    calls = mixed_calls(pipeline, "deepfm", 3 * THREADS, seed=7)
    expected = [unbatched(pipeline, method, kwargs) for method, kwargs in calls]
    good = [client_call(method, "deepfm", kwargs) for method, kwargs in calls]
    bad = {5: lambda c: c.rank(1, [3, 4, 3], model="deepfm")}  # duplicate candidates
    bad[21] = lambda c: c.recommend(2, user_features={"zip": "1"}, model="deepfm")
    got = burst(server.port, [bad.get(i, call) for i, call in enumerate(good)])
    for i, result in enumerate(got):
        if i in bad:
            assert isinstance(result, RecserveError)
            assert result.code == grpc.StatusCode.INVALID_ARGUMENT
            assert ("duplicates" if i == 5 else "unknown user feature 'zip'") in result.message
        else:
            assert result == expected[i]


def timings_of(port: int, request: pb.RankRequest) -> dict[str, float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        _, call = pb_grpc.RecommenderStub(channel).Rank.with_call(request, timeout=10)
    metadata = dict(call.trailing_metadata())
    pairs = (entry.split("=") for entry in metadata["recserve-timing-ms"].split(","))
    return {stage: float(ms) / 1000 for stage, ms in pairs}


def test_a_lone_request_does_not_wait_for_company(patient_server: RunningServer) -> None:
    items = pipeline_of(patient_server, "deepfm").item_ids[:50].tolist()
    for user in (1, 2, 3, COLD_USER):  # one after another: never any company
        request = pb.RankRequest(model=DEEPFM, user_id=user, candidate_item_ids=items, k=5)
        timings = timings_of(patient_server.port, request)
        assert {"queue", "feature", "crossing", "head", "topk"} <= set(timings)
        assert timings["queue"] < 0.1  # the delay is 1 s
        assert timings["total"] < 0.5


@pytest.mark.parametrize(
    ("name", "method", "stages"),
    [
        ("deepfm", "rank", {"queue", "feature", "crossing", "head", "topk"}),
        ("deepfm", "recommend", {"queue", "feature", "crossing", "head", "topk"}),
        ("bpr", "recommend", {"queue", "feature", "topk"}),
        ("gru4rec", "recommend", {"queue", "feature", "head", "topk"}),
        ("cfgan", "recommend", {"feature", "head", "topk"}),  # nothing to batch: no queue
    ],
)
def test_stage_timings_through_the_batcher(
    server: RunningServer, name: str, method: str, stages: set[str]
) -> None:
    runner = server.repository.get(name).runner
    assert isinstance(runner, Batcher)
    context = RequestContext()
    if method == "rank":
        items = runner.pipeline.item_ids[:20].tolist()
        runner.rank(1, items, k=5, request_context=context)
    else:
        runner.recommend(1, k=5, request_context=context)
    assert set(context.timings) == stages


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_a_deadline_that_passes_in_the_queue_drops_the_request(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = pipeline_of(server, "deepfm")
    compute = pipeline.compute_batch
    computed: list[str] = []
    busy = threading.Event()

    workers = server.repository.get("deepfm").runner.compute_threads

    def slow_compute(batch):
        computed.extend(p.request_context.request_id for p in batch)
        if len(computed) >= workers:
            busy.set()
        time.sleep(0.6)  # every worker is busy: the next request waits in the queue
        return compute(batch)

    monkeypatch.setattr(pipeline, "compute_batch", slow_compute)
    items = pipeline.item_ids[:30].tolist()
    sample = server.metrics.registry.get_sample_value
    labels = {"rpc": "Rank", "model": "deepfm", "version": "1", "code": "DEADLINE_EXCEEDED"}
    before = sample("recserve_requests_total", labels) or 0.0
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        request = pb.RankRequest(model=DEEPFM, user_id=1, candidate_item_ids=items)
        firsts = []
        for started in range(1, workers + 1):  # one at a time: each a batch of its own
            firsts.append(stub.Rank.future(request, timeout=10))
            assert wait_for(lambda started=started: len(computed) >= started)
        assert busy.wait(5)
        late = pb.RankRequest(
            model=DEEPFM, user_id=2, candidate_item_ids=items, request_id="late-request"
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(late, timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert all(len(first.result().items) == 30 for first in firsts)
    # The server itself answered DEADLINE_EXCEEDED (not only the client's timer) ...
    assert wait_for(lambda: (sample("recserve_requests_total", labels) or 0.0) == before + 1)
    assert "late-request" not in computed  # ... and never computed the late request


def test_a_failing_batch_is_internal_for_its_callers_and_the_worker_carries_on(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = pipeline_of(server, "deepfm")
    compute = pipeline.compute_batch
    failures = [RuntimeError("secret detail")]

    def flaky(batch):
        if failures:
            raise failures.pop()
        return compute(batch)

    monkeypatch.setattr(pipeline, "compute_batch", flaky)
    items = pipeline.item_ids[:10].tolist()
    with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        with pytest.raises(RecserveError) as err:
            client.rank(1, items, model="deepfm")
        assert err.value.code == grpc.StatusCode.INTERNAL and "secret" not in err.value.message
        assert len(client.rank(1, items, model="deepfm").items) == 10


class Gated:
    """A pipeline whose batch computation waits for ``gate``; records the batch sizes."""

    def __init__(self, pipeline: CatalogPipeline) -> None:
        self._pipeline = pipeline
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def compute_batch(self, batch: list) -> list:
        self.sizes.append(len(batch))
        self.gate.wait(10)
        return self._pipeline.compute_batch(batch)


def test_close_answers_what_was_accepted_then_refuses(server: RunningServer) -> None:
    gated = Gated(pipeline_of(server, "deepfm"))
    batcher = Batcher(gated, 8, 0.05)
    items = gated.item_ids[:40].tolist()
    with ThreadPoolExecutor(16) as pool:
        answers = [pool.submit(batcher.rank, u, items, 5) for u in range(1, 17)]
        # one batch is computing, the other requests are queued behind it
        assert wait_for(lambda: bool(gated.sizes) and len(batcher._queue) == 16 - gated.sizes[0])
        closing = threading.Thread(target=batcher.close)  # joins the worker: blocks
        closing.start()
        assert wait_for(lambda: batcher._closed)
        with pytest.raises(ModelUnavailable, match="unloaded"):
            batcher.rank(1, items, 5)
        gated.gate.set()
        closing.join(10)
        assert [len(a.result(timeout=10).items) for a in answers] == [5] * 16
    assert sum(gated.sizes) == 16 and max(gated.sizes) <= 8
    assert not any(worker.is_alive() for worker in batcher._workers)


def test_a_deadline_passed_in_the_queue_raises_deadline_exceeded(server: RunningServer) -> None:
    """The same, without gRPC: the caller gets the library's DeadlineExceeded."""
    gated = Gated(pipeline_of(server, "deepfm"))
    batcher = Batcher(gated, 8, 0.0)
    items = gated.item_ids[:10].tolist()
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(batcher.rank, 1, items, 3)
            assert wait_for(lambda: bool(gated.sizes))
            context = RequestContext.with_timeout(timeout=0.1)
            threading.Timer(0.3, gated.gate.set).start()
            with pytest.raises(DeadlineExceeded, match="waited for its batch"):
                batcher.rank(2, items, 3, request_context=context)
            assert len(first.result(timeout=10).items) == 3
        assert gated.sizes == [1]  # the late request was never computed
        assert context.timings["queue"] >= 0.1
    finally:
        batcher.close()


def test_batch_size_one_is_the_pipeline_itself(server: RunningServer) -> None:
    pipeline = pipeline_of(server, "deepfm")
    assert runner_factory(1, 0.002)(pipeline) is pipeline
    with pytest.raises(ValueError, match="at least 2"):
        Batcher(pipeline, 1, 0.002)  # a Batcher that merged nothing would only serialise
