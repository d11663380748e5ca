"""What the generator puts on the wire and what it reads back: pre-serialized requests,
byte for byte the ones RequestBuilder makes for a seed, and answers left unparsed unless
--decode. A stand-in server keeps every request's bytes as they arrived."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from recserve.client import SERVICE_NAME
from recserve.loadtest import BenchOptions, run
from recserve.loadtest.run import plan_workers
from recserve.loadtest.traffic import (
    IdSpace,
    RequestBuilder,
    fetch_id_space,
    request_pool,
    with_request_id,
)
from recserve.v1 import recserve_pb2 as pb

REQUESTS = 40  # per run: one process, one request in flight, no warm-up


@dataclass
class Recorder:
    target: str
    received: dict[str, list[bytes]] = field(default_factory=dict)  # by method name


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A server of the Recommender methods the generator calls, on raw bytes: it keeps each
    request as it arrived and sends an empty answer (RankStream: the request_id only)."""
    recorder = Recorder("", {"Rank": [], "Recommend": [], "RankStream": []})
    info = pb.ModelInfo(
        model=pb.ModelRef(name="stand-in", version=3),
        user_ids=range(1, 200),
        item_ids=range(10, 500),
    ).SerializeToString()

    def unary(name: str) -> grpc.RpcMethodHandler:
        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            recorder.received[name].append(request)
            return b""  # an empty RankResponse or RecommendResponse

        return grpc.unary_unary_rpc_method_handler(answer)

    def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            recorder.received["RankStream"].append(request)
            request_id = pb.RankRequest.FromString(request).request_id
            yield pb.RankStreamResponse(request_id=request_id).SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "GetModelInfo": grpc.unary_unary_rpc_method_handler(lambda request, context: info),
            "Rank": unary("Rank"),
            "Recommend": unary("Recommend"),
            "RankStream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(ThreadPoolExecutor(4), handlers=[handler])
    recorder.target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield recorder
    server.stop(0)


def bench(recorder: Recorder, tmp_path: Path, **options) -> dict:
    """One run of REQUESTS requests, sent one after the other; its JSON report."""
    out = tmp_path / "bench.json"
    options = BenchOptions(
        target=recorder.target, concurrency=1, processes=1, warmup=0, requests=REQUESTS,
        seed=4, json=str(out), **options,
    )  # fmt: skip
    err = io.StringIO()
    assert run(options, out=io.StringIO(), err=err) == 0, err.getvalue()
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    ("rpc", "method"), [("rank", "Rank"), ("recommend", "Recommend"), ("stream", "RankStream")]
)
def test_requests_are_the_builders_byte_for_byte(recorder, tmp_path: Path, rpc, method) -> None:
    shape = dict(candidates=50, history=7, k=5)
    bench(recorder, tmp_path, rpc=rpc, **shape)
    received = recorder.received[method]
    assert len(received) == REQUESTS
    # What the generator sent when it built each request as it went: the process's own
    # seed, the run's seed for the id layout; RankStream's ids "<process>-<n>".
    space = fetch_id_space(recorder.target)
    plan = plan_workers(BenchOptions(seed=4, processes=1), space)[0]
    builder = RequestBuilder(space, seed=plan.seed, layout_seed=4, **shape)
    if rpc == "stream":
        expected = [builder.rank(f"0-{n}") for n in range(REQUESTS)]
    else:
        make = builder.rank if rpc == "rank" else builder.recommend
        expected = [make() for _ in range(REQUESTS)]
    assert received == [request.SerializeToString() for request in expected]


def test_answers_are_parsed_only_with_decode(recorder, tmp_path: Path) -> None:
    raw = bench(recorder, tmp_path)
    assert raw["requests"]["completed"] == REQUESTS
    assert raw["generator"]["decoded_answers"] == 0  # no response deserializer ran
    assert raw["generator"]["cpu_seconds"] > 0 and raw["generator"]["cpu_ms_per_answer"] > 0

    decoded = bench(recorder, tmp_path, decode=True)
    assert decoded["generator"]["decoded_answers"] == REQUESTS
    assert decoded["generator"]["cpu_ms_per_answer"] > 0
    # RankStream always parses: the request_id matches an answer to its request.
    stream = bench(recorder, tmp_path, rpc="stream")
    assert stream["requests"]["completed"] == REQUESTS
    assert stream["generator"]["decoded_answers"] == REQUESTS


def test_the_cpu_line_says_whether_answers_were_parsed(recorder) -> None:
    for decode, says in ((False, "answers not parsed"), (True, "answers parsed")):
        text = io.StringIO()
        options = BenchOptions(
            target=recorder.target, concurrency=1, processes=1, warmup=0, requests=5,
            decode=decode,
        )  # fmt: skip
        assert run(options, out=text, err=io.StringIO()) == 0
        line = next(x for x in text.getvalue().splitlines() if "generator" in x)
        assert "ms per answer" in line and "1 process" in line and says in line


def test_request_pool_is_bounded_by_count_and_bytes() -> None:
    space = IdSpace("m", 1, np.arange(1, 50), np.arange(1, 500))
    builder = RequestBuilder(space, candidates=100, seed=0)
    assert len(request_pool(builder.rank, size=30)) == 30
    one = len(builder.rank().SerializeToString())
    assert 5 <= len(request_pool(builder.rank, size=1000, max_bytes=5 * one)) <= 6
    assert len(request_pool(builder.rank, size=1000, max_bytes=1)) == 1


@pytest.mark.parametrize("request_id", ["", "0-7", "x" * 200, "é-1"])
def test_request_id_is_appended_as_protobuf_writes_it(request_id: str) -> None:
    request = pb.RankRequest(user_id=3, candidate_item_ids=[5, 1, 300], k=2)
    expected = pb.RankRequest(user_id=3, candidate_item_ids=[5, 1, 300], k=2, request_id=request_id)
    appended = with_request_id(request.SerializeToString(), request_id)
    assert appended == expected.SerializeToString()
    assert pb.RankRequest.FromString(appended) == expected
