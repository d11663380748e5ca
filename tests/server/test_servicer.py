"""The servicer alone, without a network, through grpc_testing."""

from __future__ import annotations

import grpc
import grpc_testing
import pytest

from recserve.engine.validation import Limits
from recserve.server.repository import ModelRepository
from recserve.server.servicer import RecommenderServicer
from recserve.v1 import recserve_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"]


@pytest.fixture(scope="module")
def test_server(model_repo):
    repository = ModelRepository(model_repo, Limits())
    repository.load_all()
    return grpc_testing.server_from_dictionary(
        {SERVICE: RecommenderServicer(repository)}, grpc_testing.strict_real_time()
    )


def invoke(server, method: str, request):
    rpc = server.invoke_unary_unary(SERVICE.methods_by_name[method], (), request, None)
    return rpc.termination()


def test_recommend_converts_request_and_answer(test_server) -> None:
    response, _, code, _ = invoke(test_server, "Recommend", pb.RecommendRequest(user_id=1, k=4))
    assert code == grpc.StatusCode.OK
    assert len(response.items) == 4
    assert response.model.name == "deepfm" and response.model.version == 1


def test_model_info_lists_the_schema(test_server) -> None:
    response, _, code, _ = invoke(test_server, "GetModelInfo", pb.GetModelInfoRequest())
    assert code == grpc.StatusCode.OK
    sides = {f.name: f.side for f in response.features}
    assert sides["age"] == pb.Feature.USER and sides["genres"] == pb.Feature.ITEM
    assert next(f for f in response.features if f.name == "genres").multi_valued
