"""What an operator relies on, against live loopback servers: trailing metadata, request
ids, RankStream, Prometheus metrics, deadlines, overload and graceful shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.metrics import sample_value, scrape

from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc


@pytest.fixture
def stub(live_server: RunningServer) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{live_server.port}") as channel:
        yield pb_grpc.RecommenderStub(channel)


def known_items(live_server: RunningServer, n: int) -> list[int]:
    return live_server.repository.get().pipeline.item_ids[:n].tolist()


def test_trailing_metadata_carries_version_request_id_and_timings(stub, live_server) -> None:
    request = pb.RankRequest(
        user_id=1, candidate_item_ids=known_items(live_server, 20), k=5, request_id="req-42"
    )
    response, call = stub.Rank.with_call(request, timeout=5)
    assert response.request_id == "req-42"
    trailing = dict(call.trailing_metadata())
    assert trailing["recserve-model"] == "deepfm"
    assert trailing["recserve-model-version"] == "1"
    assert trailing["recserve-request-id"] == "req-42"
    timings = dict(part.split("=") for part in trailing["recserve-timing-ms"].split(","))
    assert float(timings["total"]) > 0
    assert all(float(ms) >= 0 for ms in timings.values())
    # without an id the server makes one up, and says which
    response, call = stub.Recommend.with_call(pb.RecommendRequest(user_id=1, k=3), timeout=5)
    assert response.request_id and dict(call.trailing_metadata())["recserve-request-id"] == (
        response.request_id
    )


def test_rank_stream_answers_each_request_by_id_and_survives_bad_ones(stub, live_server) -> None:
    items = known_items(live_server, 30)
    requests = [
        pb.RankRequest(user_id=u, candidate_item_ids=items, k=4, request_id=f"r{u}")
        for u in range(1, 6)
    ]
    requests.insert(2, pb.RankRequest(user_id=1, candidate_item_ids=[], request_id="bad"))
    answers = {r.request_id: r for r in stub.RankStream(iter(requests), timeout=10)}
    assert set(answers) == {"r1", "r2", "r3", "r4", "r5", "bad"}
    assert answers["bad"].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "candidate_item_ids is empty" in answers["bad"].error_message
    for u in range(1, 6):
        streamed = answers[f"r{u}"]
        assert streamed.error_code == 0 and streamed.response.request_id == f"r{u}"
        unary = stub.Rank(requests[u if u > 2 else u - 1], timeout=5)
        assert [i.item_id for i in streamed.response.items] == [i.item_id for i in unary.items]


def test_rank_stream_refuses_a_too_long_request_id_and_goes_on(stub, live_server) -> None:
    items = known_items(live_server, 10)
    requests = [
        pb.RankRequest(user_id=1, candidate_item_ids=items, k=2, request_id="x" * 129),
        pb.RankRequest(user_id=1, candidate_item_ids=items, k=2, request_id="ok"),
    ]
    refused, answered = stub.RankStream(iter(requests), timeout=10)
    assert refused.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.request_id == "" and "129 characters" in refused.error_message
    assert answered.error_code == 0 and answered.request_id == "ok"


def test_metrics_are_scraped_and_parsed(stub, live_server) -> None:
    assert live_server.metrics_port > 0
    before = scrape(live_server.metrics_port)
    ok_before = sample_value(
        before["recserve_requests"], "recserve_requests_total", rpc="Rank", code="OK"
    )
    stub.Rank(pb.RankRequest(user_id=1, candidate_item_ids=known_items(live_server, 9)), timeout=5)
    with pytest.raises(grpc.RpcError):
        stub.Rank(pb.RankRequest(user_id=1), timeout=5)
    families = scrape(live_server.metrics_port)
    requests = families["recserve_requests"]
    labels = dict(rpc="Rank", model="deepfm", version="1", code="OK")
    assert sample_value(requests, "recserve_requests_total", **labels) == ok_before + 1
    assert sample_value(requests, "recserve_requests_total", code="INVALID_ARGUMENT") >= 1
    stages = families["recserve_stage_seconds"]
    for stage in ("queue", "feature", "crossing", "head", "topk"):
        assert any(s.labels.get("stage") == stage for s in stages), stage
    assert sample_value(
        families["recserve_request_seconds"], "recserve_request_seconds_count", rpc="Rank"
    ) >= (ok_before + 2)
    assert "recserve_in_flight" in families and "recserve_batch_size" in families
    loaded = families["recserve_model_loaded"]
    assert sample_value(loaded, "recserve_model_loaded", model="deepfm", version="1") == 1


def _slow_user_encoding(
    live_server: RunningServer, monkeypatch: pytest.MonkeyPatch, seconds: float
) -> list[int]:
    """Makes the served pipeline sleep in its feature stage; returns a call counter."""
    pipeline = live_server.repository.get().pipeline
    encode = pipeline.encode_user
    calls: list[int] = []

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(seconds)
        return encode(*args, **kwargs)

    monkeypatch.setattr(pipeline, "encode_user", slow)
    return calls


def test_a_passed_deadline_abandons_the_work(stub, live_server, monkeypatch) -> None:
    items = known_items(live_server, 20)
    head_calls: list[int] = []
    pipeline = live_server.repository.get().pipeline
    compute_batch = pipeline.compute_batch
    monkeypatch.setattr(
        pipeline, "compute_batch", lambda *a, **k: head_calls.append(1) or compute_batch(*a, **k)
    )
    _slow_user_encoding(live_server, monkeypatch, 0.4)
    codes_before = scrape(live_server.metrics_port)["recserve_requests"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Rank(pb.RankRequest(user_id=1, candidate_item_ids=items), timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.6)  # the server notices at its next stage
    codes = scrape(live_server.metrics_port)["recserve_requests"]
    name = "recserve_requests_total"
    assert sample_value(codes, name, code="DEADLINE_EXCEEDED") == (
        sample_value(codes_before, name, code="DEADLINE_EXCEEDED") + 1
    )
    assert head_calls == []  # nothing was scored after the deadline passed


@pytest.fixture
def small_server(model_repo: Path) -> Iterator[RunningServer]:
    running = build_server(
        ServeOptions(model_repo=model_repo, port=0, metrics_port=-1, workers=8, max_in_flight=2)
    )
    running.repository.load_all()
    running.set_serving(True)
    yield running
    running.stop(0)


def test_overload_is_resource_exhausted_at_once_then_recovers(small_server, monkeypatch) -> None:
    _slow_user_encoding(small_server, monkeypatch, 0.5)
    items = known_items(small_server, 10)

    def rank(_: int) -> tuple[grpc.StatusCode, float]:
        with grpc.insecure_channel(f"127.0.0.1:{small_server.port}") as channel:
            start = time.perf_counter()
            try:
                pb_grpc.RecommenderStub(channel).Rank(
                    pb.RankRequest(user_id=1, candidate_item_ids=items), timeout=10
                )
            except grpc.RpcError as exc:
                return exc.code(), time.perf_counter() - start
            return grpc.StatusCode.OK, time.perf_counter() - start

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(rank, range(6)))
    codes = [code for code, _ in results]
    assert codes.count(grpc.StatusCode.OK) >= 2
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # refused without queueing behind the slow ones (each takes 0.5 s)
    assert all(s < 0.4 for code, s in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED)
    monkeypatch.undo()
    assert rank(0)[0] == grpc.StatusCode.OK


def test_graceful_shutdown_finishes_in_flight_and_refuses_new(model_repo, monkeypatch) -> None:
    running = build_server(ServeOptions(model_repo=model_repo, port=0, metrics_port=-1))
    running.repository.load_all()
    running.set_serving(True)
    items = known_items(running, 10)
    target = f"127.0.0.1:{running.port}"
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.RecommenderStub(channel)
    stub.Rank(pb.RankRequest(user_id=1, candidate_item_ids=items), timeout=5)  # connected
    _slow_user_encoding(running, monkeypatch, 1.0)
    in_flight = stub.Rank.future(pb.RankRequest(user_id=1, candidate_item_ids=items), timeout=10)
    time.sleep(0.3)
    stopper = threading.Thread(target=running.stop, args=(5.0,))
    stopper.start()
    time.sleep(0.2)
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.Rank(pb.RankRequest(user_id=1, candidate_item_ids=items), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(in_flight.result().items) == 10  # the in-flight request finished
    stopper.join(10)
    assert not stopper.is_alive()
    channel.close()


def test_model_info_lists_ids_only_when_asked(stub, live_server) -> None:
    pipeline = live_server.repository.get().pipeline
    plain = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert not plain.user_ids and not plain.item_ids
    full = stub.GetModelInfo(pb.GetModelInfoRequest(include_ids=True), timeout=5)
    assert list(full.user_ids) == pipeline.user_ids.tolist()
    assert list(full.item_ids) == pipeline.item_ids.tolist()


def test_a_request_id_over_128_characters_is_invalid(stub, live_server) -> None:
    items = known_items(live_server, 5)
    ok = stub.Rank(pb.RankRequest(user_id=1, candidate_item_ids=items, request_id="r" * 128))
    assert ok.request_id == "r" * 128
    with pytest.raises(grpc.RpcError) as err:
        stub.Rank(pb.RankRequest(user_id=1, candidate_item_ids=items, request_id="r" * 129))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 128" in err.value.details()


def test_models_without_batch_work_are_not_put_behind_a_batcher() -> None:
    from recserve.server.batching import Batcher, runner_factory

    class Whole:  # a ranker without a crossing block: one program per request
        shares_batch_work = False

    class Crossing:
        shares_batch_work = True

        class artifact:
            name = "x"

    make_runner = runner_factory(8, 0.001)
    assert isinstance(make_runner(Whole()), Whole)
    runner = make_runner(Crossing())
    assert isinstance(runner, Batcher)
    runner.close()
