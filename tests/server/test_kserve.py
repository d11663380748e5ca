"""The KServe v2 / Open Inference Protocol beside recserve's own contract, same engine."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from helpers.metrics import sample_value, scrape

from recserve import Client
from recserve.kserve import grpc_predict_v2_pb2 as kpb
from recserve.kserve import grpc_predict_v2_pb2_grpc as kpb_grpc
from recserve.server.app import RunningServer

INVALID = grpc.StatusCode.INVALID_ARGUMENT
Tensor = kpb.ModelInferRequest.InferInputTensor


@pytest.fixture
def kserve(live_server: RunningServer) -> Iterator[kpb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{live_server.port}") as channel:
        yield kpb_grpc.GRPCInferenceServiceStub(channel)


def int64_tensor(name: str, values: list[int], raw: bool) -> tuple[Tensor, bytes | None]:
    tensor = Tensor(name=name, datatype="INT64", shape=[len(values)])
    if raw:
        return tensor, np.asarray(values, dtype="<i8").tobytes()
    tensor.contents.int64_contents.extend(values)
    return tensor, None


def infer_request(model: str = "deepfm", raw: bool = True, **inputs: list[int]):
    tensors = [int64_tensor(name, values, raw) for name, values in inputs.items()]
    request = kpb.ModelInferRequest(model_name=model, id="req-1", inputs=[t for t, _ in tensors])
    if raw:
        request.raw_input_contents.extend(data for _, data in tensors)
    return request


def outputs(response: kpb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"INT64": "<i8", "FP32": "<f4"}
    return {
        t.name: np.frombuffer(raw, dtype=dtypes[t.datatype])
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def test_health_and_metadata(kserve, live_server) -> None:
    assert kserve.ServerLive(kpb.ServerLiveRequest(), timeout=5).live
    assert kserve.ServerReady(kpb.ServerReadyRequest(), timeout=5).ready
    assert kserve.ModelReady(kpb.ModelReadyRequest(name="deepfm"), timeout=5).ready
    assert kserve.ModelReady(kpb.ModelReadyRequest(name="deepfm", version="1"), timeout=5).ready
    assert not kserve.ModelReady(kpb.ModelReadyRequest(name="deepfm", version="9"), timeout=5).ready
    assert not kserve.ModelReady(kpb.ModelReadyRequest(name="nope"), timeout=5).ready
    server = kserve.ServerMetadata(kpb.ServerMetadataRequest(), timeout=5)
    assert server.name == "recserve" and server.version
    meta = kserve.ModelMetadata(kpb.ModelMetadataRequest(name="deepfm"), timeout=5)
    assert meta.versions == ["1"] and meta.platform == "recserve_deepfm"
    assert [t.name for t in meta.inputs] == [
        "user_id",
        "candidate_item_ids",
        "k",
        "recent_item_ids",
    ]
    assert [(t.name, t.datatype) for t in meta.outputs] == [
        ("item_ids", "INT64"),
        ("scores", "FP32"),
        ("unknown_item_ids", "INT64"),
    ]


def test_probes_and_metadata_are_counted_in_the_request_metrics(kserve, live_server) -> None:
    def count(rpc: str, **labels: str) -> float:
        requests = scrape(live_server.metrics_port)["recserve_requests"]
        return sample_value(requests, "recserve_requests_total", rpc=rpc, **labels)

    calls = {
        "ServerLive": lambda: kserve.ServerLive(kpb.ServerLiveRequest(), timeout=5),
        "ServerReady": lambda: kserve.ServerReady(kpb.ServerReadyRequest(), timeout=5),
        "ModelReady": lambda: kserve.ModelReady(kpb.ModelReadyRequest(name="deepfm"), timeout=5),
        "ServerMetadata": lambda: kserve.ServerMetadata(kpb.ServerMetadataRequest(), timeout=5),
    }
    for rpc, call in calls.items():
        before = count(rpc, code="OK")
        call()
        call()
        assert count(rpc, code="OK") == before + 2, rpc
    # the model a ModelReady named is a label; a bad version string is a counted refusal
    assert count("ModelReady", model="deepfm", version="1") >= 2
    refused = count("ModelReady", code="INVALID_ARGUMENT")
    with pytest.raises(grpc.RpcError) as info:
        kserve.ModelReady(kpb.ModelReadyRequest(name="deepfm", version="x"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert count("ModelReady", code="INVALID_ARGUMENT") == refused + 1


@pytest.mark.parametrize("raw", [True, False])
def test_model_infer_equals_rank(kserve, client: Client, live_server, raw: bool) -> None:
    candidates = [*live_server.repository.get().pipeline.item_ids[:25].tolist(), 999999]
    response = kserve.ModelInfer(
        infer_request(raw=raw, user_id=[3], candidate_item_ids=candidates, k=[7]), timeout=5
    )
    assert (response.model_name, response.model_version, response.id) == ("deepfm", "1", "req-1")
    got = outputs(response)
    ranked = client.rank(3, candidates, k=7)
    assert got["item_ids"].tolist() == [i.item_id for i in ranked.items]
    assert got["scores"].tolist() == [np.float32(i.score) for i in ranked.items]
    assert got["unknown_item_ids"].tolist() == [999_999]


def test_model_infer_without_candidates_recommends(kserve, client: Client) -> None:
    request = infer_request(user_id=[5], k=[6], recent_item_ids=[1, 2])
    request.outputs.add(name="item_ids")
    response = kserve.ModelInfer(request, timeout=5)
    assert [t.name for t in response.outputs] == ["item_ids"]
    expected = client.recommend(5, k=6, recent_item_ids=[1, 2])
    assert outputs(response)["item_ids"].tolist() == [i.item_id for i in expected.items]


def test_kserve_errors_are_statuses(kserve) -> None:
    bad_type = infer_request(user_id=[1], candidate_item_ids=[1, 2])
    bad_type.inputs[1].datatype = "FP32"
    short_raw = infer_request(user_id=[1], candidate_item_ids=[1, 2])
    short_raw.raw_input_contents[1] = b"\x00" * 12
    cases = [
        (
            infer_request(candidate_item_ids=[1]),
            INVALID,
            "'user_id' (INT64, shape [1]) is required",
        ),
        (infer_request(user_id=[1], items=[1]), INVALID, "unknown input 'items'"),
        (bad_type, INVALID, "must be INT64, not FP32"),
        (short_raw, INVALID, "needs 16 raw bytes, got 12"),
        (infer_request(user_id=[1, 2]), INVALID, "takes one value"),
        (infer_request(user_id=[1], candidate_item_ids=[]), INVALID, "candidate_item_ids is empty"),
        (infer_request(model="nope", user_id=[1]), grpc.StatusCode.NOT_FOUND, "not loaded"),
        (infer_request(model="../x", user_id=[1]), INVALID, "is not a model name"),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            kserve.ModelInfer(request, timeout=5)
        assert err.value.code() == code, message
        assert message in err.value.details()
    version = infer_request(user_id=[1])
    version.model_version = "v1"
    with pytest.raises(grpc.RpcError, match="decimal number"):
        kserve.ModelInfer(version, timeout=5)
