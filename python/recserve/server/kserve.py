"""The KServe v2 / Open Inference Protocol (``inference.GRPCInferenceService``) on the
same models and runners as ``recserve.v1.Recommender``.

Tensor names and shapes are documented in proto/recserve/kserve/grpc_predict_v2.proto:
``user_id`` [1], optional ``candidate_item_ids`` [N] (Rank; absent: Recommend), ``k`` [1]
and ``recent_item_ids`` [M], all INT64; outputs ``item_ids`` INT64, ``scores`` FP32 and
``unknown_item_ids`` INT64. Data may come as typed contents or little-endian raw bytes.
"""

from __future__ import annotations

import math

import grpc
import numpy as np

from recserve import __version__
from recserve.engine.errors import InvalidRequest, ModelNotFound, ModelUnavailable
from recserve.kserve import grpc_predict_v2_pb2 as kpb
from recserve.kserve import grpc_predict_v2_pb2_grpc as kpb_grpc
from recserve.results import Ranking

from .repository import ModelRepository
from .servicer import RecommenderServicer

SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# name -> (datatype, shape); -1 is any size.
INPUTS = {
    "user_id": ("INT64", [1]),
    "candidate_item_ids": ("INT64", [-1]),
    "k": ("INT64", [1]),
    "recent_item_ids": ("INT64", [-1]),
}
OUTPUTS = {
    "item_ids": ("INT64", [-1]),
    "scores": ("FP32", [-1]),
    "unknown_item_ids": ("INT64", [-1]),
}
_SCALARS = ("user_id", "k")


def _version(text: str) -> int:
    """A protocol version string ("" = newest) as recserve's version number."""
    if text == "":
        return 0
    # ASCII digits only: str.isdigit() also accepts e.g. "²", which int() refuses; and
    # int() refuses more than 4300 digits. An int64 has at most 19 significant digits.
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 19:
        raise InvalidRequest(f"model_version must be a decimal number or empty; got {text[:40]!r}")
    return int(text)


