"""The servicer alone, without a network: its coroutine RPCs run on an event loop of the
test's own, its plain ones through grpc_testing."""

from __future__ import annotations

import asyncio

import grpc
import grpc_testing
import pytest

from recserve.engine.validation import Limits
from recserve.server.repository import ModelRepository
from recserve.server.servicer import RecommenderServicer
from recserve.v1 import recserve_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"]


class FakeContext:
    """What the servicer reads from and writes to a call's context."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()

    def time_remaining(self) -> float | None:
        return None

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata


@pytest.fixture(scope="module")
def servicer(model_repo) -> RecommenderServicer:
    repository = ModelRepository(model_repo, Limits())
    repository.load_all()
    return RecommenderServicer(repository)


def test_recommend_converts_request_and_answer(servicer: RecommenderServicer) -> None:
    context = FakeContext()
    request = pb.RecommendRequest(user_id=1, k=4)
    response = asyncio.run(servicer.Recommend(request, context))  # type: ignore[arg-type]
    assert len(response.items) == 4
    assert response.model.name == "deepfm" and response.model.version == 1
    assert ("recserve-model-version", "1") in context.trailing


def test_model_info_lists_the_schema(servicer: RecommenderServicer) -> None:
    server = grpc_testing.server_from_dictionary(
        {SERVICE: servicer}, grpc_testing.strict_real_time()
    )
    rpc = server.invoke_unary_unary(
        SERVICE.methods_by_name["GetModelInfo"], (), pb.GetModelInfoRequest(), None
    )
    response, _, code, _ = rpc.termination()
    assert code == grpc.StatusCode.OK
    sides = {f.name: f.side for f in response.features}
    assert sides["age"] == pb.Feature.USER and sides["genres"] == pb.Feature.ITEM
    assert next(f for f in response.features if f.name == "genres").multi_valued