def _input_arrays(request: kpb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's tensors by name, checked against INPUTS, as int64 arrays."""
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidRequest(
            f"{len(request.raw_input_contents)} raw_input_contents for "
            f"{len(request.inputs)} inputs; send one per input, or none"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name not in INPUTS:
            raise InvalidRequest(
                f"unknown input {tensor.name!r}; this model takes {', '.join(INPUTS)}"
            )
        if tensor.name in arrays:
            raise InvalidRequest(f"input {tensor.name!r} is given twice")
        if tensor.datatype != "INT64":
            raise InvalidRequest(f"input {tensor.name!r} must be INT64, not {tensor.datatype}")
        if any(d < 0 for d in tensor.shape):
            raise InvalidRequest(f"input {tensor.name!r} has a negative dimension")
        size = math.prod(tensor.shape)  # exact: np.prod wraps around at 2**63
        if request.raw_input_contents:
            raw = request.raw_input_contents[index]
            if len(raw) != 8 * size:
                raise InvalidRequest(
                    f"input {tensor.name!r} of shape {list(tensor.shape)} needs {8 * size} "
                    f"raw bytes, got {len(raw)}"
                )
            values = np.frombuffer(raw, dtype="<i8").astype(np.int64)
        else:
            values = np.asarray(tensor.contents.int64_contents, dtype=np.int64)
            if values.size != size:
                raise InvalidRequest(
                    f"input {tensor.name!r} of shape {list(tensor.shape)} holds {values.size} "
                    "values in contents.int64_contents"
                )
        if tensor.name in _SCALARS and values.size != 1:
            raise InvalidRequest(f"input {tensor.name!r} takes one value, shape [1]")
        arrays[tensor.name] = values
    if "user_id" not in arrays:
        raise InvalidRequest("input 'user_id' (INT64, shape [1]) is required")
    if "candidate_item_ids" in arrays and "recent_item_ids" in arrays:
        raise InvalidRequest("recent_item_ids goes with Recommend, not with candidate_item_ids")
    return arrays


def _outputs(ranking: Ranking, wanted: list[str]) -> tuple[list, list[bytes]]:
    data = {
        "item_ids": np.array([i.item_id for i in ranking.items], dtype="<i8"),
        "scores": np.array([i.score for i in ranking.items], dtype="<f4"),
        "unknown_item_ids": np.array(ranking.unknown_item_ids, dtype="<i8"),
    }
    unknown = [name for name in wanted if name not in OUTPUTS]
    if unknown:
        raise InvalidRequest(f"unknown output {unknown[0]!r}; outputs are {', '.join(OUTPUTS)}")
    tensors, raw = [], []
    for name in wanted or list(OUTPUTS):
        array = data[name]
        tensors.append(
            kpb.ModelInferResponse.InferOutputTensor(
                name=name, datatype=OUTPUTS[name][0], shape=[array.size]
            )
        )
        raw.append(array.tobytes())
    return tensors, raw


class InferenceServicer(kpb_grpc.GRPCInferenceServiceServicer):
    """Health, metadata and ModelInfer of the Open Inference Protocol."""

    def __init__(self, repository: ModelRepository, recommender: RecommenderServicer) -> None:
        self.repository = repository
        self.recommender = recommender  # shares its metrics and request bookkeeping

    # Every RPC goes through the Recommender's call scope: counted in the request metrics
    # (probes too, as the Recommender's own), in-flight while it runs.

    def ServerLive(self, request, context: grpc.ServicerContext) -> kpb.ServerLiveResponse:
        with self.recommender.call_scope("ServerLive", "", context):
            return kpb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context: grpc.ServicerContext) -> kpb.ServerReadyResponse:
        with self.recommender.call_scope("ServerReady", "", context):
            try:
                self.repository.get()
            except (ModelUnavailable, ModelNotFound):
                return kpb.ServerReadyResponse(ready=False)
            return kpb.ServerReadyResponse(ready=True)

    def ModelReady(
        self, request: kpb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> kpb.ModelReadyResponse:
        with self.recommender.call_scope("ModelReady", "", context) as call:
            try:
                model = self.repository.get(request.name, _version(request.version))
            except (ModelUnavailable, ModelNotFound):
                return kpb.ModelReadyResponse(ready=False)
            call.models.append(model)
            return kpb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request, context: grpc.ServicerContext) -> kpb.ServerMetadataResponse:
        with self.recommender.call_scope("ServerMetadata", "", context):
            return kpb.ServerMetadataResponse(name="recserve", version=__version__)

    def ModelMetadata(
        self, request: kpb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> kpb.ModelMetadataResponse:
        with self.recommender.call_scope("ModelMetadata", "", context) as call:
            model = self.repository.get(request.name, _version(request.version))
            call.models.append(model)
            tensor = kpb.ModelMetadataResponse.TensorMetadata
            return kpb.ModelMetadataResponse(
                name=model.name,
                versions=[str(v) for v in self.repository.versions(model.name)],
                platform=f"recserve_{model.pipeline.artifact.family}",
                inputs=[tensor(name=n, datatype=t, shape=s) for n, (t, s) in INPUTS.items()],
                outputs=[tensor(name=n, datatype=t, shape=s) for n, (t, s) in OUTPUTS.items()],
            )

    def ModelInfer(
        self, request: kpb.ModelInferRequest, context: grpc.ServicerContext
    ) -> kpb.ModelInferResponse:
        with self.recommender.call_scope("ModelInfer", request.id, context) as call:
            arrays = _input_arrays(request)
            version = _version(request.model_version)
            with self.repository.acquire(request.model_name, version) as model:
                call.models.append(model)
                user_id = int(arrays["user_id"][0])
                k = int(arrays["k"][0]) if "k" in arrays else 0
                if not -(2**31) <= k < 2**31:
                    raise InvalidRequest(f"k must be between 0 and the server's --max-k; got {k}")
                if "candidate_item_ids" in arrays:
                    ranking = model.runner.rank(
                        user_id,
                        arrays["candidate_item_ids"].tolist(),
                        k=k,
                        request_context=call.request,
                    )
                else:
                    ranking = model.runner.recommend(
                        user_id,
                        k=k,
                        recent_item_ids=arrays.get("recent_item_ids", np.empty(0)).tolist(),
                        request_context=call.request,
                    )
                tensors, raw = _outputs(ranking, [o.name for o in request.outputs])
                return kpb.ModelInferResponse(
                    model_name=model.name,
                    model_version=str(model.version),
                    id=request.id,
                    outputs=tensors,
                    raw_output_contents=raw,
                )
